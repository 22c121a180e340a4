//! The halt of a target too large for `cgroup.kill` alone to be quick, in
//! each [`StopOrder`]: the writes, and the observation that ends the halt.
//!
//! `frozen 1` in cgroup.events ends a halt only if nobody wrote
//! `cgroup.freeze` between our own freeze write and the kill write: a thaw
//! there (even followed by a re-freeze, the knob then reading `1` again)
//! let tasks run user code after the observation. Writes are seen through
//! an inotify watch on the knob ([`Cgroup::watch_writes`]); without the
//! watch, `frozen 1` is not trusted and the kill write ends the halt.
use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::inotify::Inotify,
};

use super::{arm_after_halt, kill, micros, Halt, StopOrder, StopReport, FREEZE_WAIT};
use crate::{
    error::Result,
    kernel::cgroup::{events_field, read_events, Cgroup},
};

/// Halts and kills a large `cg` in `order` (not `Auto`); fills the halt
/// fields of `report` and returns the pids read while it happened.
pub(super) fn halt_large(cg: &Cgroup, order: StopOrder, report: &mut StopReport, arm: &mut dyn FnMut() -> Result<()>, received: Instant) -> Result<Vec<i32>> {
    if !cg.has_freeze() || order == StopOrder::KillGuardFirst {
        // The guard first: a task forked or switched while the kill write
        // walks the cgroup is killed by it too.
        if order == StopOrder::KillGuardFirst {
            arm_after_halt(arm);
        }
        report.halt = kill(cg, report)?;
        report.time_to_halt_us = micros(received);
        if order != StopOrder::KillGuardFirst {
            arm_after_halt(arm);
        }
        return Ok(cg.procs_recursive());
    }
    // A freeze someone else holds (the throttle pacer, which thaws what it
    // froze unless the target is at `stopped`): the guard goes first, so
    // the freeze stays ours. Its tasks are frozen already: the guard has
    // nothing to kill yet. Nothing between here and the kill may end the
    // stop: a failed step only means the kill write ends the halt.
    let held = cg.freeze_requested().unwrap_or(false);
    if held {
        arm_after_halt(arm);
    }
    let writes = watch_knob(cg);
    let froze = cg.freeze(true);
    report.used_freeze = froze.is_ok();
    // Our own write's event, read now: inotify would merge a later
    // identical one (a thaw behind us) into it.
    let writes = writes.filter(|w| {
        drain(w);
        froze.is_ok()
    });
    report.freeze_watched = writes.is_some();
    let (pids, frozen_us, kill_us) = match order {
        StopOrder::FreezeKillRace => {
            let r = race(cg, report, writes.is_some(), received)?;
            if !held {
                arm_after_halt(arm);
            }
            r
        }
        _ => {
            let frozen = writes.is_some() && cg.wait_event("frozen", 1, FREEZE_WAIT).unwrap_or(false);
            report.freeze_timed_out = !frozen;
            let frozen_us = frozen.then(|| micros(received));
            // Read once halted, not while the freeze spreads: on a small
            // host the read takes a CPU the bomb's tasks need to reach the
            // freezer. Frozen, the list is exact (nobody forks).
            let pids = cg.procs_recursive();
            if !held {
                arm_after_halt(arm);
            }
            report.halt = kill(cg, report)?;
            (pids, frozen_us, micros(received))
        }
    };
    // A write to the knob since ours (a thaw, perhaps undone) voids the
    // observation: the kill write ends the halt then.
    let untouched = writes.as_ref().is_some_and(|w| !drain(w));
    (report.halt, report.time_to_halt_us) = match frozen_us {
        Some(t) if untouched && t < kill_us => (Halt::Frozen, t),
        _ => (report.halt, kill_us),
    };
    tracing::debug!(tasks = pids.len(), ?order, halt = ?report.halt, untouched, halt_us = report.time_to_halt_us, at_us = micros(received), "hard stop: halted, killed");
    Ok(pids)
}

/// The knob's write watch, or None (then `frozen 1` ends no halt).
fn watch_knob(cg: &Cgroup) -> Option<Inotify> {
    cg.watch_writes("cgroup.freeze").map_err(|e| tracing::warn!("hard stop: no watch on cgroup.freeze, the kill write ends the halt: {e}")).ok()
}

/// Reads every pending event; whether there was one (a read error counts
/// as one: nothing can then be vouched for).
fn drain(w: &Inotify) -> bool {
    let mut seen = false;
    loop {
        match w.read_events() {
            Ok(ev) if !ev.is_empty() => seen = true,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => return seen,
            Err(_) => return true,
        }
    }
}

/// [`StopOrder::FreezeKillRace`]: the kill written at once, while another
/// thread waits for `frozen 1`; returns the pids, when `frozen 1` was seen
/// (if it was, before the waiter was told the kill was written) and when
/// the kill write returned.
fn race(cg: &Cgroup, report: &mut StopReport, trusted: bool, received: Instant) -> Result<(Vec<i32>, Option<u64>, u64)> {
    let events = cg.events_file().ok().filter(|_| trusted);
    let done = AtomicBool::new(false);
    let (wake_r, wake_w) = nix::unistd::pipe().map_err(|e| crate::error::Error::Io { what: "a pipe for the stop's freeze waiter".into(), source: e.into() })?;
    let (frozen_us, halt, kill_us) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let f = events.as_ref()?;
            while !done.load(Ordering::Acquire) {
                if events_field(&read_events(f).ok()?, "frozen") == Some(1) {
                    return Some(micros(received));
                }
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI), PollFd::new(wake_r.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(u16::try_from(FREEZE_WAIT.as_millis()).unwrap_or(u16::MAX)));
            }
            None
        });
        let halt = kill(cg, report);
        let kill_us = micros(received);
        done.store(true, Ordering::Release);
        // Wakes the waiter out of its poll.
        let _ = nix::unistd::write(&wake_w, b"x");
        (waiter.join().ok().flatten(), halt, kill_us)
    });
    report.halt = halt?;
    report.freeze_timed_out = frozen_us.is_none();
    Ok((cg.procs_recursive(), frozen_us, kill_us))
}
