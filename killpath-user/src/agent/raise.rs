//! Adopting the levels the kernel raised on its own (a critical tripwire,
//! an expired lease; see `killpath-common/src/raise.rs`): each raise is
//! journaled as a high-priority kernel event and alerted, then the level
//! is completed through the same journaled path a command takes (a stop
//! still empties the cgroup), and the record is dropped. Runs every
//! [`RAISE_CHECK`] and at start-up, so a raise made while the agent was
//! dead is journaled by the next agent.
use std::{
    collections::BTreeSet,
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

/// Every this many checks, KP_TARGETS itself is compared with the registry
/// (a level above the registry's without a record: see `levels_check`).
const LEVELS_EVERY: u32 = 25;

/// Raises already journaled, by (cgroup id, raise time): a completion that
/// fails is retried on the next check without journaling the raise again.
static JOURNALED: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

/// Adopts kernel raises every [`RAISE_CHECK`]: one map walk, nothing
/// locked while there is none.
pub async fn raise_watch(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(RAISE_CHECK);
    let mut n = 0u32;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        let levels = n.is_multiple_of(LEVELS_EVERY);
        let pending = state.lock().unwrap_or_else(PoisonError::into_inner).enforcer.maps.raises();
        if pending.is_empty() && !levels {
            continue;
        }
        let state = state.clone();
        // Journaling fsyncs: off the async threads.
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = super::stop_first::background(&state);
            s.adopt_kernel_raises();
            if levels {
                s.levels_check();
            }
        })
        .await;
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
                warn!(cgroup_id = id, "adopting a kernel raise failed (retried): {e}");
            }
        }
    }

    fn adopt_raise(&mut self, id: u64, r: &Raise) -> Result<()> {
        let t = self.registry.targets.values().find(|t| t.cgroup_id == id).cloned();
        let key = (id, r.time_ns);
        let first = JOURNALED.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
        if first {
            self.journal_raise(id, t.as_ref().map(|t| (t.name.as_str(), t.level)), r)?;
        }
        let done = match &t {
            // Not ours (released since): journaled above, nothing to complete.
            None => Ok(()),
            Some(t) => self.complete_raise(&t.name, r),
        };
        match done {
            Ok(()) => {
                JOURNALED.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                self.enforcer.maps.clear_raise(id, r)
            }
            Err(e) => Err(e),
        }
    }

    /// The high-priority journal record and alert of one raise.
    fn journal_raise(&mut self, id: u64, target: Option<(&str, u32)>, r: &Raise) -> Result<()> {
        let name = target.map(|(n, _)| n.to_owned());
        let (what, detail) = match &name {
            Some(n) => self.raise_context(n, r),
            None => ("kernel raise on a cgroup that is no longer a target".into(), json!({"cgroup_id": id})),
        };
        // The kernel's clock is CLOCK_MONOTONIC: the window from the
        // trigger to the level in force is measured on it alone.
        let window_ns = r.time_ns.saturating_sub(r.trigger_ns);
        let params = json!({
            "cause": what,
            "level": level_name(r.level),
            "revoked": crate::degrade::names(r.revoke),
            "trigger_ktime_ns": r.trigger_ns,
            "raised_ktime_ns": r.time_ns,
            "exposure_window_ns": window_ns,
            "value": r.value,
            "agent_seen_after_us": now_ktime_ns().saturating_sub(r.time_ns) / 1000,
            "detail": detail,
        });
        let mut e = Entry::new(Actor::Source { source: source(r).into() }, Phase::Event, "kernel-raise");
        e.target = name.clone();
        e.from_level = target.map(|(_, l)| l);
        e.to_level = Some(target.map_or(r.level, |(_, l)| l.max(r.level)));
        e.params = params.clone();
        e.high_priority = true;
        self.journal.append(e)?;
        let who = name.as_deref().unwrap_or("a released target");
        let message = format!("{what}: the kernel raised {who} to {} ({} µs after the trigger)", level_name(r.level), window_ns / 1000);
        let mut alert = json!({"type": "alert", "priority": "high", "action": "kernel-raise", "target": name, "time_unix_us": now_us(), "message": message});
        if let (Value::Object(a), Value::Object(p)) = (&mut alert, params) {
            a.extend(p);
        }
        self.send_alert(alert);
        Ok(())
    }

    /// Brings the registry (and what a level does besides the map: a stop
    /// empties the cgroup) up to a raise, through the journaled path. A
    /// target whose cgroup is gone has nothing left to complete.
    fn complete_raise(&mut self, name: &str, r: &Raise) -> Result<()> {
        let caller = Caller::agent(source(r));
        let t = self.registry.get(name)?.clone();
        if self.target_cgroup(name).is_err() {
            warn!(target = name, "kernel raise on a target whose cgroup is gone: nothing to complete");
            return Ok(());
        }
        // Revocations first, whatever the level: the registry's state is
        // what every later write puts into the kernel.
        if r.revoke & !t.revoked != 0 {
            let tt = self.registry.get_mut(name)?;
            tt.revoked |= r.revoke;
            self.registry.save()?;
        }
        let now = Instant::now();
        if r.level >= level::STOPPED {
            // Even when the registry already says stopped: the guard kills
            // tasks as they run; the stop empties the cgroup.
            self.execute_stop(caller, "stop", name, json!({"reason": "kernel raise"}), crate::stop::StopOrder::Auto, now)?;
        } else if r.level >= level::ISOLATE && t.level < level::ISOLATE {
            self.execute(caller, "isolate", Some(name), json!({"reason": "kernel raise"}), |s| s.isolate(name, false, &[], now))?;
        } else {
            let tt = self.registry.get_mut(name)?;
            tt.level = tt.level.max(r.level);
            let (id, state) = (tt.cgroup_id, tt.state(tt.level));
            self.registry.save()?;
            self.enforcer.maps.set(id, state)?;
        }
        Ok(())
    }

    /// A target whose level in KP_TARGETS is above the registry's with no
    /// raise record (the record was lost: the agent cleared it just as the
    /// kernel raised again) is adopted as a raise of unknown cause, so no
    /// later write of the registry's level lowers it unseen.
    pub(super) fn levels_check(&mut self) {
        // One walk of the kernel's map: levels it wrote on its own are
        // counted in the global switches from now on, and looked at below.
        self.enforcer.maps.reload_mirror();
        // And the switches recomputed from it: a target another process
        // wrote (the CLI's fallback stop while this agent did not answer)
        // counts from now on, whatever an earlier `set` computed from the
        // stale copy.
        if let Err(e) = self.enforcer.maps.sync_config() {
            warn!("recomputing the global switches: {e}");
        }
        let found: Vec<(u64, u32, u32)> = self
            .registry
            .targets
            .values()
            .filter_map(|t| {
                self.enforcer.maps.mirrored(t.cgroup_id).map(|k| (t.cgroup_id, k.level, k.revoked)).filter(|(_, l, rv)| *l > t.level || rv & !t.revoked != 0)
            })
            .filter(|(id, _, _)| self.enforcer.maps.raise_of(*id).is_none())
            .collect();
        for (id, level, revoke) in found {
            let r = Raise { time_ns: now_ktime_ns(), trigger_ns: now_ktime_ns(), level, revoke, ..Raise::default() };
            if let Err(e) = self.adopt_raise(id, &r) {
                warn!(cgroup_id = id, "adopting a level found raised in the kernel failed: {e}");
            }
        }
    }

    /// What raised the target, for the journal: the rule or lease, filled
    /// in by the feature that armed it.
    fn raise_context(&self, name: &str, r: &Raise) -> (String, Value) {
        match r.cause {
            cause::TRIPWIRE => self.tripwire_raise_context(name, r),
            cause::LEASE => self.lease_raise_context(name, r),
            0 => ("level found raised in the kernel without a record".into(), Value::Null),
            c => (format!("unknown cause {c}"), Value::Null),
        }
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock bpf_ktime_get_ns reads.
pub(super) use crate::kernel::clock::monotonic_ns as now_ktime_ns;
