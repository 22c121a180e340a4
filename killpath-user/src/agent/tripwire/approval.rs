//! A firing that needs a human. For now: journaled as `tripwire-pending`
//! (high priority) and alerted. At merge this body becomes the approvals'
//! `State::propose(caller, Proposal { target, level, origin: {"rule": name},
//! evidence, reason, timeout, on_timeout, approver_group, meanwhile })`;
//! the rule carries every field a proposal needs.
use serde_json::{json, Value};

use super::{super::now_us, Firing};
use crate::{
    error::Result,
    journal::{Actor, Entry, Phase},
    tripwire::Rule,
};

impl super::super::State {
    pub(super) fn request_approval(&mut self, rule: &Rule, firing: &Firing) -> Result<Value> {
        let proposal = json!({
            "target": firing.target,
            "level": rule.spec.action,
            "origin": {"rule": rule.spec.name},
            "evidence": {"metric": firing.metric, "value": firing.value, "previous_window": firing.previous_window,
                         "threshold": firing.threshold, "window": firing.window, "crossing_ktime_ns": firing.crossing_ktime_ns},
            "reason": format!("tripwire {}: {} {} above {} in {}", rule.spec.name, firing.metric, firing.value, firing.threshold, firing.window),
            "timeout": rule.spec.timeout,
            "on_timeout": rule.spec.on_timeout.clone().unwrap_or_else(|| "hold".into()),
            "approver_group": rule.spec.approver_group,
            "meanwhile": rule.spec.meanwhile,
        });
        let mut e = Entry::new(Actor::Source { source: "agent-tripwire".into() }, Phase::Event, "tripwire-pending");
        e.target = Some(firing.target.clone());
        e.params = proposal.clone();
        e.high_priority = true;
        self.journal.append(e)?;
        let message = format!("tripwire {} asks to {} {}: approval needed", rule.spec.name, rule.spec.action, firing.target);
        self.send_alert(json!({"type": "alert", "priority": "high", "action": "tripwire-pending", "target": firing.target, "time_unix_us": now_us(), "message": message, "proposal": proposal}));
        Ok(proposal)
    }
}
