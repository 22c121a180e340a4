//! The background check of pending actions, every 250 ms: a target
//! released (or re-created under the same name) drops its actions, a
//! target already at the proposed level (stopped or isolated by other
//! means) makes them moot, and a timeout follows its policy: `hold`
//! alerts again once per timeout period, `apply` applies the level with
//! the agent as actor, `drop` drops it. Deadlines are wall-clock times
//! saved with each action, so a restarted agent keeps them.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde_json::json;

use super::{store::Pending, OnTimeout};
use crate::{
    agent::{now_us, transaction::Done, Caller, State},
    journal::Actor,
    target::level_name,
};

/// How often pending actions are checked.
const TICK: Duration = Duration::from_millis(250);

/// Checks pending actions every [`TICK`] until the agent exits.
pub async fn watch(state: Arc<Mutex<State>>) {
    {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(pending = s.pending.pending.len(), next_id = s.pending.next_id, "pending actions loaded");
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = state.clone();
        // Journaling fsyncs: off the async threads.
        let _ = tokio::task::spawn_blocking(move || crate::agent::stop_first::background(&state).pending_tick()).await;
    }
}

impl State {
    fn pending_tick(&mut self) {
        if self.pending.pending.is_empty() {
            return;
        }
        let due: Vec<Pending> = self.pending.pending.values().cloned().collect();
        let now = now_us();
        for p in due {
            match self.registry.targets.get(&p.target) {
                Some(t) if t.cgroup_id != p.cgroup_id => {
                    self.drop_pending(&p, "dropped: target released (its name now names another cgroup)");
                    continue;
                }
                None => {
                    self.drop_pending(&p, "dropped: target released");
                    continue;
                }
                Some(t) if t.level >= p.level => {
                    let why = format!("dropped: target already at {} by other means", level_name(t.level));
                    self.drop_pending(&p, &why);
                    continue;
                }
                Some(_) => {}
            }
            if now < p.deadline_us() {
                continue;
            }
            match p.on_timeout {
                OnTimeout::Hold => self.hold_alert(&p, now),
                OnTimeout::Apply => self.apply_on_timeout(&p),
                OnTimeout::Drop => self.drop_pending(&p, "dropped on timeout"),
            }
        }
    }

    /// `hold`: one high-priority alert per elapsed timeout period.
    fn hold_alert(&mut self, p: &Pending, now: u64) {
        let periods = (now - p.created_unix_us) / p.timeout_ms.saturating_mul(1000).max(1);
        if u64::from(p.timeout_alerts) >= periods {
            return;
        }
        // One alert for however many periods passed (an agent down for an
        // hour sends one catch-up alert, not one per missed period).
        let n = u32::try_from(periods).unwrap_or(u32::MAX);
        if let Some(q) = self.pending.pending.get_mut(&p.id) {
            q.timeout_alerts = n;
        }
        if let Err(e) = self.pending.save(&self.config.state_dir.clone()) {
            tracing::warn!("saving pending action {}: {e}", p.id);
        }
        let message = format!(
            "pending action {} still waits: {} {} not decided after {} ms (timeout {n}, policy hold); `killpath approve {}` or `killpath deny {} --reason TEXT`",
            p.id,
            level_name(p.level),
            p.target,
            (now - p.created_unix_us) / 1000,
            p.id,
            p.id
        );
        self.pending_alert(
            Actor::Source { source: "agent".into() },
            "pending-timeout",
            &p.target,
            json!({"id": p.id, "level": level_name(p.level), "on_timeout": "hold", "timeouts": n, "message": message}),
        );
    }

    /// `apply`: the proposed level, journaled with the agent as actor.
    /// If it fails the action holds (and alerts) instead of retrying.
    fn apply_on_timeout(&mut self, p: &Pending) {
        let id = p.id;
        let params = json!({"id": id, "level": level_name(p.level), "on_timeout": "apply", "why": "applied on timeout", "origin": p.origin});
        let skip = format!("applied on timeout: pending action {id} (policy apply)");
        let who = json!({"source": "agent"});
        let r = self.execute(Caller::AGENT, "pending-apply", Some(&p.target), params, |s| {
            let applied = s.apply_pending(Caller::AGENT, p, &skip, Some("applied on timeout"), Instant::now())?;
            s.pending.resolve(id, "applied on timeout", who.clone());
            s.pending.save(&s.config.state_dir.clone())?;
            let tte = applied["time_to_effect_us"].as_u64();
            Ok(Done { result: json!({"id": id, "target": p.target, "level": level_name(p.level), "applied": applied}), to_level: None, time_to_effect_us: tte })
        });
        let (action, message) = match r {
            Ok(_) => ("applied-on-timeout", format!("pending action {id}: {} {} applied on timeout (policy apply)", level_name(p.level), p.target)),
            Err(e) => {
                if let Some(q) = self.pending.pending.get_mut(&id) {
                    q.on_timeout = OnTimeout::Hold;
                    q.last_error = Some(e.to_string());
                    // Hold from now on: the next alert after the next period.
                    q.timeout_alerts = u32::try_from((now_us() - q.created_unix_us) / q.timeout_ms.saturating_mul(1000).max(1)).unwrap_or(u32::MAX);
                }
                let _ = self.pending.save(&self.config.state_dir.clone());
                ("pending-timeout", format!("pending action {id}: applying {} to {} on timeout failed: {e}; it stays pending", level_name(p.level), p.target))
            }
        };
        self.pending_alert(
            Actor::Source { source: "agent".into() },
            action,
            &p.target,
            json!({"id": id, "level": level_name(p.level), "on_timeout": "apply", "message": message}),
        );
    }

    /// Drops `p` (journaled, alerted) with `outcome` as the reason.
    pub(super) fn drop_pending(&mut self, p: &Pending, outcome: &str) {
        let id = p.id;
        let params = json!({"id": id, "level": level_name(p.level), "why": outcome});
        let r = self.execute(Caller::AGENT, "pending-drop", Some(&p.target), params, |s| {
            s.pending.resolve(id, outcome, json!({"source": "agent"}));
            s.pending.save(&s.config.state_dir.clone())?;
            Ok(Done { result: json!({"id": id, "target": p.target, "outcome": outcome}), to_level: None, time_to_effect_us: None })
        });
        if let Err(e) = r {
            tracing::warn!("dropping pending action {id}: {e}");
            return;
        }
        let message = format!("pending action {id} ({} {}) {outcome}", level_name(p.level), p.target);
        self.pending_alert(
            Actor::Source { source: "agent".into() },
            "pending-dropped",
            &p.target,
            json!({"id": id, "level": level_name(p.level), "outcome": outcome, "message": message}),
        );
    }
}
