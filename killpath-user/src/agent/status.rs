//! `killpath status`: each target's level, ceilings, capabilities,
//! channels, counters and denials, read from the kernel maps.

use killpath_common::{counter, level};
use serde_json::{json, Value};

use super::State;
use crate::{
    error::Result,
    kernel::cgroup::Cgroup,
    target::{level_name, Target},
};

impl State {
    pub(super) fn status(&self, name: Option<&str>) -> Result<Value> {
        let list: Vec<&Target> = match name {
            Some(n) => vec![self.registry.get(n)?],
            None => self.registry.targets.values().collect(),
        };
        // One walk of the marks for all rows (status must stay cheap with
        // many targets): target -> its marked processes.
        let mut members: std::collections::HashMap<u64, std::collections::BTreeSet<u32>> = Default::default();
        for (_, mk) in self.enforcer.maps.members.as_ref().map(|m| m.all()).unwrap_or_default() {
            members.entry(mk.target).or_default().insert(mk.tgid);
        }
        let rows: Vec<Value> = list
            .into_iter()
            .map(|t| {
                // By id: a mount over the path cannot show fake task counts.
                // On the agent's known cgroup2 mount: no read of the mount
                // table per row (status must stay cheap with many targets).
                let cg = Cgroup::by_id_on(&self.cgroup_mount, &t.cgroup, t.cgroup_id).unwrap_or_else(|_| Cgroup::new(&t.cgroup));
                let kernel = self.enforcer.maps.get(t.cgroup_id);
                let open: Vec<String> = if t.level >= level::ISOLATE {
                    crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted).into_iter().filter(|c| !c.enforced).map(|c| c.channel).collect()
                } else {
                    Vec::new()
                };
                let denials: serde_json::Map<String, Value> = self
                    .enforcer
                    .maps
                    .denials(t.cgroup_id)
                    .into_iter()
                    .map(|(i, n)| {
                        (
                            crate::degrade::name_of_index(i).to_owned(),
                            json!({"total": n, "last_minute": n.saturating_sub(self.denials_minute_ago(t.cgroup_id, i))}),
                        )
                    })
                    .collect();
                let protections: serde_json::Map<String, Value> =
                    self.enforcer.maps.protection_refusals(t.cgroup_id).into_iter().map(|(n, v)| (n.to_owned(), json!(v))).collect();
                let (audit, would_have_refused) = self.audit_status(t);
                json!({
                    "audit": audit,
                    "would_have_refused": would_have_refused,
                    "protections_refused": protections,
                    "history": t.history,
                    "throttle": self.throttle_status(t),
                    "revoked": crate::degrade::names(t.revoked),
                    "allow_connect": t.allow_connect,
                    "allow_write": t.allow_write,
                    "denials": denials,
                    "netdevs": t.netdevs,
                    "open_channels": open,
                    "isolation_hooks_attached": self.enforcer.isolate.attached(t.cgroup_id),
                    "name": t.name,
                    "cgroup": t.cgroup,
                    "cgroup_id": t.cgroup_id,
                    "level": level_name(t.level),
                    "kernel_level": kernel.map(|k| level_name(k.level)),
                    "tasks": cg.procs_recursive().len(),
                    "populated": cg.populated().unwrap_or(false),
                    "cgroup_exists": cg.exists(),
                    "since_unix_us": t.since_unix_us,
                    "last_stop": t.last_stop,
                    "escape_attempts": self.enforcer.maps.members.as_ref().map(|m| m.escapes(t.cgroup_id)),
                    "members": self.enforcer.maps.members.as_ref().map(|_| members.get(&t.cgroup_id).map_or(0, |s| s.len())),
                    "privileges": self.privileges(t),
                    "pending": self.pending_summary(&t.name),
                    "tripwires_fired": self.tripwire_status(&t.name),
                    "lease": self.lease_status(t.cgroup_id),
                })
            })
            .collect();
        let m = &self.enforcer.maps;
        Ok(json!({
            "targets": rows,
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
            },
            "protections": crate::protect::statuses(self.enforcer.protect_error.as_deref(), None),
            "journal": self.journal_status(),
        }))
    }
}
