//! Level 4, hard stop: kill every task of a target without its cooperation.
//!
//! Two times are reported from command receipt. **Halt**: the moment no
//! task of the target can run user code again, as observed, and
//! [`Halt`] says by which observation: cgroup.events said `frozen 1`
//! (every task is parked at its return to user space, new ones are born
//! frozen), or the `cgroup.kill` write returned (every task has SIGKILL
//! pending, which is handled before any return to user space; forks in
//! flight are killed too, CGRP_KILL is checked in `cgroup_post_fork`).
//! **Empty**: cgroup.events says `populated 0` (and every marked process
//! outside the cgroup is gone).
//!
//! The order depends on the target's size, read first (one page at most):
//! - small (≤ [`SMALL_TARGET`] processes): `cgroup.kill` alone. The write
//!   costs microseconds for a few tasks and is fork-safe, so a freeze
//!   first would only add a wait for `frozen 1`, a notification the kernel
//!   may defer 10 ms (see `pidfds`). The exits are awaited on pidfds
//!   opened before the kill.
//! - large (a fork bomb): `cgroup.freeze`, wait for `frozen 1` (halt at the
//!   freeze floor: the kill write takes ~70 µs a task while they run),
//!   at most [`FREEZE_WAIT`], because a task in an uninterruptible or
//!   killable sleep (D state, e.g. a FUSE request nobody answers) never
//!   freezes; then `cgroup.kill`, and halt is the kill write if `frozen 1`
//!   was not seen (or anyone wrote `cgroup.freeze` between our freeze and
//!   the kill: a thaw, even one undone at once). Other orders
//!   ([`StopOrder`]) exist to be measured against it (`halt`).
//!
//! A marked process outside the cgroup when the stop begins runs until its
//! own SIGKILL, after the kill write, or until the guard's at its next
//! context switch once armed: the halt is then reported no earlier than
//! that SIGKILL (`halt_waited_for_marked`; the guard records when it
//! killed one, see `halt_after_guard_outside`).
//!
//! The kernel guard is armed through `arm` once the target is halted.
//!
//! Nothing here sends SIGTERM or waits for a graceful exit: that is a
//! polite request, not a stop.
//!
//! Membership follows the task: besides the cgroup, the stop SIGKILLs every
//! process marked as the target's (`kernel::members`) wherever it moved,
//! and counts it as a survivor while it lives: "0 survivors" means no
//! member of the target is alive anywhere, not only that the cgroup is empty.
//!
//! The no-agent path (`killpath stop` when the agent does not answer) is
//! `client::fallback`: it reads the agent's registry, so it sits above the
//! levels. Kernel side: the stop guard in `killpath-ebpf/src/stop.rs`.
mod escaped;
mod halt;
pub mod marks;
mod order;
mod pidfds;
pub mod prepared;

pub use order::StopOrder;

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
    /// Processes in the target when the stop listed them (a small target's
    /// while its intent was written, see `prepared`).
    pub tasks_at_start: usize,
    /// Tasks still alive when the stop gave up waiting. Must be 0.
    pub survivors: usize,
    /// Receipt to "no task of the target will run user code again", as
    /// observed by `halt`.
    pub time_to_halt_us: u64,
    /// What ended the halt.
    #[serde(default)]
    pub halt: Halt,
    /// The freeze was written but `frozen 1` was not seen within
    /// [`FREEZE_WAIT`] (a task that cannot freeze): the kill ended the halt.
    #[serde(default)]
    pub freeze_timed_out: bool,
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
    /// The order the stop took ([`StopOrder`]): `kill` (a small target:
    /// `cgroup.kill` alone, the guard after it), `freeze-wait-kill`,
    /// `kill-guard-first` or `freeze-kill-race`.
    #[serde(default)]
    pub order: String,
    /// Marked processes SIGKILLed by pidfd (outside the cgroup, or racing it).
    #[serde(default)]
    pub marked_killed: usize,
    /// The stop watched `cgroup.freeze` for writes behind its freeze
    /// (false: the watch could not be set, so `frozen 1` ended no halt).
    #[serde(default)]
    pub freeze_watched: bool,
    /// A marked process ran outside the cgroup when the stop began: the
    /// halt is reported no earlier than its SIGKILL, the stop's or the
    /// guard's (it ran user code until then, whatever froze inside the
    /// cgroup). `marked_outside` counts those the stop itself found alive.
    #[serde(default)]
    pub halt_waited_for_marked: bool,
    /// Whether marks were consulted (false: the membership maps are
    /// missing, and only the cgroup was stopped).
    #[serde(default)]
    pub membership: bool,
    /// Escapes of the target's tasks (a move out through `cgroup.procs`)
    /// counted by the kernel between the start of the halt and the kill
    /// write: the escaped ran outside, so `frozen 1` did not halt them and
    /// the halt is reported no earlier than their SIGKILL (see `escaped`).
    #[serde(default)]
    pub escapes_during_halt: u64,
    /// How the marks were checked once the cgroup was empty (the last
    /// check): `early`, the target's marks read beside the stop, each
    /// looked up again (no mark of the target was written since), or
    /// `all`, every mark on the host read (see `marks`); empty without
    /// membership.
    #[serde(default)]
    pub marks_checked: String,
    /// Receipt to the cgroup first seen empty (`populated 0`), before the
    /// check of the marks that ends `time_to_empty_us`.
    #[serde(default)]
    pub cgroup_empty_us: u64,
    /// How long the stop then waited for the marks read beside it
    /// (`marks::Pending::ready`), the first time it asked.
    #[serde(default)]
    pub marks_wait_us: u64,
    /// Receipt to the moment that read was asked for (0: none was).
    #[serde(default)]
    pub marks_asked_us: u64,
    /// Receipt to the start of that read, when it came (0: none came;
    /// `marks_checked` says whether it was then used).
    #[serde(default)]
    pub marks_read_from_us: u64,
    /// Receipt to the end of that read.
    #[serde(default)]
    pub marks_read_to_us: u64,
}

/// The observation that ended a stop's halt.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Halt {
    /// cgroup.events said `frozen 1`.
    Frozen,
    /// The `cgroup.kill` write returned: every task has SIGKILL pending
    /// (and every marked process outside the cgroup was sent SIGKILL, by
    /// the stop or by the kernel guard).
    #[default]
    KillWritten,
    /// No `cgroup.kill` (before Linux 5.14): the per-pid SIGKILL walk ended.
    Signalled,
}

/// Targets with at most this many processes are stopped by `cgroup.kill`
/// alone and awaited on pidfds; larger ones are frozen first.
pub const SMALL_TARGET: usize = 64;

/// How long a stop waits for `frozen 1` before killing anyway. A fork bomb
/// of ~1,300 tasks freezes in 5–10 ms on the bench machine (40 ms under load).
pub const FREEZE_WAIT: Duration = Duration::from_millis(50);

/// The order [`StopOrder::Auto`] takes for a large target: the fastest
/// halt that leaves 0 survivors of a racing fork bomb in the bench
/// (section hard_stop_fork_bomb, where every order runs side by side),
/// which depends on the class of the thread writing `cgroup.kill`.
/// - Real-time (the stop thread as SCHED_FIFO, `kernel::priority`): guard
///   first, then the kill write. Nothing on the host preempts the write,
///   and the guard stops the bomb's forks as the write walks it: the write
///   returned after ~4.5 ms for ~1,300 tasks against ~9 ms for the bare
///   freeze floor (bench of 2026-12-03; empty 1.0× the bare kill).
/// - Ordinary (nice -20, the class refused): freeze, wait for `frozen 1`,
///   kill. Here the kill write shares the CPU with the running bomb and
///   took ~75 ms (8.75× the freeze floor, bench of 2026-12-02), while the
///   freeze halts at the floor.
fn large_order() -> StopOrder {
    if crate::kernel::priority::calling_thread_is_realtime() {
        StopOrder::KillGuardFirst
    } else {
        StopOrder::FreezeWaitKill
    }
}

/// The marks a stop acts on: the maps, and the target's cgroup id with
/// the ids of targets nested in it.
pub type Marked<'a> = Option<(&'a MemberMaps, &'a [u64])>;

/// A marked process ran user code outside the cgroup until the kill just
/// sent: the halt is reported no earlier than now, and, if `outside_froze`
/// (it was outside while `frozen 1` was read), not as `frozen`.
fn halt_at_marked_kill(report: &mut StopReport, received: Instant, outside_froze: bool) {
    report.time_to_halt_us = report.time_to_halt_us.max(micros(received));
    report.halt_waited_for_marked = true;
    if outside_froze && report.halt == Halt::Frozen {
        report.halt = Halt::KillWritten;
    }
}

/// A marked process outside the cgroup that the guard killed since the stop
/// began (at its next context switch once armed: the agent arms it right
/// after the kill write, the CLI's direct stop before the stop) ran user
/// code until that kill, and the stop's walk of the marks, later, may not
/// see it (it died first): the halt is reported no earlier than that kill,
/// whose time the guard records (`KP_GUARD_OUTSIDE_KILLED_AT`, the clock
/// of `Instant`). Seen in CI, 2026-12-04: a busy canary outside,
/// `marked_outside` 0.
fn halt_after_guard_outside(report: &mut StopReport, m: &MemberMaps, ids: &[u64], received: Instant) {
    let Some(at) = m.guard_killed_outside_at(ids) else { return };
    let began = crate::kernel::clock::instant_ns(received);
    if at > began {
        halt_at_guard_kill(report, (at - began) / 1000);
    }
}

/// The guard's kill of a marked process outside the cgroup, `us` after
/// receipt: the halt is reported no earlier, and, when that kill is what
/// ends it, not as `frozen` (the freeze did not hold that process).
fn halt_at_guard_kill(report: &mut StopReport, us: u64) {
    if us > report.time_to_halt_us && report.halt == Halt::Frozen {
        report.halt = Halt::KillWritten;
    }
    report.time_to_halt_us = report.time_to_halt_us.max(us);
    report.halt_waited_for_marked = true;
}

/// How long a small target's stop waits on its pidfds before the loop that
/// kills again (a process killed dies in well under a millisecond).
const PIDFD_WAIT: Duration = Duration::from_secs(1);

/// How long a stop waits for the cgroup to empty before reporting survivors.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

fn micros(since: Instant) -> u64 {
    micros_between(since, Instant::now())
}

/// Microseconds from `from` to `to` (0 when `to` is earlier).
fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

/// Hard-stops `cg`. `received` is when the command arrived.
pub fn hard_stop(cg: &Cgroup, received: Instant, timeout: Duration) -> Result<StopReport> {
    hard_stop_marked(cg, None, received, timeout)
}

/// Hard-stops `cg` and every process marked as the target's (`marked`).
pub fn hard_stop_marked(cg: &Cgroup, marked: Marked<'_>, received: Instant, timeout: Duration) -> Result<StopReport> {
    hard_stop_guarded(cg, marked, None, StopOrder::Auto, &mut || Ok(()), received, timeout)
}

/// Hard-stops `cg` and every process marked as the target's (`marked`);
/// `arm` runs once, to arm the kernel guard for what comes later (a task
/// moved into the stopped target): right after the kill write, or, for a
/// large target, as its [`StopOrder`] says. `order` other than `Auto` is
/// followed whatever the target's size (the bench compares them).
/// `early`: the marks of `marked`'s targets as another thread reads them
/// meanwhile ([`marks`]), for the check after the cgroup empties.
pub fn hard_stop_guarded(
    cg: &Cgroup,
    marked: Marked<'_>,
    early: Option<&marks::Pending>,
    order: StopOrder,
    arm: &mut dyn FnMut() -> Result<()>,
    received: Instant,
    timeout: Duration,
) -> Result<StopReport> {
    let mut report = StopReport { membership: marked.is_some(), ..Default::default() };
    // Made while the intent was written, when the agent's preparation thread could
    // (`prepared`), with the escape count read before its listing; else
    // now, the count first.
    let (small, escapes_before) = match early.filter(|_| order == StopOrder::Auto).and_then(|p| p.small(cg)) {
        Some(prepared) => prepared,
        None => {
            let escapes_before = escaped::count(marked);
            (if order == StopOrder::Auto { prepared::small(cg) } else { None }, escapes_before)
        }
    };
    tracing::debug!(small = small.is_some(), at_us = micros(received), "hard stop: sized");
    let (procs, mut watch) = match small {
        Some(prepared::Small { pids, watch, kill: mut kill_file }) => {
            report.order = "kill".to_owned();
            report.halt = match kill_file.as_mut().map(|f| cg.kill_through(f)) {
                Some(Ok(())) => {
                    report.used_cgroup_kill = true;
                    Halt::KillWritten
                }
                Some(Err(e)) => {
                    warn!(cgroup = %cg.path().display(), "cgroup.kill failed, killing pid by pid: {e}");
                    kill(cg, &mut report)?
                }
                None => kill(cg, &mut report)?,
            };
            report.time_to_halt_us = micros(received);
            watch.kill_and_hurry();
            arm_after_halt(arm);
            (pids, Some(watch))
        }
        None => {
            let order = if order == StopOrder::Auto { large_order() } else { order };
            report.order = order.name().to_owned();
            (halt::halt_large(cg, order, &mut report, arm, received)?, None)
        }
    };
    let procs: std::collections::BTreeSet<u32> = procs.into_iter().map(|p| p as u32).collect();
    report.tasks_at_start = procs.len();
    // Moved out since the halt began: listed in `procs`, missed by the
    // kill write, running outside (see `escaped`).
    report.escapes_during_halt = escaped::since(marked, escapes_before);
    let mut killed = std::collections::BTreeSet::new();
    // Members outside the cgroup (escaped, or born outside by clone3):
    // SIGKILL through pidfds. The guard kills them too at their next
    // context switch now that the target is stopped. Read after the
    // kill, so the map walk does not delay it; the processes of the
    // cgroup got their SIGKILL from cgroup.kill already.
    // No escape was ever counted for these targets (the kernel counts
    // every move out and every birth outside, see `escaped`): every mark
    // is inside the cgroup, which the kill write covered, so the walk of
    // every mark (~0.3 ms: the map's 65,536 buckets, plus each mark) is
    // left to the check after empty, which signals any mark still alive
    // and then reports the halt no earlier than that.
    let escapes_ever = escapes_before + report.escapes_during_halt;
    // Whether the guard's kills outside the cgroup were looked at (see
    // `halt_after_guard_outside`).
    let mut guard_checked = false;
    if let Some((m, ids)) = marked.filter(|_| escapes_ever > 0) {
        let all: Vec<(u32, killpath_common::Member)> = m.of_targets(ids);
        // A small target's marks are all signalled: a process listed at
        // the size check may have been moved out of the cgroup before the
        // kill write (cgroup.kill would miss it). Cheap at this size.
        let to_kill: Vec<(u32, killpath_common::Member)> = if watch.is_some() || report.escapes_during_halt > 0 {
            all.clone()
        } else {
            all.iter().filter(|(_, mk)| !procs.contains(&mk.tgid)).copied().collect()
        };
        let outside: std::collections::BTreeSet<u32> = all.iter().filter(|(_, mk)| !procs.contains(&mk.tgid)).map(|(_, mk)| mk.tgid).collect();
        // Which of those not listed in the cgroup run outside it now (read
        // before their kill: a dead process has no cgroup to tell): they
        // ran user code until the kill below, so the halt is not reported
        // before it. Forks since the listing are inside (killed already).
        let rel = if outside.is_empty() { None } else { target_rel(cg) };
        report.marked_outside = outside.iter().filter(|p| outside_of(**p, rel.as_deref())).count();
        killed.extend(m.kill_marks(&to_kill));
        if report.marked_outside > 0 || report.escapes_during_halt > 0 {
            // `frozen 1` did not cover a task that left the cgroup after it.
            let escaped_while_frozen = report.escapes_during_halt > 0;
            halt_at_marked_kill(&mut report, received, escaped_while_frozen);
        }
        // Every mark outside is signalled now: a guard kill after this is
        // of a task that runs no more user code anyway.
        halt_after_guard_outside(&mut report, m, ids, received);
        guard_checked = true;
    }
    let deadline = Instant::now() + timeout;
    // Taken once ready; until then (and when stale) every mark is read.
    let mut snap: Option<crate::kernel::mark_snapshot::MarkSnapshot> = None;
    // The loop ended on an empty cgroup and no marked process alive: the
    // survivors below need no second check of the marks, a moment later.
    // A mark written since comes from a move into the (now stopped)
    // cgroup: the guard kills that task, and one moved out again at once is
    // an escape, which the agent's escape handling kills.
    let mut members_clear = false;
    // Only the first wait for the marks read is reported.
    let mut first_ask = true;
    // Checks made again for an unsettled answer (`marks::alive`): an exec
    // moves its mark within its own syscall; a mark that stays behind (an
    // exec that failed after de_thread, its process id reused) must not
    // hold every stop of the target.
    let mut settle_checks = 3;
    if let Some(w) = watch.as_mut() {
        // Bounded: a process that does not die at once (in D state, or an
        // unrelated one that reused a listed pid) is left to the loop
        // below, which kills and waits again.
        let all = w.wait_all(deadline.min(Instant::now() + PIDFD_WAIT));
        tracing::debug!(all, at_us = micros(received), "hard stop: pidfds");
        if !all {
            w.unhurry();
        }
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // The cgroup first, woken by its notification: the marked tasks in
        // it die with it, so the marks are walked only once it is empty
        // (a walk, and a kill again, every few ms while a bomb of
        // thousands dies slowed its dying).
        let empty = cg.wait_empty(left.min(Duration::from_millis(500)))?;
        if empty && report.cgroup_empty_us == 0 {
            report.cgroup_empty_us = micros(received).max(1);
        }
        if empty && snap.is_none() {
            // Timed once: a later pass asks again (the snapshot may have
            // come since) but does not wait again (`Pending::ready`).
            let waited = Instant::now();
            snap = early.and_then(marks::Pending::ready);
            if std::mem::take(&mut first_ask) {
                report.marks_wait_us = micros(waited);
                report.marks_asked_us = early.map_or(0, |p| micros_between(received, p.asked()));
            }
            if let Some((from, to)) = snap.as_ref().and_then(|s| s.read_span()) {
                (report.marks_read_from_us, report.marks_read_to_us) = (micros_between(received, from), micros_between(received, to));
            }
        }
        let mut members_left = std::collections::BTreeSet::new();
        let mut unsettled = false;
        if let Some((m, ids)) = marked.filter(|_| empty) {
            let checked;
            (members_left, checked, unsettled) = marks::alive(m, ids, snap.as_ref(), early.and_then(marks::Pending::index));
            checked.clone_into(&mut report.marks_checked);
        }
        if empty && members_left.is_empty() {
            // A thread's mark left behind by an exec in progress (see
            // `marks::alive`): checked again once it has moved.
            if unsettled && settle_checks > 0 {
                settle_checks -= 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            members_clear = marked.is_some();
            break;
        }
        if left.is_zero() {
            break;
        }
        if let Some((m, ids)) = marked {
            let signalled = m.kill(ids);
            // Alive with the cgroup empty and never signalled before: a
            // mark outside the cgroup that ran user code until now (the
            // walk before the kill was skipped, or it came in since): the
            // halt is not reported before this kill.
            let fresh = signalled.difference(&killed).filter(|p| members_left.contains(p)).count();
            if empty && fresh > 0 {
                report.marked_outside += fresh;
                halt_at_marked_kill(&mut report, received, true);
            }
            killed.extend(signalled);
        }
        if empty {
            // Marked processes outside, dying: their exit is not visible
            // in cgroup.events. A short pause between walks of the marks.
            std::thread::sleep(Duration::from_millis(1));
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
    if let Some((m, ids)) = marked.filter(|_| !guard_checked) {
        halt_after_guard_outside(&mut report, m, ids, received);
    }
    // A target stopped by its kill alone is frozen now, off the measured
    // path: a task moved in later is born frozen, and its freezing (a
    // wake-up and a switch) is what lets the guard kill even a sleeper.
    if !report.used_freeze && cg.has_freeze() {
        match cg.freeze(true) {
            Ok(()) => report.used_freeze = true,
            Err(e) => tracing::debug!(cgroup = %cg.path().display(), "hard stop: freeze after empty: {e}"),
        }
    }
    let mut left: std::collections::BTreeSet<u32> = cg.procs_recursive().into_iter().map(|p| p as u32).collect();
    if let Some((m, ids)) = marked.filter(|_| !members_clear) {
        let (alive, checked, _) = marks::alive(m, ids, snap.as_ref(), early.and_then(marks::Pending::index));
        left.extend(alive);
        checked.clone_into(&mut report.marks_checked);
    }
    report.marked_killed = killed.len();
    report.survivors = left.len();
    if report.survivors > 0 {
        warn!(survivors = report.survivors, cgroup = %cg.path().display(), "hard stop left survivors");
    }
    Ok(report)
}

/// The target's cgroup as /proc/PID/cgroup shows it (`/a/b`), if its
/// path is on the cgroup2 mount.
fn target_rel(cg: &Cgroup) -> Option<String> {
    let mount = crate::kernel::cgroup::cgroup2_mount().ok()?;
    cg.path().strip_prefix(&mount).ok().map(|r| format!("/{}", r.display()))
}

/// Whether process `pid` lives outside the target's subtree `rel` (false
/// when it is gone, or the target's place is unknown).
fn outside_of(pid: u32, rel: Option<&str>) -> bool {
    let (Some(r), Ok(at)) = (rel, crate::kernel::cgroup::cgroup_of(pid as i32)) else { return false };
    at != r && !at.starts_with(&format!("{r}/"))
}

/// SIGKILL to the whole subtree: `cgroup.kill` when the kernel has it,
/// else pid by pid (pre-5.14: frozen tasks cannot fork, and a fatal signal
/// wakes a task out of the v2 freezer, so the walk converges; the eBPF
/// guard catches the rest).
/// Returns what its return means for the halt.
fn kill(cg: &Cgroup, report: &mut StopReport) -> Result<Halt> {
    if cg.has_kill() {
        match cg.kill() {
            Ok(()) => {
                report.used_cgroup_kill = true;
                return Ok(Halt::KillWritten);
            }
            // The write refused (e.g. a mount over the file): every pid
            // of the cgroup is signalled instead, and the guard is armed.
            Err(e) => warn!(cgroup = %cg.path().display(), "cgroup.kill failed, killing pid by pid: {e}"),
        }
    }
    kill_each(cg);
    Ok(Halt::Signalled)
}

/// Arms the guard once the target is halted. A failure does not stop the
/// stop (the kill still goes out); the caller arms again when it sees the
/// guard was not armed.
fn arm_after_halt(arm: &mut dyn FnMut() -> Result<()>) {
    if let Err(e) = arm() {
        warn!("hard stop: arming the guard failed, the kill goes on: {e}");
    }
}

fn kill_each(cg: &Cgroup) {
    for pid in cg.procs_recursive() {
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_kill_after_the_freeze_ends_the_halt_and_is_not_reported_as_frozen() {
        let mut r = StopReport { time_to_halt_us: 300, halt: Halt::Frozen, ..StopReport::default() };
        halt_at_guard_kill(&mut r, 900);
        assert_eq!((r.time_to_halt_us, r.halt, r.halt_waited_for_marked), (900, Halt::KillWritten, true));
    }

    #[test]
    fn a_guard_kill_before_the_freeze_leaves_the_frozen_halt() {
        let mut r = StopReport { time_to_halt_us: 300, halt: Halt::Frozen, ..StopReport::default() };
        halt_at_guard_kill(&mut r, 100);
        assert_eq!((r.time_to_halt_us, r.halt, r.halt_waited_for_marked), (300, Halt::Frozen, true));
    }
}
