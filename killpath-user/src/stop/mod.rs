//! Level 4, hard stop: kill every task of a target without its cooperation.
//!
//! Order matters: freeze first so a fork bomb stops multiplying, then
//! `cgroup.kill` (one write, SIGKILL to the whole subtree, forks in flight
//! included), then wait for `cgroup.events` to say `populated 0`. Nothing
//! here sends SIGTERM or waits for a graceful exit: that is a polite request,
//! not a stop.
//!
//! The no-agent path (`killpath stop` when the agent does not answer) is
//! `client::fallback`: it reads the agent's registry, so it sits above the
//! levels. Kernel side: the stop guard in `killpath-ebpf/src/stop.rs`.

use std::time::{Duration, Instant};

use nix::{sys::signal, unistd::Pid};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{error::Result, kernel::cgroup::Cgroup};

/// What a hard stop did, with its times measured from command receipt.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopReport {
    /// Tasks in the target when the stop began.
    pub tasks_at_start: usize,
    /// Tasks still alive when the stop gave up waiting. Must be 0.
    pub survivors: usize,
    /// Receipt to "no task of the target will run user code again": the
    /// kill write has returned, so every task has SIGKILL pending (it is
    /// handled before any return to user space) or is frozen.
    pub time_to_halt_us: u64,
    /// Receipt to the last task gone (`cgroup.events`: populated 0).
    pub time_to_empty_us: u64,
    /// `cgroup.kill` was used; false means the per-pid fallback walk.
    pub used_cgroup_kill: bool,
    /// `cgroup.freeze` was used.
    pub used_freeze: bool,
}

/// How long a stop waits for the cgroup to empty before reporting survivors.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Hard-stops `cg`. `received` is when the command arrived.
pub fn hard_stop(cg: &Cgroup, received: Instant, timeout: Duration) -> Result<StopReport> {
    let mut report = StopReport { tasks_at_start: cg.procs_recursive().len(), ..Default::default() };
    // Freezing a subtree freezes its descendants too (cgroup v2 freezer is
    // hierarchical), so one write covers nested cgroups.
    if cg.has_freeze() {
        cg.freeze(true)?;
        report.used_freeze = true;
    }
    if cg.has_kill() {
        cg.kill()?;
        report.used_cgroup_kill = true;
    } else {
        // Pre-5.14 kernels: signal every pid of the frozen subtree. Frozen
        // tasks cannot fork, and a fatal signal wakes a task out of the v2
        // freezer, so this walk converges; the eBPF guard catches the rest.
        kill_each(cg);
    }
    report.time_to_halt_us = micros(received);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if cg.wait_empty(left.min(Duration::from_millis(500)))? {
            break;
        }
        if left.is_zero() {
            break;
        }
        // Still populated after 500 ms: something raced in (e.g. moved in
        // from outside). Kill again; cheap and idempotent.
        if report.used_cgroup_kill {
            cg.kill()?;
        } else {
            kill_each(cg);
        }
    }
    report.time_to_empty_us = micros(received);
    report.survivors = cg.procs_recursive().len();
    if report.survivors > 0 {
        warn!(survivors = report.survivors, cgroup = %cg.path().display(), "hard stop left survivors");
    }
    Ok(report)
}

fn kill_each(cg: &Cgroup) {
    for pid in cg.procs_recursive() {
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
    }
}
