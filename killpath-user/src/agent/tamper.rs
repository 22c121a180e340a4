//! Tampering the agent detects and undoes: a link pin removed (re-pinned
//! from the fd the agent holds) and a target's cgroup path that no longer
//! leads to the target's cgroup (see `kernel::cgroup::Cgroup::by_id`).
//! Each is a high-priority journal record and an alert.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde_json::{json, Value};
use tracing::{error, warn};

use super::{now_us, State};
use crate::{
    error::Result,
    journal::{Actor, Entry, Phase},
    kernel::cgroup::Cgroup,
};

/// How often the link pins are checked.
pub const LINK_CHECK: Duration = Duration::from_millis(500);

/// Checks the link pins every [`LINK_CHECK`]. The walk of every pin (nine
/// per target) runs without the state lock, so commands do not wait for it
/// with many targets; only what it found missing is looked at again and
/// put back under the lock (a target being released meanwhile is not).
pub async fn link_watch(state: Arc<Mutex<State>>) {
    let links = state.lock().unwrap_or_else(PoisonError::into_inner).enforcer.links.clone();
    let mut tick = tokio::time::interval(LINK_CHECK);
    loop {
        tick.tick().await;
        let missing = links.missing();
        let mut s = super::stop_first::background(&state);
        if !missing.is_empty() {
            let found = s.enforcer.links.check_pins(&missing);
            s.repinned_alerts(found);
        }
        s.journal_top_up();
        if let Err(e) = s.enforcer.detach_idle_syscall_hooks() {
            warn!("detaching the syscall throttle hooks no ceiling needs: {e}");
        }
    }
}

impl State {
    /// Re-pins the host-wide link pins and `target`'s own that disappeared,
    /// and alerts for each (before an action on it: not a walk of every
    /// target's pins, which [`link_watch`] makes).
    pub(super) fn check_links_for(&mut self, target: Option<&str>) {
        let id = target.and_then(|t| self.registry.targets.get(t)).map(|t| t.cgroup_id);
        let found = self.enforcer.links.check_target(id);
        self.repinned_alerts(found);
    }

    /// Alerts for each pin found missing (re-pinned or not).
    pub(super) fn repinned_alerts(&mut self, found: Vec<crate::kernel::links::Repinned>) {
        for r in found {
            let target = r.cgroup_id.and_then(|id| self.registry.targets.values().find(|t| t.cgroup_id == id)).map(|t| t.name.clone());
            let message = match &r.error {
                None => format!("link pin removed: re-pinned {}", r.pin.display()),
                Some(e) => format!("link pin removed: re-pinning {} failed ({e}); the link stays attached while the agent holds it", r.pin.display()),
            };
            error!(pin = %r.pin.display(), "{message}");
            let details = json!({"pin": r.pin, "cgroup_id": r.cgroup_id, "repinned": r.error.is_none(), "error": r.error});
            self.tamper_alert(target.as_deref(), "link-pin-removed", &message, details);
        }
    }

    /// Target `name`'s cgroup, opened by its id (the real directory, see
    /// `kernel::cgroup_id`). When the registry's path no longer leads to
    /// it (a mount over it, a swapped directory), that is journaled and
    /// alerted, and the caller still acts, on the real cgroup (a level
    /// step must not be blocked by whoever can mount), reporting the
    /// mismatch it is given back.
    pub(super) fn target_cgroup(&mut self, name: &str) -> Result<(Cgroup, Option<String>)> {
        let t = self.registry.get(name)?.clone();
        // On the agent's known cgroup2 mount: `Cgroup::by_id` would parse
        // the mount table again (tens of µs on every level change's path).
        let cg = Cgroup::by_id_on(&self.cgroup_mount, &t.cgroup, t.cgroup_id)?;
        let mismatch = crate::kernel::cgroup_id::path_mismatch(&t.cgroup, t.cgroup_id);
        if let Some(why) = &mismatch {
            let message = format!("target {name}: cgroup path tampered: {why}");
            error!("{message}");
            let details = json!({"cgroup": t.cgroup, "cgroup_id": t.cgroup_id, "why": why, "acted_on": "the real cgroup, by id"});
            self.tamper_alert(Some(name), "cgroup-path-mismatch", &message, details);
        }
        Ok((cg, mismatch))
    }

    /// A high-priority journal record, an event for subscribers and the
    /// operator's alert hook, for tampering with what killpath relies on.
    pub(super) fn tamper_alert(&mut self, target: Option<&str>, action: &str, message: &str, details: Value) {
        let alert = json!({
            "type": "alert",
            "priority": "high",
            "action": action,
            "target": target,
            "message": message,
            "details": details,
            "time_unix_us": now_us(),
        });
        let mut e = Entry::new(Actor::Source { source: "agent".into() }, Phase::Event, action);
        e.target = target.map(str::to_owned);
        e.params = alert.clone();
        e.outcome = Some(message.to_owned());
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            warn!("journaling a tamper alert failed: {err}");
        }
        self.send_alert(alert);
    }
}
