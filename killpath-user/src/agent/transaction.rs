//! The one journaled transaction every mutating command runs in:
//! intent journaled and fsynced, action, result journaled and fsynced, and
//! only then the response. Nothing acknowledged is lost by a crash.

use serde_json::{json, Value};

use super::{Caller, State};
use crate::{
    client::protocol::Command,
    error::Result,
    journal::{Entry, Phase},
};

/// What an action reports back to `execute`.
pub(super) struct Done {
    pub(super) result: Value,
    pub(super) to_level: Option<u32>,
    pub(super) time_to_effect_us: Option<u64>,
}

impl State {
    /// Journals a refused request (unauthorized caller).
    pub fn journal_refusal(&mut self, caller: Caller, cmd: &Command) -> Result<()> {
        let mut e = Entry::new(caller.actor(), Phase::Event, "refused");
        e.params = json!({"cmd": cmd.name(), "gid": caller.gid});
        e.outcome = Some("forbidden: caller is not root or in the agent's group".into());
        e.high_priority = true;
        self.journal.append(e)?;
        Ok(())
    }

    /// Journals a request refused because its caller is inside a target
    /// (or could not be resolved): high priority, a target trying to lift
    /// its own level is an alert.
    /// Rate-limited per target (see `confinement::journal_refusal_now`).
    pub fn journal_confined_refusal(&mut self, caller: Caller, cmd: &Command, why: &crate::error::Error, target: Option<&str>) -> Result<()> {
        let Some(left_out) = super::confinement::journal_refusal_now(target) else { return Ok(()) };
        let mut e = Entry::new(caller.actor(), Phase::Event, "refused");
        e.params = json!({"cmd": cmd.name(), "gid": caller.gid, "inside_target": target, "refusals_not_journaled_before": left_out});
        e.outcome = Some(format!("forbidden: {why}"));
        e.high_priority = true;
        self.journal.append(e)?;
        let alert = json!({"type": "alert", "priority": "high", "action": "refused", "target": target, "cmd": cmd.name(), "pid": caller.pid, "message": why.to_string()});
        let _ = self.events.send(alert);
        Ok(())
    }

    pub(super) fn execute(
        &mut self,
        caller: Caller,
        action: &str,
        target: Option<&str>,
        params: Value,
        f: impl FnOnce(&mut Self) -> Result<Done>,
    ) -> Result<Value> {
        // Re-pin (and alert) any link pin removed since the last periodic
        // check before the action looks at pins: a level module that saw a
        // pin missing would otherwise attach the program a second time.
        // Not before a stop: nothing may delay it (the periodic check
        // follows within 0.5 s), and it attaches nothing.
        if action != "stop" {
            self.check_links();
        }
        // A drill acts only on a target still as it left it.
        self.drill_guard(caller, target)?;
        let from_level = target.and_then(|t| self.registry.targets.get(t)).map(|t| t.level);
        let mut intent = Entry::new(caller.actor(), Phase::Intent, action);
        intent.target = target.map(str::to_owned);
        intent.from_level = from_level;
        intent.params = params;
        let intent = self.journal.append(intent)?;
        let outcome = f(self);
        let mut res = Entry::new(caller.actor(), Phase::Result, action);
        res.target = target.map(str::to_owned);
        res.from_level = from_level;
        res.intent_seq = Some(intent.seq);
        match &outcome {
            Ok(done) => {
                if let (Some(name), Some(to)) = (target, done.to_level) {
                    if from_level != Some(to) {
                        if let Some(t) = self.registry.targets.get_mut(name) {
                            t.record_level(from_level.unwrap_or(0), to, action, caller.actor());
                            // The level change is already saved by the
                            // action; a failed save here only loses history.
                            let _ = self.registry.save();
                        }
                    }
                }
                res.to_level = done.to_level;
                res.outcome = Some("ok".into());
                res.time_to_effect_us = done.time_to_effect_us;
                res.params = done.result.clone();
            }
            Err(e) => res.outcome = Some(format!("error: {e}")),
        }
        // The response waits for this fsync: nothing acknowledged is lost.
        let rec = self.journal.append(res)?;
        // Even a failed command may have changed part of the target: what
        // the drill left is what it is now.
        self.drill_mark(caller, target);
        outcome.map(|mut d| {
            if let Value::Object(m) = &mut d.result {
                m.insert("journal_seq".into(), json!(rec.seq));
            }
            d.result
        })
    }
}
