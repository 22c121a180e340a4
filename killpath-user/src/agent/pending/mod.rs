//! Human checkpoints: actions that wait for a person. A detector, a fleet
//! tool or a tripwire proposes a level for a target ([`State::propose`]);
//! the proposal is journaled and saved to `pending.json` before it is
//! acknowledged, raised as a high-priority alert, and waits for `approve`
//! or `deny` (by an approver in the required group, if any) or for its
//! timeout, whose policy says what then happens: `hold`, `apply`, `drop`.
//! Meanwhile a lower level may already apply (a runaway target is
//! throttled while the human decides whether to isolate it).
//!
//! - `propose.rs`: checking and recording a proposal, the meanwhile level
//! - `decide.rs`: approve, deny, who may decide
//! - `timeouts.rs`: the background check (timeouts, released targets)
//! - `store.rs`: what is pending and what was decided, in `pending.json`
mod decide;
mod propose;
mod store;
mod timeouts;

use std::{str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use store::Store;
pub use timeouts::watch;

use super::State;
use crate::{
    error::{Error, Result},
    journal::{Actor, Entry, Phase},
    target::level_name,
};

/// What a caller (the socket's `propose`, a tripwire) asks a human to approve.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub target: String,
    /// The level to apply on approval (throttle..stopped).
    pub level: u32,
    /// Who asked: e.g. `{"rule": "x"}` or `{"caller": {"uid", "gid", "pid"}}`.
    pub origin: Value,
    /// What the asker saw (a rule's metric values, a detector's findings).
    pub evidence: Value,
    pub reason: Option<String>,
    /// How long to wait for a decision (not zero).
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// gid an approver must hold (primary or supplementary); else the agent's `--approver-group`.
    pub approver_group: Option<u32>,
    /// A level below `level` applied at once while the decision waits.
    pub meanwhile: Option<u32>,
}

/// What happens when nobody decides within the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Stay pending and alert again, once per timeout period.
    Hold,
    /// Apply the proposed level (the agent is the actor).
    Apply,
    /// Drop the proposal.
    Drop,
}

impl OnTimeout {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Apply => "apply",
            Self::Drop => "drop",
        }
    }
}

impl FromStr for OnTimeout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hold" => Ok(Self::Hold),
            "apply" => Ok(Self::Apply),
            "drop" => Ok(Self::Drop),
            _ => Err(Error::InvalidRequest(format!("unknown timeout policy {s:?}: expected hold, apply or drop"))),
        }
    }
}

/// Default time a proposal waits for a decision.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses a timeout: `500ms`, `30s`, `5m`, `1h`, or plain seconds. Zero is
/// refused: a proposal must give a human some time.
pub fn parse_timeout(s: &str) -> Result<Duration> {
    let t = s.trim();
    let bad = || Error::InvalidRequest(format!("bad timeout {s:?}: expected a positive duration such as 500ms, 30s, 5m or 1h"));
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    if d.is_zero() {
        return Err(Error::InvalidRequest(format!("timeout {s:?} is zero: a proposal must give an approver some time")));
    }
    Ok(d)
}

/// A `propose` request as it came off the socket, before parsing.
pub struct ProposeArgs {
    pub name: String,
    pub level: String,
    pub reason: Option<String>,
    pub timeout: Option<String>,
    pub on_timeout: Option<String>,
    pub meanwhile: Option<String>,
    pub approver_group: Option<u32>,
    pub evidence: Value,
}

impl State {
    /// The socket's `propose`: parses the request into a [`Proposal`]
    /// whose origin is the caller.
    pub(super) fn propose_cmd(&mut self, caller: super::Caller, a: ProposeArgs) -> Result<Value> {
        let p = Proposal {
            target: a.name,
            level: crate::level::parse(&a.level)?,
            origin: json!({"caller": {"uid": caller.uid, "gid": caller.gid, "pid": caller.pid}}),
            evidence: a.evidence,
            reason: a.reason,
            timeout: a.timeout.as_deref().map(parse_timeout).transpose()?.unwrap_or(DEFAULT_TIMEOUT),
            on_timeout: a.on_timeout.as_deref().map(str::parse).transpose()?.unwrap_or(OnTimeout::Hold),
            approver_group: a.approver_group,
            meanwhile: a.meanwhile.as_deref().map(crate::level::parse).transpose()?,
        };
        self.propose(caller, p)
    }

    /// The pending actions on `name`, for `status`: count and ids.
    pub(super) fn pending_summary(&self, name: &str) -> Value {
        let ids: Vec<u64> = self.pending.pending.values().filter(|p| p.target == name).map(|p| p.id).collect();
        json!({"count": ids.len(), "ids": ids})
    }

    /// `killpath pending`: every pending action with its age.
    pub(super) fn pending_list(&self) -> Value {
        let now = super::now_us();
        let list: Vec<Value> = self
            .pending
            .pending
            .values()
            .map(|p| {
                let mut v = json!(p);
                v["level"] = json!(level_name(p.level));
                v["meanwhile"] = json!(p.meanwhile.map(level_name));
                v["age_ms"] = json!(now.saturating_sub(p.created_unix_us) / 1000);
                v["deadline_unix_us"] = json!(p.deadline_us());
                v
            })
            .collect();
        json!({"pending": list})
    }

    /// Journals a high-priority event about pending action `id` and sends
    /// it as an alert to `events` subscribers and the alert hook.
    fn pending_alert(&mut self, actor: Actor, action: &str, target: &str, mut alert: Value) {
        if let Value::Object(m) = &mut alert {
            m.insert("type".into(), json!("alert"));
            m.insert("priority".into(), json!("high"));
            m.insert("action".into(), json!(action));
            m.insert("target".into(), json!(target));
            m.insert("time_unix_us".into(), json!(super::now_us()));
        }
        let mut e = Entry::new(actor, Phase::Event, action);
        e.target = Some(target.to_owned());
        e.params = alert.clone();
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            tracing::warn!("journaling a pending-action alert failed: {err}");
        }
        self.send_alert(alert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_zero_is_refused() {
        assert_eq!(parse_timeout("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_timeout("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["0", "0s", "", "5 parsecs", "-1s", "m"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_timeout("0").unwrap_err().to_string().contains("zero"));
    }

    #[test]
    fn timeout_policies_parse_with_clear_errors() {
        assert_eq!("hold".parse::<OnTimeout>().unwrap(), OnTimeout::Hold);
        assert_eq!("apply".parse::<OnTimeout>().unwrap(), OnTimeout::Apply);
        assert_eq!("drop".parse::<OnTimeout>().unwrap(), OnTimeout::Drop);
        assert!("later".parse::<OnTimeout>().unwrap_err().to_string().contains("hold, apply or drop"));
        assert_eq!(serde_json::to_value(OnTimeout::Apply).unwrap(), json!("apply"));
    }
}
