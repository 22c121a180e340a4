//! Firings: crossings the kernel reports on `KP_TRIPWIRE_EVENTS`, and
//! those the agent finds itself for `--eval agent` rules (polled every
//! [`EVAL_TICK`]). Each rule fires once per target per arming; each firing
//! acts by the rule's mode and is journaled (`tripwire-fired`), alerted,
//! and kept for `status` and `tripwire list`.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use killpath_common::{level, tripwire::Crossing};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use super::super::{now_us, raise::now_ktime_ns, Caller, State};
use crate::{
    error::Result,
    journal::{Entry, Phase},
    target::level_name,
    tripwire::{Metric, Mode},
};

/// How often agent-evaluated rules are checked.
pub const EVAL_TICK: Duration = Duration::from_millis(10);

/// One firing, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Firing {
    pub rule: String,
    pub target: String,
    pub metric: String,
    pub value: u64,
    pub previous_window: u64,
    pub threshold: u64,
    pub window: String,
    /// CLOCK_MONOTONIC ns of the crossing (the kernel's event, or the poll that saw it).
    pub crossing_ktime_ns: u64,
    pub action: String,
    pub mode: String,
    /// raised in kernel / applied by agent / pending / audit only / already at level / failed: ...
    pub outcome: String,
    /// Crossing to effect in force, µs (None: nothing was put in force).
    pub exposure_window_us: Option<f64>,
    pub evaluated: String,
    pub time_unix_us: u64,
}

/// What a crossing says, however it was found.
pub(super) struct Seen {
    pub slot: u32,
    pub target_id: u64,
    pub value: u64,
    pub prev: u64,
    pub time_ns: u64,
    /// The kernel raised the level: when it was in force.
    pub raised_ns: Option<u64>,
}

/// Reads the kernel's crossings.
pub async fn crossing_reader(rb: aya::maps::RingBuf<aya::maps::MapData>, state: Arc<Mutex<State>>) {
    super::super::ring::read_batches::<Crossing, _, _>(rb, "tripwire", |events| {
        let state = state.clone();
        async move {
            // Journaling fsyncs: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = crate::agent::stop_first::background(&state);
                for c in events {
                    let gen_ok = s.tripwires.rules.values().any(|r| r.slot == c.slot && r.generation == c.generation);
                    if !gen_ok {
                        continue;
                    }
                    let seen = Seen {
                        slot: c.slot,
                        target_id: c.target,
                        value: c.value,
                        prev: c.prev,
                        time_ns: c.time_ns,
                        raised_ns: (c.raised != 0).then_some(c.effect_ns),
                    };
                    if let Err(e) = s.on_crossing(&seen) {
                        warn!(slot = c.slot, "tripwire firing failed: {e}");
                    }
                }
            })
            .await;
        }
    })
    .await;
}

/// Evaluates `--eval agent` rules (and `tasks`) every [`EVAL_TICK`], and
/// keeps the arming in step with targets adopted since (`*` rules).
pub async fn eval_watch(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(EVAL_TICK);
    loop {
        tick.tick().await;
        let due = {
            let mut s = crate::agent::stop_first::background(&state);
            if let Err(e) = s.sync_tripwire_arming() {
                warn!("tripwire arming: {e}");
            }
            s.agent_crossings()
        };
        if due.is_empty() {
            continue;
        }
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = crate::agent::stop_first::background(&state);
            for seen in due {
                if let Err(e) = s.on_crossing(&seen) {
                    warn!(slot = seen.slot, "tripwire firing failed: {e}");
                }
            }
        })
        .await;
    }
}

impl State {
    /// The agent-evaluated rules' crossings now (rules not yet fired).
    fn agent_crossings(&mut self) -> Vec<Seen> {
        let now = Instant::now();
        let kt = now_ktime_ns();
        let mut out = Vec::new();
        let rules: Vec<(u32, crate::tripwire::Rule, Vec<String>)> =
            self.tripwires.rules.values().filter(|s| !s.rule.in_kernel).map(|s| (s.slot, s.rule.clone(), s.fired.keys().cloned().collect())).collect();
        for (slot, rule, fired) in rules {
            let targets: Vec<crate::target::Target> =
                self.registry.targets.values().filter(|t| rule.applies_to(&t.name) && !fired.contains(&t.name)).cloned().collect();
            for t in targets {
                let value = match rule.metric() {
                    Metric::Tasks => self.tasks_of(&t) as u64,
                    Metric::Kernel { .. } => {
                        let total = self.enforcer.tripwire.window(t.cgroup_id, slot).map_or(0, |w| w.total);
                        let h = self.tripwires.history.entry((slot, t.cgroup_id)).or_default();
                        h.push_back((now, total));
                        let window = Duration::from_nanos(rule.window_ns);
                        while h.len() > 1 && h.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= window) {
                            h.pop_front();
                        }
                        let oldest = h.front().map_or(total, |(_, v)| *v);
                        total.saturating_sub(oldest)
                    }
                };
                if value > rule.threshold {
                    out.push(Seen { slot, target_id: t.cgroup_id, value, prev: 0, time_ns: kt, raised_ns: None });
                }
            }
        }
        out
    }

    /// Agent-evaluated: the value over the last window, for `tripwire list`.
    pub(super) fn agent_window_value(&self, slot: u32, id: u64, _window_ns: u64) -> u64 {
        let Some(h) = self.tripwires.history.get(&(slot, id)) else { return 0 };
        match (h.front(), h.back()) {
            (Some((_, a)), Some((_, b))) => b.saturating_sub(*a),
            _ => 0,
        }
    }

    /// One crossing: acts by the rule's mode, records the firing.
    pub(super) fn on_crossing(&mut self, seen: &Seen) -> Result<()> {
        let Some(stored) = self.tripwires.rules.values().find(|s| s.slot == seen.slot).cloned() else { return Ok(()) };
        let Some(t) = self.registry.targets.values().find(|t| t.cgroup_id == seen.target_id).cloned() else { return Ok(()) };
        if stored.fired.contains_key(&t.name) {
            return Ok(());
        }
        let rule = &stored.rule;
        let name = rule.spec.name.clone();
        let caller = Caller::agent(if rule.in_kernel { "kernel-tripwire" } else { "agent-tripwire" });
        let reason = format!("tripwire {name}: {} {} above {} in {}", rule.spec.metric, seen.value, rule.threshold, rule.spec.window);
        let mut firing = Firing {
            rule: name.clone(),
            target: t.name.clone(),
            metric: rule.spec.metric.clone(),
            value: seen.value,
            previous_window: seen.prev,
            threshold: rule.threshold,
            window: rule.spec.window.clone(),
            crossing_ktime_ns: seen.time_ns,
            action: rule.spec.action.clone(),
            mode: rule.mode.name().into(),
            outcome: String::new(),
            exposure_window_us: None,
            evaluated: rule.evaluated().into(),
            time_unix_us: now_us(),
        };
        // Once per target per arming: recorded before acting, so a failed
        // action is not retried by the next crossing.
        if let Some(s) = self.tripwires.rules.get_mut(&name) {
            s.fired.insert(t.name.clone(), firing.clone());
        }
        let mut approval = Value::Null;
        let apply = |s: &mut State, to: u32| -> String {
            let cur = s.registry.get(&t.name).map_or(0, |x| x.level);
            if cur >= to {
                return format!("already at {}", level_name(cur));
            }
            match s.escalate(caller, &t.name, Some(level_name(to)), Some(&reason), Some(&reason), Instant::now()) {
                Ok(_) => "applied by agent".into(),
                Err(e) => format!("failed: {e}"),
            }
        };
        if let Some(raised) = seen.raised_ns {
            firing.outcome = "raised in kernel".into();
            firing.exposure_window_us = Some(raised.saturating_sub(seen.time_ns) as f64 / 1000.0);
        } else if rule.mode == Mode::Audit {
            firing.outcome = "audit only".into();
        } else if rule.mode == Mode::Confirm {
            if let Some(m) = rule.meanwhile {
                let o = apply(self, m);
                if o == "applied by agent" {
                    firing.exposure_window_us = Some(now_ktime_ns().saturating_sub(seen.time_ns) as f64 / 1000.0);
                }
                firing.outcome = format!("pending (meanwhile {}: {o})", level_name(m));
            } else {
                firing.outcome = "pending".into();
            }
            approval = self.request_approval(rule, &firing)?;
        } else {
            firing.outcome = apply(self, rule.level);
            if firing.outcome == "applied by agent" {
                firing.exposure_window_us = Some(now_ktime_ns().saturating_sub(seen.time_ns) as f64 / 1000.0);
            }
        }
        if let Some(s) = self.tripwires.rules.get_mut(&name) {
            s.fired.insert(t.name.clone(), firing.clone());
        }
        self.save_tripwires()?;
        let mut e = Entry::new(caller.actor(), Phase::Event, "tripwire-fired");
        e.target = Some(t.name.clone());
        e.params = json!({"firing": firing, "approval": approval});
        e.high_priority = rule.level >= level::DEGRADE && rule.mode != Mode::Audit;
        self.journal.append(e)?;
        let priority = if rule.level >= level::DEGRADE && rule.mode != Mode::Audit { "high" } else { "normal" };
        let message = format!("{reason}: {} ({})", firing.outcome, rule.spec.action);
        let mut alert =
            json!({"type": "alert", "priority": priority, "action": "tripwire-fired", "target": t.name, "time_unix_us": now_us(), "message": message});
        if let (Value::Object(a), Ok(Value::Object(f))) = (&mut alert, serde_json::to_value(&firing)) {
            a.extend(f);
        }
        self.send_alert(alert);
        Ok(())
    }
}
