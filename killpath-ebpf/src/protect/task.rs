//! Protections `protect.signal` and `protect.ptrace`: no signal (kill,
//! tkill, pidfd_send_signal, SIGSTOP included) and no ptrace-class access
//! (PTRACE_ATTACH/SEIZE, /proc/PID/mem, process_vm_readv/writev,
//! pidfd_getfd: all go through ptrace_may_access) from a task inside a
//! target to killpath's processes, whose tgids the agent lists in
//! KP_PROTECTED_PIDS.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::protect;

use super::{current_target, offsets, refuse};
use crate::{kcgroup::read, maps::PROTECTED_PIDS};

/// Refuses protection `what` if `task` belongs to killpath and the current
/// task is inside a target.
#[inline(always)]
fn guard(task: u64, what: u32) -> i32 {
    let Some(o) = offsets() else { return 0 };
    let tgid = read::<i32>(task, o.task_tgid).unwrap_or(0) as u32;
    if tgid == 0 || PROTECTED_PIDS.get_ptr(tgid).is_none() {
        return 0;
    }
    match current_target() {
        Some((id, _)) => refuse(id, what),
        None => 0,
    }
}

/// security_task_kill(p, info, sig, cred). Signal 0 (an existence check)
/// stays allowed.
#[lsm(hook = "task_kill")]
pub fn kp_protect_task_kill(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    guard(ctx.arg(0), protect::SIGNAL)
}

/// security_ptrace_access_check(child, mode).
#[lsm(hook = "ptrace_access_check")]
pub fn kp_protect_ptrace_access(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    guard(ctx.arg(0), protect::PTRACE)
}
