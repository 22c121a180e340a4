//! `killpath status`: each target's level, ceilings, capabilities,
//! channels, counters and denials, read from the kernel maps.
//!
//! Served in two parts so that it stays cheap with many targets and never
//! holds the state lock for its file reads: under the lock, a snapshot of
//! what the agent holds (registry rows, map counters: the per-target
//! counters map is walked once, not looked up per target and counter);
//! then, without the lock, what the kernel's files say of each target
//! (tasks, `populated`, privileges, the isolation pins).

use std::{collections::HashMap, path::PathBuf, sync::Mutex};

use killpath_common::{audit as audit_bits, cap, counter, level, protect, DenialKey};
use serde_json::{json, Map, Value};

use super::State;
use crate::{
    client::protocol::Command,
    error::Result,
    kernel::cgroup::Cgroup,
    target::{level_name, Target},
};

/// `status` outside the state lock (see the module doc): the lock is held
/// (behind any stop, see `stop_first`) only for the snapshot.
pub(super) fn serve(state: &Mutex<State>, cmd: &Command, name: Option<&str>) -> Result<Value> {
    let snap = super::stop_first::lock(state, cmd).status_snapshot(name)?;
    Ok(snap.render())
}

/// What `status` needs from the state, taken under the lock.
pub(super) struct Snapshot {
    rows: Vec<(Target, Map<String, Value>)>,
    cgroup_mount: PathBuf,
    pin_dir: PathBuf,
    guard: crate::privileges::Guard,
    global: Value,
}

/// One walk of the per-target counters map (denials, protection refusals,
/// audit counts): (cgroup id, index, key kind) -> sum over CPUs.
pub(super) fn counters(s: &State) -> HashMap<(u64, u32, u32), u64> {
    let Some(d) = s.enforcer.maps.degrade.as_ref() else { return HashMap::new() };
    d.denials.iter().filter_map(|r| r.ok()).map(|(k, v): (DenialKey, _)| ((k.cgroup_id, k.cap, k._pad), v.iter().sum())).collect()
}

impl State {
    pub(super) fn status(&self, name: Option<&str>) -> Result<Value> {
        Ok(self.status_snapshot(name)?.render())
    }

    /// The part of `status` that reads the agent's state (see [`serve`]).
    pub(super) fn status_snapshot(&self, name: Option<&str>) -> Result<Snapshot> {
        let list: Vec<&Target> = match name {
            Some(n) => vec![self.registry.get(n)?],
            None => self.registry.targets.values().collect(),
        };
        // Target -> its marked processes: one walk of the marks for all
        // rows, or one target's marks as last read when none was written
        // since (`kernel::mark_snapshot`).
        let only = match list.as_slice() {
            [t] => Some(t.cgroup_id),
            _ => None,
        };
        let members: HashMap<u64, std::collections::BTreeSet<u32>> =
            self.enforcer.maps.members.as_ref().map(|m| m.processes_by_target(only)).unwrap_or_default();
        let counts = counters(self);
        let rows = list
            .into_iter()
            .map(|t| {
                let id = t.cgroup_id;
                let kernel = self.enforcer.maps.get(id);
                let open: Vec<String> = if t.level >= level::ISOLATE {
                    crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted).into_iter().filter(|c| !c.enforced).map(|c| c.channel).collect()
                } else {
                    Vec::new()
                };
                let denials: Map<String, Value> = (0..cap::COUNT)
                    .filter_map(|i| counts.get(&(id, i, 0)).map(|n| (i, *n)))
                    .map(|(i, n)| {
                        (crate::degrade::name_of_index(i).to_owned(), json!({"total": n, "last_minute": n.saturating_sub(self.denials_minute_ago(id, i))}))
                    })
                    .collect();
                let protections: Map<String, Value> = protect::NAMES
                    .iter()
                    .enumerate()
                    .filter_map(|(i, name)| counts.get(&(id, protect::FIRST + i as u32, 0)).map(|n| ((*name).to_owned(), json!(n))))
                    .collect();
                let would: Vec<(u32, u64)> = (0..cap::COUNT)
                    .chain(audit_bits::ISOLATE_FIRST..audit_bits::ISOLATE_FIRST + counter::COUNT)
                    .filter_map(|i| counts.get(&(id, i, audit_bits::KEY_AUDIT)).filter(|n| **n > 0).map(|n| (i, *n)))
                    .collect();
                let audit = super::audit::audit_flags(t);
                let row = json!({
                    "audit": audit,
                    "would_have_refused": crate::audit::counts_json(&would),
                    "protections_refused": protections,
                    "history": t.history,
                    "throttle": self.throttle_status(t),
                    "revoked": crate::degrade::names(t.revoked),
                    "allow_connect": t.allow_connect,
                    "allow_write": t.allow_write,
                    "denials": denials,
                    "netdevs": t.netdevs,
                    "open_channels": open,
                    "name": t.name,
                    "cgroup": t.cgroup,
                    "cgroup_id": t.cgroup_id,
                    "level": level_name(t.level),
                    "kernel_level": kernel.map(|k| level_name(k.level)),
                    "since_unix_us": t.since_unix_us,
                    "last_stop": t.last_stop,
                    "escape_attempts": self.enforcer.maps.members.as_ref().map(|m| m.escapes(id)),
                    "guard_kills": self.enforcer.maps.guard_kills_of(id),
                    "members": self.enforcer.maps.members.as_ref().map(|_| members.get(&id).map_or(0, |s| s.len())),
                    "pending": self.pending_summary(&t.name),
                    "tripwires_fired": self.tripwire_status(&t.name),
                    "lease": self.lease_status(id),
                    "trail": self.trail_status(t),
                });
                let row = match row {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                ((*t).clone(), row)
            })
            .collect();
        let m = &self.enforcer.maps;
        let global = json!({
            "guard_kills": m.guard_kills(),
            "isolation": {
                "packets_dropped": m.counter(counter::ISOLATE_SKB_DROPS),
                "tc_packets_dropped": m.counter(counter::ISOLATE_TC_DROPS),
                "connects_refused": m.counter(counter::ISOLATE_ADDR_DENIALS),
                "raw_sockets_refused": m.counter(counter::ISOLATE_SOCK_DENIALS),
                "devices_refused": m.counter(counter::ISOLATE_DEVICE_DENIALS),
                "xdp_setups_refused": m.counter(counter::ISOLATE_SOCKOPT_DENIALS),
                "lsm_denials": m.counter(counter::ISOLATE_LSM_DENIALS),
                "lsm": self.enforcer.lsm_error.clone().map_or("attached".to_owned(), |e| format!("unavailable: {e}")),
            },
            "membership": {
                "tracking": self.enforcer.members_error.clone().map_or("on: marks follow each task; a move out of a target is detected and reverted".to_owned(), |e| format!("unavailable: {e}")),
                "marks_lost": m.members.as_ref().map(|mm| mm.lost()),
                "marks": crate::kernel::marks_capacity::status(m.members.as_ref().and_then(|mm| mm.capacity())),
            },
            // The sysctl guard is one of the per-target cgroup programs the
            // agent loaded to start at all.
            "protections": crate::protect::statuses(self.enforcer.protect_error.as_deref(), None, None),
            "trail_files": crate::trail::files::status(self.enforcer.trail_files.error.as_deref()),
            "journal": self.journal_status(),
            // The stop thread's scheduling class (`kernel::priority`).
            "stop_thread": crate::kernel::priority::stop_class(),
            "stop_thread_backup": crate::kernel::priority::backup_stop_class(),
        });
        Ok(Snapshot {
            rows,
            cgroup_mount: self.cgroup_mount.clone(),
            pin_dir: self.enforcer.isolate.pin_dir().to_owned(),
            guard: crate::privileges::Guard::from_state(self.enforcer.lsm_error.as_deref(), self.enforcer.protect_error.as_deref()),
            global,
        })
    }
}

impl Snapshot {
    /// The rest of `status`, from the kernel's files, without the lock.
    pub(super) fn render(self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .into_iter()
            .map(|(t, mut row)| {
                // By id: a mount over the path cannot show fake task counts;
                // on the agent's known cgroup2 mount.
                let cg = Cgroup::by_id_on(&self.cgroup_mount, &t.cgroup, t.cgroup_id).unwrap_or_else(|_| Cgroup::new(&t.cgroup));
                let procs = cg.procs_recursive();
                let populated = cg.populated();
                row.insert("tasks".into(), json!(procs.len()));
                row.insert("cgroup_exists".into(), json!(populated.is_ok() || cg.exists()));
                row.insert("populated".into(), json!(populated.unwrap_or(false)));
                row.insert("isolation_hooks_attached".into(), json!(crate::isolate::programs::IsolatePrograms::attached_at(&self.pin_dir, t.cgroup_id)));
                row.insert("privileges".into(), json!(crate::privileges::assess(&procs, &t.cgroup, &self.cgroup_mount, &self.guard)));
                Value::Object(row)
            })
            .collect();
        let mut out = self.global;
        if let Value::Object(m) = &mut out {
            m.insert("targets".into(), Value::Array(rows));
        }
        out
    }
}
