//! Tripwires: rules over per-target metrics (see
//! `killpath-common/src/tripwire.rs` for the kernel side). This module
//! holds the rule as the CLI, the socket and the config file give it, its
//! checks, and what it becomes in a kernel slot; `maps` the map handles;
//! the agent's side (arming, firings, modes) is `agent/tripwire/`.
pub mod maps;

use killpath_common::{level, tripwire as kt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A rule as given (`tripwire add`, the config file's `[[tripwires]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// A target name, or `*` for every target (also those adopted later).
    pub target: String,
    pub metric: String,
    /// Fires when the window's count goes above this (K/M/G, KB/MB/GB).
    pub above: String,
    /// ms, s or m.
    pub window: String,
    /// throttle, degrade, isolate or stop.
    pub action: String,
    #[serde(default)]
    pub critical: bool,
    /// auto, alert, confirm or audit; default by action (see [`Mode::default_for`]).
    #[serde(default)]
    pub mode: Option<String>,
    /// kernel (default where the kernel counts the metric) or agent.
    #[serde(default)]
    pub eval: Option<String>,
    /// Approval: how long to wait, and what then (hold, apply, drop).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_timeout: Option<String>,
    #[serde(default)]
    pub approver_group: Option<String>,
    /// While approval is pending, a lower level applied at once.
    #[serde(default)]
    pub meanwhile: Option<String>,
}

/// What a firing does without a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Act at once.
    Auto,
    /// Act at once and raise a high-priority alert.
    Alert,
    /// Wait for approval.
    Confirm,
    /// Never act: record the firing only.
    Audit,
}

impl Mode {
    /// The essay's defaults: throttle acts, degrade acts and alerts,
    /// isolate and stop wait for a human unless critical.
    pub fn default_for(action: u32, critical: bool) -> Self {
        match action {
            level::THROTTLE => Mode::Auto,
            level::DEGRADE => Mode::Alert,
            _ if critical => Mode::Auto,
            _ => Mode::Confirm,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Alert => "alert",
            Mode::Confirm => "confirm",
            Mode::Audit => "audit",
        }
    }
}

/// A metric name: kernel id and qualifier, or `tasks` (agent only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Kernel { id: u32, arg: u32 },
    Tasks,
}

/// Metric names `--metric` accepts.
pub const METRICS: &str =
    "syscalls, syscalls:net|exec|fork|fs-write, egress-bytes, egress-packets, connects, destinations, denials, denials:CAP, forks, execs, tasks";

pub fn parse_metric(s: &str) -> Result<Metric> {
    use kt::metric as m;
    let k = |id| Ok(Metric::Kernel { id, arg: 0 });
    match s {
        "egress-bytes" => k(m::EGRESS_BYTES),
        "egress-packets" => k(m::EGRESS_PACKETS),
        "connects" => k(m::CONNECTS),
        "destinations" => k(m::DESTINATIONS),
        "denials" => k(m::DENIALS),
        "forks" => k(m::FORKS),
        "execs" => k(m::EXECS),
        "tasks" => Ok(Metric::Tasks),
        _ if s.starts_with("denials:") => {
            let c = crate::degrade::Capability::parse(&s["denials:".len()..])?;
            Ok(Metric::Kernel { id: m::DENIALS, arg: c.index() + 1 })
        }
        "syscalls" => k(m::SYSCALLS),
        _ if s.starts_with("syscalls:") => {
            use killpath_common::throttle as c;
            let class = match &s["syscalls:".len()..] {
                "net" => c::NET,
                "exec" => c::EXEC,
                "fork" => c::FORK,
                "fs-write" => c::FS_WRITE,
                other => return Err(Error::InvalidRequest(format!("unknown syscall class {other:?} in {s:?}: expected net, exec, fork or fs-write"))),
            };
            Ok(Metric::Kernel { id: m::SYSCALLS, arg: class + 1 })
        }
        _ => Err(Error::InvalidRequest(format!("unknown metric {s:?}; known: {METRICS}"))),
    }
}

/// `1MB`, `500K`, `20`: K/M/G and KB/MB/GB are powers of 1000.
pub fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (num, mult) = [("GB", 1_000_000_000u64), ("MB", 1_000_000), ("KB", 1_000), ("G", 1_000_000_000), ("M", 1_000_000), ("K", 1_000), ("B", 1)]
        .into_iter()
        .find_map(|(suf, m)| upper.strip_suffix(suf).map(|n| (n.to_owned(), m)))
        .unwrap_or((upper.clone(), 1));
    let n: u64 =
        num.trim().parse().map_err(|_| Error::InvalidRequest(format!("bad threshold {s:?}: expected a number with an optional K/M/G or KB/MB/GB suffix")))?;
    let v = n.checked_mul(mult).ok_or_else(|| Error::InvalidRequest(format!("threshold {s:?} is too large")))?;
    if v == 0 {
        return Err(Error::InvalidRequest("threshold 0: a rule must allow something (use --above 1 or more)".into()));
    }
    Ok(v)
}

/// `1s`, `500ms`, `2m`.
pub fn parse_duration_ns(s: &str, what: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1_000_000u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000_000_000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000_000_000)
    } else {
        return Err(Error::InvalidRequest(format!("bad {what} {s:?}: expected a duration like 500ms, 1s or 2m")));
    };
    let n: u64 = num.trim().parse().map_err(|_| Error::InvalidRequest(format!("bad {what} {s:?}: expected a duration like 500ms, 1s or 2m")))?;
    if n == 0 {
        return Err(Error::InvalidRequest(format!("{what} 0: must be longer than nothing")));
    }
    n.checked_mul(mult).ok_or_else(|| Error::InvalidRequest(format!("{what} {s:?} is too long")))
}

/// What happens to a pending approval nobody answers.
pub const ON_TIMEOUT: &[&str] = &["hold", "apply", "drop"];

/// A checked rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub spec: RuleSpec,
    #[serde(skip)]
    pub metric: Option<Metric>,
    pub threshold: u64,
    pub window_ns: u64,
    /// The action's level (one of [`level`]).
    pub level: u32,
    pub mode: Mode,
    /// Evaluated in the kernel (false: by the agent from polled counters).
    pub in_kernel: bool,
    pub timeout_ns: Option<u64>,
    pub meanwhile: Option<u32>,
}

impl Rule {
    /// Checks a spec: every problem is an error naming it.
    pub fn check(spec: &RuleSpec) -> Result<Self> {
        let bad = |m: String| Error::InvalidRequest(format!("tripwire {:?}: {m}", spec.name));
        if spec.name.is_empty() || spec.name.len() > 64 || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(bad("a rule name is 1-64 characters of A-Z a-z 0-9 - _ .".into()));
        }
        if spec.target.is_empty() {
            return Err(bad("no target (a target name, or '*' for every target)".into()));
        }
        let metric = parse_metric(&spec.metric).map_err(|e| bad(e.to_string()))?;
        let threshold = parse_count(&spec.above).map_err(|e| bad(e.to_string()))?;
        let window_ns = parse_duration_ns(&spec.window, "window").map_err(|e| bad(e.to_string()))?;
        let level = crate::level::parse(&spec.action).map_err(|e| bad(e.to_string()))?;
        if level == level::NORMAL {
            return Err(bad("action normal: a tripwire raises a target (throttle, degrade, isolate or stop); restore is a human's call".into()));
        }
        if spec.critical && level == level::THROTTLE {
            return Err(bad("--critical is for degrade, isolate and stop: a throttle rule already acts at once, through the agent's pacer".into()));
        }
        let mode = match spec.mode.as_deref() {
            None => Mode::default_for(level, spec.critical),
            Some("auto") => Mode::Auto,
            Some("alert") => Mode::Alert,
            Some("confirm") => Mode::Confirm,
            Some("audit") => Mode::Audit,
            Some(m) => return Err(bad(format!("unknown mode {m:?}: expected auto, alert, confirm or audit"))),
        };
        if level >= level::ISOLATE && matches!(mode, Mode::Auto | Mode::Alert) && !spec.critical {
            return Err(bad(format!("{} acts without a human only with --critical; use --mode confirm (the default) or mark it critical", spec.action)));
        }
        if spec.critical && mode == Mode::Confirm {
            return Err(bad("--critical acts at once: it cannot also wait for approval (--mode confirm)".into()));
        }
        let in_kernel = match (spec.eval.as_deref(), metric) {
            (None | Some("kernel"), Metric::Kernel { .. }) => true,
            (Some("kernel"), Metric::Tasks) => return Err(bad("metric tasks is not counted in the kernel: use --eval agent (the default for it)".into())),
            (None | Some("agent"), _) => false,
            (Some(e), _) => return Err(bad(format!("unknown --eval {e:?}: expected kernel or agent"))),
        };
        let timeout_ns = spec.timeout.as_deref().map(|t| parse_duration_ns(t, "timeout")).transpose().map_err(|e| bad(e.to_string()))?;
        if let Some(o) = &spec.on_timeout {
            if !ON_TIMEOUT.contains(&o.as_str()) {
                return Err(bad(format!("unknown --on-timeout {o:?}: expected hold, apply or drop")));
            }
        }
        approver_gid(spec)?;
        let meanwhile = spec.meanwhile.as_deref().map(crate::level::parse).transpose().map_err(|e| bad(e.to_string()))?;
        if let Some(m) = meanwhile {
            if m == level::NORMAL || m >= level {
                return Err(bad(format!("--meanwhile {}: must be a level below the action ({})", crate::target::level_name(m), spec.action)));
            }
        }
        Ok(Self { spec: spec.clone(), metric: Some(metric), threshold, window_ns, level, mode, in_kernel, timeout_ns, meanwhile })
    }

    /// The approver group a proposal from this rule requires, as a gid.
    pub fn approver_gid(&self) -> Result<Option<u32>> {
        approver_gid(&self.spec)
    }

    /// The metric, re-parsed after loading from disk.
    pub fn metric(&self) -> Metric {
        self.metric.or_else(|| parse_metric(&self.spec.metric).ok()).unwrap_or(Metric::Tasks)
    }

    /// Whether the kernel raises the level itself on the crossing event.
    pub fn raises_in_kernel(&self) -> bool {
        self.in_kernel && self.spec.critical && self.mode != Mode::Audit && self.level >= level::DEGRADE
    }

    /// Where the rule is evaluated and who acts, for `tripwire list`.
    pub fn evaluated(&self) -> &'static str {
        match (self.in_kernel, self.metric()) {
            (_, Metric::Tasks) => "agent: metric not counted in the kernel (polled every 10 ms)",
            (false, _) => "agent: --eval agent (kernel counters polled every 10 ms)",
            (true, _) if self.mode == Mode::Audit => "in kernel (audit: recorded only)",
            (true, _) if self.raises_in_kernel() => "in kernel (raises the level on the crossing event)",
            (true, _) if self.level == level::THROTTLE => "in kernel, applied by the agent: needs the pacer",
            (true, _) if self.mode == Mode::Confirm => "in kernel, applied by the agent: needs approval",
            (true, _) => "in kernel, applied by the agent",
        }
    }

    /// Whether it applies to target `name`.
    pub fn applies_to(&self, name: &str) -> bool {
        self.spec.target == "*" || self.spec.target == name
    }

    /// The kernel slot's content. `target_id` 0: every target.
    pub fn kernel(&self, target_id: u64, revoke: u32, generation: u32) -> kt::Rule {
        let (metric, arg) = match self.metric() {
            Metric::Kernel { id, arg } => (id, arg),
            Metric::Tasks => (0, 0),
        };
        let mut flags = kt::flag::ACTIVE;
        if !self.in_kernel {
            flags |= kt::flag::COUNT_ONLY;
        }
        let raise = self.raises_in_kernel();
        if raise {
            flags |= kt::flag::RAISE;
        }
        kt::Rule {
            target: target_id,
            threshold: self.threshold,
            window_ns: self.window_ns,
            metric,
            arg,
            level: if raise { self.level } else { 0 },
            revoke: if raise && self.level == level::DEGRADE { revoke } else { 0 },
            flags,
            generation,
        }
    }
}

/// `--approver-group`: a gid, or a group name resolved on this host.
fn approver_gid(spec: &RuleSpec) -> Result<Option<u32>> {
    let Some(g) = spec.approver_group.as_deref() else { return Ok(None) };
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(Some(gid));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        _ => Err(Error::InvalidRequest(format!("tripwire {}: unknown --approver-group {g:?}: not a gid nor a group on this host", spec.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metric: &str, above: &str, window: &str, action: &str, critical: bool) -> RuleSpec {
        RuleSpec {
            name: "r".into(),
            target: "t".into(),
            metric: metric.into(),
            above: above.into(),
            window: window.into(),
            action: action.into(),
            critical,
            mode: None,
            eval: None,
            timeout: None,
            on_timeout: None,
            approver_group: None,
            meanwhile: None,
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse_count("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_count("20").unwrap(), 20);
        assert_eq!(parse_count("3k").unwrap(), 3_000);
        assert!(parse_count("0").unwrap_err().to_string().contains("threshold 0"));
        assert_eq!(parse_duration_ns("1s", "window").unwrap(), 1_000_000_000);
        assert_eq!(parse_duration_ns("250ms", "window").unwrap(), 250_000_000);
        assert!(parse_duration_ns("0s", "window").unwrap_err().to_string().contains("window 0"));
        let r = Rule::check(&spec("egress-bytes", "1MB", "1s", "isolate", true)).unwrap();
        assert!(r.raises_in_kernel());
        assert_eq!(r.mode, Mode::Auto);
        let r = Rule::check(&spec("connects", "20", "1s", "throttle", false)).unwrap();
        assert_eq!(r.mode, Mode::Auto);
        assert!(!r.raises_in_kernel());
        assert_eq!(Rule::check(&spec("connects", "20", "1s", "isolate", false)).unwrap().mode, Mode::Confirm);
        assert_eq!(Rule::check(&spec("connects", "20", "1s", "degrade", false)).unwrap().mode, Mode::Alert);
        assert!(Rule::check(&spec("teleports", "20", "1s", "isolate", false)).unwrap_err().to_string().contains("unknown metric"));
        assert!(Rule::check(&spec("connects", "20", "1s", "normal", false)).unwrap_err().to_string().contains("action normal"));
        assert!(Rule::check(&spec("connects", "20", "1s", "throttle", true)).is_err());
        assert!(!Rule::check(&spec("tasks", "20", "1s", "throttle", false)).unwrap().in_kernel);
        let d = Rule::check(&spec("denials:net.connect", "5", "1s", "isolate", true)).unwrap();
        assert!(matches!(d.metric(), Metric::Kernel { id: kt::metric::DENIALS, arg } if arg > 0));
    }
}
