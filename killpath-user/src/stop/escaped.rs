//! Escapes during a halt. A task moved out of the target's cgroup through
//! `cgroup.procs` (by any writer outside it) after `frozen 1` leaves the
//! frozen cgroup: it thaws where it lands and runs user code, and the kill
//! write that follows misses it (it is no longer in the cgroup). It dies
//! to its membership mark (the stop SIGKILLs every mark, the guard kills
//! it at its next switch), so no halt may be reported before that kill.
//!
//! The kernel counts every such move per target (`KP_ESCAPES`, at the
//! `cgroup_attach_task` tracepoint, see `killpath-ebpf/src/members.rs`):
//! the count is read before the halt and again once the kill is written
//! (a task with SIGKILL pending runs no user code, so a move after the
//! write does not matter).
//!
//! The same count tells the stop whether to signal the marks before the
//! cgroup empties (a mark outside runs user code until its own SIGKILL):
//! the kernel also counts a child born outside (clone3 with
//! CLONE_INTO_CGROUP), the agent a task that left while it marked it
//! (`MemberMaps::mark_tasks`) and an older generation's counts
//! (`MemberMaps::copy_from`). The walk after the cgroup empties is made
//! whatever the count, as defence in depth: the ways out a review and
//! testing found no count saw (a process whose leader exited first, a
//! thread's exec, threads keeping an outer target's mark, the agent's pid
//! reused while it is down) are fixed in the kernel hooks now, and any
//! other would be caught there; the halt is reported no earlier than that
//! kill.
use super::Marked;

/// The escapes counted so far for the target and its nested targets (0
/// without membership maps: nothing is counted then).
pub(super) fn count(marked: Marked<'_>) -> u64 {
    marked.map_or(0, |(m, ids)| m.escapes_of(ids))
}

/// Escapes counted since `before` (see [`count`]).
pub(super) fn since(marked: Marked<'_>, before: u64) -> u64 {
    count(marked).saturating_sub(before)
}
