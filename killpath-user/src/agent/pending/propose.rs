//! `propose`: a level that waits for a human. Checked fully first, then
//! journaled and saved (durable before the answer), alerted, and the
//! meanwhile level (if any) applied through `escalate`, with the
//! configured defaults.
use std::time::Instant;

use killpath_common::level;
use serde_json::{json, Value};

use super::{store::Pending, Proposal};
use crate::{
    agent::{transaction::Done, Caller, State},
    error::{Error, Result},
    target::level_name,
};

impl State {
    /// Records `p` as a pending action and returns `{"id": N, ...}`.
    pub fn propose(&mut self, caller: Caller, p: Proposal) -> Result<Value> {
        let received = Instant::now();
        let t = self.registry.get(&p.target)?.clone();
        if !(level::THROTTLE..=level::STOPPED).contains(&p.level) {
            return Err(Error::InvalidRequest(format!("a proposal needs a level from throttle to stop, not {}", level_name(p.level))));
        }
        if t.level >= p.level {
            return Err(Error::InvalidRequest(format!("{} is already at {}: nothing to propose at {}", t.name, level_name(t.level), level_name(p.level))));
        }
        if p.timeout.is_zero() {
            return Err(Error::InvalidRequest("timeout is zero: a proposal must give an approver some time".into()));
        }
        if let Some(m) = p.meanwhile {
            if !(level::THROTTLE..=level::DEGRADE).contains(&m) {
                return Err(Error::InvalidRequest(format!("meanwhile must be throttle or degrade, not {}", level_name(m))));
            }
            if m >= p.level {
                return Err(Error::InvalidRequest(format!(
                    "meanwhile {} is not below the proposed level {}: it must be a lower level that applies while the decision waits",
                    level_name(m),
                    level_name(p.level)
                )));
            }
        }
        // The same asker proposing the same level again (a rule that keeps
        // firing) gets the action already pending, not a second one.
        if let Some(q) = self.pending.pending.values().find(|q| q.target == t.name && q.cgroup_id == t.cgroup_id && q.level == p.level && q.origin == p.origin)
        {
            return Ok(json!({"id": q.id, "target": q.target, "level": level_name(q.level), "already_pending": true,
                "on_timeout": q.on_timeout, "timeout_ms": q.timeout_ms, "approver_group": q.approver_group}));
        }
        let reason = p.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned);
        let id = self.pending.next_id.max(1);
        let pending = Pending {
            id,
            target: t.name.clone(),
            cgroup_id: t.cgroup_id,
            level: p.level,
            origin: p.origin,
            evidence: p.evidence,
            reason,
            timeout_ms: u64::try_from(p.timeout.as_millis()).unwrap_or(u64::MAX).max(1),
            on_timeout: p.on_timeout,
            approver_group: p.approver_group.or(self.config.approver_group),
            meanwhile: p.meanwhile,
            meanwhile_outcome: None,
            created_unix_us: crate::agent::now_us(),
            timeout_alerts: 0,
            last_error: None,
        };
        let mut params = json!(pending);
        params["level"] = json!(level_name(p.level));
        params["meanwhile"] = json!(p.meanwhile.map(level_name));
        let state_dir = self.config.state_dir.clone();
        let rec = pending.clone();
        let level = p.level;
        let mut result = self.execute(caller, "propose", Some(&t.name), params, |s| {
            s.pending.take_id();
            s.pending.pending.insert(id, rec.clone());
            if let Err(e) = s.pending.save(&state_dir) {
                s.pending.pending.remove(&id);
                return Err(e);
            }
            Ok(Done { result: json!({"id": id, "target": rec.target, "level": level_name(level)}), to_level: None, time_to_effect_us: None })
        })?;
        // Durable from here on; now the meanwhile level, through escalate.
        let meanwhile = match p.meanwhile {
            None => None,
            Some(m) => Some(self.apply_meanwhile(caller, id, &t.name, m, received)),
        };
        let how = format!("approve: `killpath approve {id}`; deny: `killpath deny {id} --reason TEXT`");
        let message = format!(
            "pending action {id}: {} {} awaits approval{}; on timeout ({} ms): {}; {how}",
            level_name(p.level),
            t.name,
            meanwhile
                .as_ref()
                .map(|m| format!(" (meanwhile {}: {})", level_name(p.meanwhile.unwrap_or(0)), m["outcome"].as_str().unwrap_or_default()))
                .unwrap_or_default(),
            pending.timeout_ms,
            pending.on_timeout.name(),
        );
        let alert = json!({"id": id, "level": level_name(p.level), "origin": pending.origin, "evidence": pending.evidence,
            "reason": pending.reason, "on_timeout": pending.on_timeout, "timeout_ms": pending.timeout_ms, "meanwhile": meanwhile,
            "approver_group": pending.approver_group, "how": how, "message": message});
        self.pending_alert(caller.actor(), "pending", &t.name, alert);
        result["meanwhile"] = json!(meanwhile);
        result["on_timeout"] = json!(pending.on_timeout);
        result["timeout_ms"] = json!(pending.timeout_ms);
        result["approver_group"] = json!(pending.approver_group);
        result["how"] = json!(how);
        Ok(result)
    }

    /// Applies `m` with the escalation defaults unless the target is
    /// already there; the outcome is saved with the pending action.
    fn apply_meanwhile(&mut self, caller: Caller, id: u64, name: &str, m: u32, received: Instant) -> Value {
        let cur = self.registry.get(name).map(|t| t.level).unwrap_or(level::NORMAL);
        let (outcome, applied) = if cur >= m {
            (format!("already at {}", level_name(cur)), Value::Null)
        } else {
            let skip = format!("meanwhile level of pending action {id}");
            match self.escalate(caller, name, Some(level_name(m)), Some(&skip), Some(&skip), received) {
                Ok(r) => ("ok".to_owned(), r),
                Err(e) => (format!("error: {e}"), Value::Null),
            }
        };
        if let Some(p) = self.pending.pending.get_mut(&id) {
            p.meanwhile_outcome = Some(outcome.clone());
        }
        if let Err(e) = self.pending.save(&self.config.state_dir.clone()) {
            tracing::warn!("saving the meanwhile outcome of pending action {id}: {e}");
        }
        json!({"level": level_name(m), "outcome": outcome, "result": applied})
    }
}
