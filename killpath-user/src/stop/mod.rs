//! Level 4, hard stop: kill every task of a target without its cooperation.
//!
//! Order matters: freeze first so a fork bomb stops multiplying, then
//! `cgroup.kill` (one write, SIGKILL to the whole subtree, forks in flight
//! included), then wait for `cgroup.events` to say `populated 0`. Nothing
//! here sends SIGTERM or waits for a graceful exit: that is a polite request,
//! not a stop.
//!
//! Membership follows the task: besides the cgroup, the stop SIGKILLs every
//! process marked as the target's (`kernel::members`) wherever it moved,
//! and counts it as a survivor while it lives: "0 survivors" means no
//! member of the target is alive anywhere, not only that the cgroup is empty.
//!
//! The no-agent path (`killpath stop` when the agent does not answer) is
//! `client::fallback`: it reads the agent's registry, so it sits above the
//! levels. Kernel side: the stop guard in `killpath-ebpf/src/stop.rs`.

use std::time::{Duration, Instant};

use nix::{sys::signal, unistd::Pid};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    error::Result,
    kernel::{cgroup::Cgroup, members::MemberMaps},
};

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
    /// Processes marked as the target's that sat outside its cgroup when
    /// the stop began (they had escaped).
    #[serde(default)]
    pub marked_outside: usize,
    /// Marked processes SIGKILLed by pidfd (outside the cgroup, or racing it).
    #[serde(default)]
    pub marked_killed: usize,
    /// Whether marks were consulted (false: the membership maps are
    /// missing, and only the cgroup was stopped).
    #[serde(default)]
    pub membership: bool,
}

/// The marks a stop acts on: the maps, and the target's cgroup id with
/// the ids of targets nested in it.
pub type Marked<'a> = Option<(&'a MemberMaps, &'a [u64])>;

/// Marked processes of `targets` that are still alive.
fn marked_alive(m: &MemberMaps, targets: &[u64]) -> std::collections::BTreeSet<u32> {
    m.of_targets(targets)
        .into_iter()
        .filter(|(tid, mk)| std::path::Path::new(&format!("/proc/{}/task/{tid}", mk.tgid)).exists())
        .map(|(_, mk)| mk.tgid)
        .collect()
}

/// How long a stop waits for the cgroup to empty before reporting survivors.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Hard-stops `cg`. `received` is when the command arrived.
pub fn hard_stop(cg: &Cgroup, received: Instant, timeout: Duration) -> Result<StopReport> {
    hard_stop_marked(cg, None, received, timeout)
}

/// Hard-stops `cg` and every process marked as the target's (`marked`).
pub fn hard_stop_marked(cg: &Cgroup, marked: Marked<'_>, received: Instant, timeout: Duration) -> Result<StopReport> {
    let procs: std::collections::BTreeSet<u32> = cg.procs_recursive().into_iter().map(|p| p as u32).collect();
    let mut report = StopReport { tasks_at_start: procs.len(), membership: marked.is_some(), ..Default::default() };
    let mut killed = std::collections::BTreeSet::new();
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
    // Members outside the cgroup (escaped, or born outside by clone3):
    // SIGKILL through pidfds. The guard kills them too at their next
    // context switch now that the target is stopped. Read after the
    // kill, so the map walk does not delay the freeze; the processes of
    // the cgroup got their SIGKILL from cgroup.kill already.
    let mut outside = std::collections::BTreeSet::new();
    if let Some((m, ids)) = marked {
        let marks: Vec<(u32, killpath_common::Member)> = m.of_targets(ids).into_iter().filter(|(_, mk)| !procs.contains(&mk.tgid)).collect();
        killed.extend(m.kill_marks(&marks));
        outside = marks.iter().map(|(_, mk)| mk.tgid).collect();
    }
    report.time_to_halt_us = micros(received);
    // Not in the cgroup at the start: forked inside since, or outside it
    // (escaped). Only the latter count; a killed task keeps its cgroup in
    // /proc until it is reaped.
    if !outside.is_empty() {
        let mount = crate::kernel::cgroup::cgroup2_mount().ok();
        let rel = mount.as_deref().and_then(|m| cg.path().strip_prefix(m).ok()).map(|r| format!("/{}", r.display()));
        report.marked_outside = outside
            .iter()
            .filter(|p| {
                let at = crate::kernel::cgroup::cgroup_of(**p as i32).ok();
                matches!((&at, &rel), (Some(a), Some(r)) if a != r && !a.starts_with(&format!("{r}/")))
            })
            .count();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let members_left = marked.map(|(m, ids)| marked_alive(m, ids)).unwrap_or_default();
        // Poll briefly while marked processes are dying: their exit is not
        // visible in cgroup.events.
        let slice = if members_left.is_empty() { Duration::from_millis(500) } else { Duration::from_millis(10) };
        if cg.wait_empty(left.min(slice))? && members_left.is_empty() {
            break;
        }
        if left.is_zero() {
            break;
        }
        if let Some((m, ids)) = marked {
            killed.extend(m.kill(ids));
        }
        if !members_left.is_empty() && cg.populated().ok() == Some(false) {
            continue;
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
    let mut left: std::collections::BTreeSet<u32> = cg.procs_recursive().into_iter().map(|p| p as u32).collect();
    if let Some((m, ids)) = marked {
        left.extend(marked_alive(m, ids));
    }
    report.marked_killed = killed.len();
    report.survivors = left.len();
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
