//! A firing that needs a human becomes a pending action
//! (`agent/pending`): listed by `killpath pending`, applied by `approve`,
//! dropped by `deny`, or handled by the rule's timeout policy; a lower
//! level the rule allows (`--meanwhile`) applies at once.
use std::time::Duration;

use serde_json::{json, Value};

use super::Firing;
use crate::{
    agent::{
        pending::{OnTimeout, Proposal},
        Caller,
    },
    error::Result,
    tripwire::Rule,
};

/// How long a rule's proposal waits when the rule names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl super::super::State {
    pub(in crate::agent) fn request_approval(&mut self, rule: &Rule, firing: &Firing) -> Result<Value> {
        let evidence = json!({"metric": firing.metric, "value": firing.value, "previous_window": firing.previous_window,
                              "threshold": firing.threshold, "window": firing.window, "crossing_ktime_ns": firing.crossing_ktime_ns});
        let proposal = Proposal {
            target: firing.target.clone(),
            level: rule.level,
            origin: json!({"rule": rule.spec.name}),
            evidence,
            reason: Some(format!("tripwire {}: {} {} above {} in {}", rule.spec.name, firing.metric, firing.value, firing.threshold, firing.window)),
            timeout: rule.timeout_ns.map_or(DEFAULT_TIMEOUT, Duration::from_nanos),
            on_timeout: rule.spec.on_timeout.as_deref().map(str::parse).transpose()?.unwrap_or(OnTimeout::Hold),
            approver_group: rule.approver_gid()?,
            meanwhile: rule.meanwhile,
        };
        self.propose(Caller::agent("agent-tripwire"), proposal)
    }
}
