//! Level 4, stop: SIGKILL any task of a stopped target that still runs.
//!
//! `cgroup.kill` (Linux 5.14) already kills tasks forked while the kill is in
//! flight, but a task can be moved into a stopped target later, and kernels
//! without `cgroup.kill` fall back to a pid walk that a fork bomb can race.
//! These raw tracepoints close both gaps from inside the kernel: a task of a
//! stopped target dies at its next syscall, fork, or context switch.
//!
//! Membership follows the task (`members.rs`): a marked task of a stopped
//! target dies here wherever it sits, and a marked task of an isolated
//! target dies here once it is outside its target's subtree.
use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use killpath_common::level;

use crate::{
    maps::{GUARD_KILLS, GUARD_KILLS_BY_TARGET, GUARD_OUTSIDE_KILLED_AT},
    members, targets,
};

const SIGKILL: u32 = 9;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn kp_guard_sys_enter(_ctx: RawTracePointContext) -> i32 {
    try_guard().unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn kp_guard_fork(_ctx: RawTracePointContext) -> i32 {
    try_guard().unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn kp_guard_switch(_ctx: RawTracePointContext) -> i32 {
    try_guard().unwrap_or(0)
}

#[inline(always)]
fn try_guard() -> Result<i32, i64> {
    // Hot path (every syscall and context switch on the host): one array
    // lookup and return while no target is stopped.
    let cfg = targets::config().ok_or(0i64)?;
    if cfg.stopped_targets == 0 && cfg.isolated_targets == 0 {
        return Ok(0);
    }
    if cfg.stopped_targets != 0 {
        if let Some((id, _)) = targets::of_current_with_id(cfg.depth_mask).filter(|(_, s)| s.level >= level::STOPPED) {
            kill_current(id, false);
            return Ok(0);
        }
    }
    // A member outside its target's cgroup: one or two hash lookups.
    let cur = bpf_get_current_pid_tgid();
    let Some(m) = members::of(cur as u32, (cur >> 32) as u32) else {
        return Ok(0);
    };
    // A released nested target's mark is its heir's (`members::resolve`).
    let Some((m, st)) = members::resolve(m) else {
        return Ok(0);
    };
    if st.level < level::ISOLATE {
        return Ok(0);
    }
    // SAFETY: helper without pointer arguments.
    let outside = unsafe { bpf_get_current_ancestor_cgroup_id(st.depth as i32) } != m.target;
    if st.level >= level::STOPPED || outside {
        kill_current(m.target, outside);
    }
    Ok(0)
}

/// SIGKILLs the current task and counts it, host-wide and for `target`
/// (the cgroup id the kill is charged to); for a task `outside` its
/// target's cgroup, the time too (`GUARD_OUTSIDE_KILLED_AT`).
#[inline(always)]
fn kill_current(target: u64, outside: bool) {
    // SAFETY: signals the current task only; the helper itself refuses
    // kernel threads and init.
    if unsafe { bpf_send_signal(SIGKILL) } == 0 {
        if let Some(kills) = GUARD_KILLS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer.
            unsafe { *kills += 1 };
        }
        count_for(target);
        if outside {
            killed_outside(target);
        }
    }
}

/// Records when a task of `target` was killed outside its cgroup, in this
/// CPU's slot: a task the stop's walk of the marks may no longer see (it
/// died first), which ran user code until this kill, so the stop's halt is
/// not reported before it (`stop::hard_stop_guarded` in the agent). Also
/// written for a task SIGKILLed already (its switches while it dies pass
/// here): a later time than its halt, never an earlier one.
#[inline(always)]
fn killed_outside(target: u64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(at) = GUARD_OUTSIDE_KILLED_AT.get_ptr_mut(target) {
        // SAFETY: this CPU's slot of a per-CPU value, no concurrent writer.
        unsafe { *at = now };
        return;
    }
    // The first on any CPU: as in `count_for`.
    if GUARD_OUTSIDE_KILLED_AT.insert(target, now, 1).is_err() {
        if let Some(at) = GUARD_OUTSIDE_KILLED_AT.get_ptr_mut(target) {
            // SAFETY: as above.
            unsafe { *at = now };
        }
    }
}

#[inline(always)]
fn count_for(target: u64) {
    if let Some(n) = GUARD_KILLS_BY_TARGET.get_ptr_mut(target) {
        // SAFETY: this CPU's slot of a per-CPU value, no concurrent writer.
        unsafe { *n += 1 };
        return;
    }
    // First kill for the target on any CPU. A per-CPU hash update from a
    // program writes this CPU's slot only; NOEXIST keeps another CPU's
    // concurrent first insert (then the slot exists: add to it).
    if GUARD_KILLS_BY_TARGET.insert(target, 1, 1).is_err() {
        if let Some(n) = GUARD_KILLS_BY_TARGET.get_ptr_mut(target) {
            // SAFETY: as above.
            unsafe { *n += 1 };
        }
    }
}
