//! Protection `protect.sysctl`: no write, from inside a target, to the
//! sysctls that would undo the kill path from outside it:
//! - `kernel.pid_max` and `kernel.threads-max`: the agent sizes the
//!   membership map (`KP_MEMBERS`, one mark a task) from them when it
//!   creates it (`marks_capacity`); a root task that raised them could
//!   start more tasks than there are marks, and a task born unmarked
//!   leaves its cgroup unseen and outlives a stop that reports 0
//!   survivors;
//! - `kernel.core_pattern`, `kernel.modprobe`, `kernel.poweroff_cmd`,
//!   `kernel.hotplug` and `kernel.usermodehelper.*`: the commands the
//!   kernel runs itself (a `|helper` core pattern at the next crash, the
//!   modprobe path at the next request for a missing module), as root, from
//!   a kworker, in the root cgroup: outside every target, where none of
//!   killpath's hooks apply;
//! - `kernel.ns_last_pid`: the last pid handed out in the writer's pid
//!   namespace. From the host's, a root task chooses which number the
//!   host's next task gets, and so which process holds a number the agent
//!   acts on later (an escaped process is moved back by its number: the
//!   agent checks its mark with a pidfd open first, see
//!   `kernel::members::with_pidfd_if_marked`). Only a writer inside a
//!   target is refused: a task that left its cgroup is outside this
//!   program's reach (without BPF LSM it can leave).
//!
//! A cgroup sysctl program (BPF_CGROUP_SYSCTL, Linux 5.2), attached to
//! each target's cgroup like the isolation's device hook: the kernel runs
//! it from `proc_sys_call_handler` for every read and write of a
//! /proc/sys file by a task in the cgroup's subtree, before the handler,
//! so a refused write changes nothing. The name it checks is the sysctl's
//! own (`bpf_sysctl_get_name`), whatever procfs mount the write came
//! through. It needs no BPF LSM, but without it a root task can leave the
//! cgroup first (the agent moves it back, afterwards) or detach the link,
//! as it can undo the rest; writes from outside every target (the
//! operator's `sysctl -w`) are not seen by it.
use aya_ebpf::{helpers::bpf_sysctl_get_name, macros::cgroup_sysctl, programs::SysctlContext};
use killpath_common::protect;

use super::{current_target, refuse};
// The cgroup programs' verdicts (`abi`).
use crate::abi::{CGROUP_ALLOW as ALLOW, CGROUP_REFUSE as REFUSE};

/// The sysctls refused, as `bpf_sysctl_get_name` spells them (the full
/// name, from the /proc/sys root), and whether a name only has to start
/// with the entry (`kernel/usermodehelper/bset`, `.../inheritable`).
const REFUSED: [(&[u8], bool); 8] = [
    (b"kernel/pid_max", false),
    (b"kernel/ns_last_pid", false),
    (b"kernel/threads-max", false),
    (b"kernel/core_pattern", false),
    (b"kernel/modprobe", false),
    (b"kernel/poweroff_cmd", false),
    (b"kernel/hotplug", false),
    (b"kernel/usermodehelper/", true),
];

/// Room for the longest name refused (`kernel/usermodehelper/inheritable`)
/// and its NUL; a longer one comes back truncated (-E2BIG), and is none
/// of them.
const NAME_LEN: usize = 40;

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
    if !refused(&name) {
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

/// Whether `name` is one of [`REFUSED`]; stops at the first match.
#[inline(always)]
fn refused(name: &[u8; NAME_LEN]) -> bool {
    for (want, prefix) in REFUSED {
        if is(name, want, prefix) {
            return true;
        }
    }
    false
}

/// Whether the NUL-terminated `buf` holds exactly `want` (or starts
/// with it, `prefix`).
#[inline(always)]
fn is(buf: &[u8; NAME_LEN], want: &[u8], prefix: bool) -> bool {
    if want.len() >= NAME_LEN || (!prefix && buf[want.len()] != 0) {
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
