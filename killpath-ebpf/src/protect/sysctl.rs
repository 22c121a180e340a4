//! Protection `protect.sysctl`: no write to `kernel.pid_max` or
//! `kernel.threads-max` from inside a target. The agent sizes the
//! membership map (`KP_MEMBERS`, one mark a task) from those two limits
//! when it creates it (`marks_capacity`): a root task that raised them
//! could then start more tasks than there are marks, and a task born
//! unmarked leaves its cgroup unseen and outlives a stop that reports 0
//! survivors (the hole `marks_capacity` closed for the limits as they
//! were).
//!
//! A cgroup sysctl program (BPF_CGROUP_SYSCTL, Linux 5.2), attached to
//! each target's cgroup like the isolation's device hook: the kernel runs
//! it from `proc_sys_call_handler` for every read and write of a
//! /proc/sys file by a task in the cgroup's subtree, before the handler,
//! so a refused write changes nothing. It needs no BPF LSM: on in every
//! kernel that loads it. Writes from outside every target (the operator's
//! `sysctl -w`) are not seen by it.
use aya_ebpf::{helpers::bpf_sysctl_get_name, macros::cgroup_sysctl, programs::SysctlContext};
use killpath_common::protect;

use super::{current_target, refuse};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// The sysctls refused, as `bpf_sysctl_get_name` spells them (the full
/// name, from the /proc/sys root).
const PID_MAX: &[u8] = b"kernel/pid_max";
const THREADS_MAX: &[u8] = b"kernel/threads-max";

/// Room for the longer name, its NUL, and one byte more: a longer name
/// (`kernel/pid_max_x`) fills the buffer and cannot compare equal.
const NAME_LEN: usize = 20;

#[cgroup_sysctl]
pub fn kp_protect_sysctl(ctx: SysctlContext) -> i32 {
    try_sysctl(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_sysctl(ctx: &SysctlContext) -> Result<i32, i32> {
    // SAFETY: ctx.sysctl is the kernel-provided struct bpf_sysctl.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return Ok(ALLOW);
    }
    let mut name = [0u8; NAME_LEN];
    // SAFETY: the helper writes at most NAME_LEN bytes (NUL-terminated,
    // truncated with -E2BIG when longer) into the stack buffer. Flags 0:
    // the full name, not the base name (`pid_max` alone could be another
    // directory's).
    let n = unsafe { bpf_sysctl_get_name(ctx.sysctl, name.as_mut_ptr().cast(), NAME_LEN as u64, 0) };
    if n < 0 {
        return Ok(ALLOW);
    }
    if !(is(&name, PID_MAX) || is(&name, THREADS_MAX)) {
        return Ok(ALLOW);
    }
    match current_target() {
        Some((id, _)) => {
            // `refuse` counts and samples it; its -EPERM is an LSM's
            // answer, a sysctl program's is 0.
            let _ = refuse(id, protect::SYSCTL);
            Ok(REFUSE)
        }
        None => Ok(ALLOW),
    }
}

/// Whether the NUL-terminated `buf` holds exactly `want`.
#[inline(always)]
fn is(buf: &[u8; NAME_LEN], want: &[u8]) -> bool {
    if want.len() >= NAME_LEN || buf[want.len()] != 0 {
        return false;
    }
    let mut i = 0;
    while i < want.len() {
        if buf[i] != want[i] {
            return false;
        }
        i += 1;
    }
    true
}
