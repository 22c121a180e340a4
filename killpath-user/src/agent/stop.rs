//! Level 4 at the agent: arm the kernel guard, then the hard stop.
use std::time::Instant;

use killpath_common::level;
use serde_json::json;

use super::{now_us, Done, State};
use crate::{error::Result, stop};

impl State {
    pub(super) fn stop(&mut self, name: &str, received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        // Arm the kernel guard first: from here on any task of the target
        // that makes a syscall, forks or is switched out gets SIGKILL.
        self.enforcer.maps.set(t.cgroup_id, t.state(level::STOPPED))?;
        let guard_armed_us = received.elapsed().as_micros() as u64;
        let kills_before = self.enforcer.maps.guard_kills();
        // The real cgroup, by id: a mount over the path cannot hide the
        // target's tasks from the stop (a mismatch is alerted and reported).
        let (cg, path_mismatch) = self.target_cgroup(name)?;
        let report = stop::hard_stop(&cg, received, stop::EMPTY_TIMEOUT)?;
        let guard_kills = self.enforcer.maps.guard_kills().saturating_sub(kills_before);
        let tt = self.registry.get_mut(name)?;
        tt.level = level::STOPPED;
        tt.since_unix_us = now_us();
        tt.last_stop = Some(report.clone());
        self.registry.save()?;
        Ok(Done {
            result: json!({
                "target": name,
                "level": "stopped",
                "survivors": report.survivors,
                "tasks_at_start": report.tasks_at_start,
                "time_to_halt_us": report.time_to_halt_us,
                "time_to_empty_us": report.time_to_empty_us,
                "guard_armed_us": guard_armed_us,
                "guard_kills": guard_kills,
                "used_cgroup_kill": report.used_cgroup_kill,
                "used_freeze": report.used_freeze,
                "cgroup_path_mismatch": path_mismatch,
            }),
            to_level: Some(level::STOPPED),
            time_to_effect_us: Some(report.time_to_empty_us),
        })
    }
}
