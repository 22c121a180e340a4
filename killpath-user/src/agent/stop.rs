//! Level 4 at the agent: the hard stop, arming the kernel guard once the
//! target is halted (see `stop`: what the guard is for comes later, tasks
//! moved into the stopped target). Armed first, it would SIGKILL a fork
//! bomb's tasks one by one at their next syscall or switch while the
//! freeze spreads, which delays `frozen 1`, and its map update would sit
//! before the halt.
use std::time::Instant;

use killpath_common::level;
use serde_json::json;

use super::{now_us, Done, State};
use crate::{error::Result, kernel::cgroup::Cgroup, stop, target::Target};

impl State {
    /// Cgroup ids of `t` and of every target nested inside it.
    pub(super) fn nested_ids(&self, t: &Target) -> Vec<u64> {
        self.registry.nested_ids(&t.cgroup)
    }

    /// `early`: the target's marks as the marks thread reads them
    /// meanwhile (`stop_marks`).
    pub(super) fn stop(&mut self, name: &str, order: stop::StopOrder, early: Option<&stop::marks::Pending>, received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        // Receipt to here: the intent journaled and fdatasynced (the disk's
        // share of the halt).
        let intent_durable_us = received.elapsed().as_micros() as u64;
        // Where the wait before it went: receipt to the stop thread, and to
        // the state lock (see `stop_first`).
        let timings = super::stop_first::stop_timings(received);
        // The real cgroup, by id: a mount over the path cannot hide the
        // target's tasks from the stop. Whether the path still leads there
        // is checked after the kill (a mismatch is then alerted and
        // reported): nothing that is not the kill goes before it. Opened
        // by the preparation thread while the intent was written, if it could.
        let cg = match early.and_then(stop::marks::Pending::cgroup) {
            Some(cg) => cg,
            None => Cgroup::by_id_on(&self.cgroup_mount, &t.cgroup, t.cgroup_id)?,
        };
        // Membership follows the task: the target's marked tasks, and those
        // of targets nested in it, die wherever they sit. The marks are
        // held apart from the maps for the stop, so that the guard can be
        // armed (a write to the maps) from inside it.
        let ids = self.nested_ids(&t);
        let kills_before = guard_kills_of(&self.enforcer.maps, &ids);
        let members = self.enforcer.maps.members.take();
        let marked = members.as_ref().map(|m| (m, ids.as_slice()));
        let mut guard_armed_us = 0;
        let maps = &mut self.enforcer.maps;
        // From the arming on, any task of the target that makes a syscall,
        // forks or is switched out gets SIGKILL.
        let mut arm = || {
            maps.set(t.cgroup_id, t.state(level::STOPPED))?;
            guard_armed_us = received.elapsed().as_micros() as u64;
            Ok(())
        };
        let report = stop::hard_stop_guarded(&cg, marked, early, order, &mut arm, received, stop::EMPTY_TIMEOUT);
        self.enforcer.maps.members = members;
        // A stop that failed, or whose arming failed (it goes on to the
        // kill regardless), still leaves the guard armed.
        if guard_armed_us == 0 {
            self.enforcer.maps.set(t.cgroup_id, t.state(level::STOPPED))?;
        }
        let report = report?;
        // After the kill nothing fails the stop: a cgroup removed once
        // empty (systemd removes a scope's) has no path left to compare.
        let path_mismatch = match self.target_cgroup(name) {
            Ok((_, m)) => m,
            Err(e) => {
                tracing::debug!(target = name, "stop: cgroup path not checked after the kill: {e}");
                None
            }
        };
        let escape_attempts: u64 = self.enforcer.maps.members.as_ref().map_or(0, |m| m.escapes_of(&ids));
        let guard_kills = guard_kills_of(&self.enforcer.maps, &ids).saturating_sub(kills_before);
        let run_delay_us = super::stop_first::run_delay_us();
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
                "halt": report.halt,
                "order": report.order,
                // Which stop thread ran it (`stop_thread`): `kp-stop`
                // (real-time) or `kp-stop-cfs` (the backup).
                "thread": std::thread::current().name().unwrap_or("pool"),
                "freeze_timed_out": report.freeze_timed_out,
                "halt_waited_for_marked": report.halt_waited_for_marked,
                "escapes_during_halt": report.escapes_during_halt,
                "freeze_watched": report.freeze_watched,
                "guard_armed_us": guard_armed_us,
                "intent_durable_us": intent_durable_us,
                "queued_us": timings.queued_us,
                "picked_up_us": timings.picked_up_us,
                "queued_ahead": super::stop_first::queued_ahead(),
                "lock_held_us": timings.lock_held_us,
                "checked_us": timings.checked_us,
                "run_delay_us": run_delay_us,
                "guard_kills": guard_kills,
                "used_cgroup_kill": report.used_cgroup_kill,
                "used_freeze": report.used_freeze,
                "escape_attempts": escape_attempts,
                "marked_outside": report.marked_outside,
                "marked_killed": report.marked_killed,
                "marks_checked": report.marks_checked,
                "cgroup_empty_us": report.cgroup_empty_us,
                "marks_wait_us": report.marks_wait_us,
                "marks_asked_us": report.marks_asked_us,
                "marks_read_from_us": report.marks_read_from_us,
                "marks_read_to_us": report.marks_read_to_us,
                // Marks the kernel could not store, ever (`marks_capacity`):
                // nonzero, a task may have left unmarked and unseen.
                "marks_lost": self.enforcer.maps.members.as_ref().map(|m| m.lost()),
                "membership": report.membership,
                "cgroup_path_mismatch": path_mismatch,
                "trail": self.trail_pointer(&t),
            }),
            to_level: Some(level::STOPPED),
            time_to_effect_us: Some(report.time_to_empty_us),
        })
    }
}

/// Tasks the guard killed for these targets (the stopped one and those
/// nested in it); host-wide when the pinned maps predate the per-target
/// count.
fn guard_kills_of(maps: &crate::kernel::maps::Maps, ids: &[u64]) -> u64 {
    ids.iter().map(|id| maps.guard_kills_of(*id)).sum::<Option<u64>>().unwrap_or_else(|| maps.guard_kills())
}
