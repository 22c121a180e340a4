//! Adopting the levels the kernel raised on its own (a critical tripwire,
//! an expired lease; see `killpath-common/src/raise.rs`): each raise is
//! journaled as a high-priority kernel event and alerted, then the level
//! is completed through the same journaled path a command takes (a stop
//! still empties the cgroup), and the record is dropped. Runs every
//! [`RAISE_CHECK`] and at start-up, so a raise made while the agent was
//! dead is journaled by the next agent.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use killpath_common::{level, raise::cause, raise::Raise};
use serde_json::{json, Value};
use tracing::warn;

use super::{now_us, Caller, State};
use crate::{
    error::Result,
    journal::{Actor, Entry, Phase},
    target::level_name,
};

/// How often the agent looks for raises it has not adopted.
pub const RAISE_CHECK: Duration = Duration::from_millis(20);

/// Adopts kernel raises every [`RAISE_CHECK`]: one map walk, nothing
/// locked while there is none.
pub async fn raise_watch(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(RAISE_CHECK);
    loop {
        tick.tick().await;
        let pending = state.lock().unwrap_or_else(PoisonError::into_inner).enforcer.maps.raises();
        if pending.is_empty() {
            continue;
        }
        let state = state.clone();
        // Journaling fsyncs: off the async threads.
        let _ = tokio::task::spawn_blocking(move || state.lock().unwrap_or_else(PoisonError::into_inner).adopt_kernel_raises()).await;
    }
}

/// The journal's source name for a raise's cause.
fn source(r: &Raise) -> &'static str {
    match r.cause {
        cause::TRIPWIRE => "kernel-tripwire",
        cause::LEASE => "kernel-lease",
        _ => "kernel",
    }
}

impl State {
    /// Journals, alerts and completes every raise the kernel made on its own.
    pub(super) fn adopt_kernel_raises(&mut self) {
        for (id, r) in self.enforcer.maps.raises() {
            if let Err(e) = self.adopt_raise(id, &r) {
                warn!(cgroup_id = id, "adopting a kernel raise failed: {e}");
            }
        }
    }

    fn adopt_raise(&mut self, id: u64, r: &Raise) -> Result<()> {
        let Some(t) = self.registry.targets.values().find(|t| t.cgroup_id == id).cloned() else {
            // Not ours (released since): nothing to complete.
            return self.enforcer.maps.clear_raise(id, r);
        };
        let (what, detail) = self.raise_context(&t.name, r);
        // The kernel's clock is CLOCK_MONOTONIC: the window from the
        // trigger to the level in force is measured on it alone.
        let window_ns = r.time_ns.saturating_sub(r.trigger_ns);
        let revoked = crate::degrade::names(r.revoke);
        let params = json!({
            "cause": what,
            "level": level_name(r.level),
            "revoked": revoked,
            "trigger_ktime_ns": r.trigger_ns,
            "raised_ktime_ns": r.time_ns,
            "exposure_window_ns": window_ns,
            "value": r.value,
            "agent_seen_after_us": now_ktime_ns().saturating_sub(r.time_ns) / 1000,
            "detail": detail,
        });
        let mut e = Entry::new(Actor::Source { source: source(r).into() }, Phase::Event, "kernel-raise");
        e.target = Some(t.name.clone());
        e.from_level = Some(t.level);
        e.to_level = Some(t.level.max(r.level));
        e.params = params.clone();
        e.high_priority = true;
        self.journal.append(e)?;
        let message = format!("{what}: the kernel raised {} to {} ({} µs after the trigger)", t.name, level_name(r.level), window_ns / 1000);
        let mut alert = json!({"type": "alert", "priority": "high", "action": "kernel-raise", "target": t.name, "time_unix_us": now_us(), "message": message});
        if let (Value::Object(a), Value::Object(p)) = (&mut alert, params) {
            a.extend(p);
        }
        self.send_alert(alert);
        self.complete_raise(&t.name, r)?;
        self.enforcer.maps.clear_raise(id, r)
    }

    /// Brings the registry (and what a level does besides the map: a stop
    /// empties the cgroup) up to a raise, through the journaled path.
    fn complete_raise(&mut self, name: &str, r: &Raise) -> Result<()> {
        let caller = Caller::agent(source(r));
        let t = self.registry.get(name)?.clone();
        let now = Instant::now();
        if r.level >= level::STOPPED {
            // Even when recovery already took the level from the kernel:
            // the guard kills tasks as they run; the stop empties the cgroup.
            self.execute(caller, "stop", Some(name), json!({"reason": "kernel raise"}), |s| s.stop(name, now))?;
        } else if r.level >= level::ISOLATE && t.level < level::ISOLATE {
            self.execute(caller, "isolate", Some(name), json!({"reason": "kernel raise"}), |s| s.isolate(name, false, &[], now))?;
        } else if r.revoke & !t.revoked != 0 || r.level > t.level {
            let tt = self.registry.get_mut(name)?;
            tt.revoked |= r.revoke;
            tt.level = tt.level.max(r.level);
            let state = tt.state(tt.level);
            let id = tt.cgroup_id;
            self.registry.save()?;
            self.enforcer.maps.set(id, state)?;
        }
        Ok(())
    }

    /// What raised the target, for the journal: the rule or lease, filled
    /// in by the feature that armed it.
    fn raise_context(&self, name: &str, r: &Raise) -> (String, Value) {
        match r.cause {
            cause::TRIPWIRE => self.tripwire_raise_context(name, r),
            cause::LEASE => self.lease_raise_context(name, r),
            c => (format!("unknown cause {c}"), Value::Null),
        }
    }

    // Placeholder until tripwires land (leases: agent/deadman.rs).
    fn tripwire_raise_context(&self, _name: &str, r: &Raise) -> (String, Value) {
        ("tripwire".into(), json!({"rule_slot": r.detail}))
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock bpf_ktime_get_ns reads.
pub(super) fn now_ktime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}
