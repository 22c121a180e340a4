//! The one journaled transaction every mutating command runs in:
//! intent journaled and fsynced, action, result journaled and fsynced, and
//! only then the response. Nothing acknowledged is lost by a crash.

use serde_json::{json, Value};

use super::{Caller, State};
use crate::{
    client::protocol::Command,
    error::Result,
    journal::{Entry, Journal, Phase},
};
use tracing::warn;

use std::{cell::Cell, time::Instant};

thread_local! {
    /// The command this thread serves: when its line arrived and when the
    /// handler got the state lock (see [`serving`]).
    static SERVING: Cell<Option<(Instant, Instant)>> = const { Cell::new(None) };
}

/// Marks the start of a command's handling, under the state lock: the
/// phases reported with its result (`phases`) are measured from here.
pub(super) fn serving(received: Instant) {
    SERVING.set(Some((received, Instant::now())));
}

fn us(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// Written zeros kept ahead of the journal's last line (see
/// `Journal::reserve`): a record then costs one data-only `fdatasync`.
/// Topped up by the periodic link check when half is used (~1,000 records).
const JOURNAL_RESERVE: u64 = 1 << 20;

/// Keeps zeros ahead of the journal's tail; without them the journal still
/// works, each append then also flushing the file's new size.
pub(super) fn reserve_journal(journal: &mut Journal) {
    if let Err(e) = journal.reserve(JOURNAL_RESERVE) {
        warn!("journal: cannot write zeros ahead of the tail, appends will flush the file size too: {e}");
    }
}

/// What an action reports back to `execute`.
pub(super) struct Done {
    pub(super) result: Value,
    pub(super) to_level: Option<u32>,
    pub(super) time_to_effect_us: Option<u64>,
}

impl State {
    /// Tops up the zeros ahead of the journal's tail, off any command's path.
    pub fn journal_top_up(&mut self) {
        if let Err(e) = self.journal.top_up() {
            warn!("journal: topping up the zeros ahead of the tail: {e}");
        }
    }

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
        self.journal_confined_refusal_counted(caller, cmd.name(), &why.to_string(), target, left_out)
    }

    /// Journals (and alerts) one confined refusal whose rate limit was
    /// checked already; `left_out` refusals were not journaled before it.
    pub(super) fn journal_confined_refusal_counted(&mut self, caller: Caller, cmd: &str, why: &str, target: Option<&str>, left_out: u64) -> Result<()> {
        let mut e = Entry::new(caller.actor(), Phase::Event, "refused");
        e.params = json!({"cmd": cmd, "gid": caller.gid, "inside_target": target, "refusals_not_journaled_before": left_out});
        e.outcome = Some(format!("forbidden: {why}"));
        e.high_priority = true;
        self.journal.append(e)?;
        let alert = json!({"type": "alert", "priority": "high", "action": "refused", "target": target, "cmd": cmd, "pid": caller.pid, "message": why});
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
        let entered = Instant::now();
        if action != "stop" {
            self.check_links_for(target);
        }
        // A drill acts only on a target still as it left it.
        self.drill_guard(caller, target)?;
        let from_level = target.and_then(|t| self.registry.targets.get(t)).map(|t| t.level);
        let mut intent = Entry::new(caller.actor(), Phase::Intent, action);
        intent.target = target.map(str::to_owned);
        intent.from_level = from_level;
        intent.params = params;
        let journaling = std::time::Instant::now();
        let intent = self.journal.append(intent)?;
        // What the durable intent cost, shown with the result: the disk's
        // share of the time to effect.
        let intent_durable = Instant::now();
        let journal_intent_us = us(intent_durable - journaling);
        let intent_timing = self.journal.last_timing();
        // The action's registry saves and the level history below are
        // written as one save, before the result is journaled.
        self.registry.begin_deferred();
        // A panicking action (the agent catches it and keeps serving) must
        // not leave the registry deferred for good: every later save would
        // only mark it changed.
        let mut outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(o) => o,
            Err(panic) => {
                let _ = self.registry.end_deferred();
                std::panic::resume_unwind(panic)
            }
        };
        let acted = Instant::now();
        let mut res = Entry::new(caller.actor(), Phase::Result, action);
        res.target = target.map(str::to_owned);
        res.from_level = from_level;
        res.intent_seq = Some(intent.seq);
        if let Ok(done) = &outcome {
            if let (Some(name), Some(to)) = (target, done.to_level) {
                if from_level != Some(to) {
                    if let Ok(t) = self.registry.get_mut(name) {
                        t.record_level(from_level.unwrap_or(0), to, action, caller.actor());
                        let _ = self.registry.save();
                    }
                    // The trail: the closing phase's flows, then the change.
                    self.trail_level(name, from_level.unwrap_or(0), to, action);
                }
            }
        }
        // What the action changed is durable before the result is journaled
        // and answered; a failed write fails the command (as the action's
        // own save did).
        if let Err(e) = self.registry.end_deferred() {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
        match &outcome {
            Ok(done) => {
                res.to_level = done.to_level;
                res.outcome = Some("ok".into());
                res.time_to_effect_us = done.time_to_effect_us;
                res.params = done.result.clone();
            }
            Err(e) => res.outcome = Some(format!("error: {e}")),
        }
        if let (Ok(done), Some(name)) = (&outcome, target) {
            super::metrics::observe_effect(name, done.to_level, done.time_to_effect_us);
        }
        // The response waits for this fsync: nothing acknowledged is lost.
        let result_journaling = Instant::now();
        let rec = self.journal.append(res)?;
        let result_timing = self.journal.last_timing();
        // Where the time to effect went, phase by phase (see the
        // `time_to_effect` bench series): receipt to the state lock, checks
        // before the intent, the intent's write and fdatasync, the action up
        // to its effect; then what the answer still waits for.
        let phases = SERVING.take().filter(|(received, _)| *received <= entered).map(|(received, locked)| {
            let effect = outcome.as_ref().ok().and_then(|d| d.time_to_effect_us);
            json!({
                "lock_wait_us": us(locked - received),
                "pre_intent_us": us(journaling - locked),
                "intent_write_us": intent_timing.write_us,
                "intent_sync_us": intent_timing.sync_us,
                "action_to_effect_us": effect.map(|e| e.saturating_sub(us(intent_durable - received))),
                "after_effect_us": us(result_journaling - acted),
                "result_write_us": result_timing.write_us,
                "result_sync_us": result_timing.sync_us,
            })
        });
        // Even a failed command may have changed part of the target: what
        // the drill left is what it is now.
        self.drill_mark(caller, target);
        outcome.map(|mut d| {
            if let Value::Object(m) = &mut d.result {
                m.insert("journal_seq".into(), json!(rec.seq));
                m.insert("journal_intent_us".into(), json!(journal_intent_us));
                if let Some(p) = phases {
                    m.insert("phases".into(), p);
                }
            }
            d.result
        })
    }
}
