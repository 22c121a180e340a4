//! Level 1, syscall classes charged by a hook of their own instead of
//! raw_tracepoint/sys_exit (see `killpath_common::class_hooks`): while only
//! such classes have ceilings, sys_exit is not attached and the tasks
//! outside targets pay nothing per syscall.
//!
//! - `fork` at raw_tracepoint/sched_process_fork ([`on_fork`], called from
//!   the membership hook): fired once per fork/vfork/clone/clone3 that
//!   created a task, in the parent, after copy_process (the child exists,
//!   the call has succeeded). sys_exit charged the same calls once too (it
//!   skipped the child's return), but also charged failed ones.
//! - `exec` at raw_tracepoint/sched_process_exec ([`on_exec`], called from
//!   the tripwire exec hook): fired in the task after a successful exec,
//!   once per exec; a failed execve (ENOENT along a PATH search) is not
//!   charged any more.
//! - `fs-write` at fexit of each of its syscalls' functions
//!   (`syscall_exits.rs`), where the kernel has BPF trampolines.
//! - `net` at fexit of connect/sendto/sendmsg/sendmmsg where the kernel has
//!   BPF trampolines (same calls as sys_exit counted); else at the socket
//!   tracepoints (`net_events.rs`: each message sent, each TCP connect)
//!   plus, for a UDP connect, the cgroup sock_addr hook ([`net_verdict`]).
//!   Connects on other socket families (unix) are not counted there.
//!
//! The tracepoint and fexit hooks pause like sys_exit: SIGSTOP to the
//! current process (the operation has completed; it takes effect on the
//! return to user space), then the agent freezes the target for the debt.
//! A cgroup sock_addr program may not send signals (bpf_send_signal is a
//! tracing helper), so there the agent's freeze is the only pause: the
//! target runs on until it lands (charged all the while, so the hold
//! covers every call made meanwhile).
use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns},
    macros::map,
    maps::Array,
    programs::SockAddrContext,
};
use killpath_common::{throttle, ThrottleEvent};

use super::{
    bucket::{charge, owner, Limit, Verdict},
    syscalls::pause,
};
use crate::{maps::THROTTLE_EVENTS, targets};

/// include/linux/net.h.
const SOCK_DGRAM: u32 = 2;

/// Written by the agent at load (see `killpath_common::class_hooks`):
/// entry 0, bit `c`: class `c` is charged by its own hook; entry 1, bit
/// `c`: that hook sees io_uring operations too (they run the same socket
/// code), so the io_uring hook leaves them to it.
#[map(name = "KP_CLASS_HOOKS")]
pub static CLASS_HOOKS: Array<u32> = Array::with_max_entries(2, 0);

#[inline(always)]
fn bit(slot: u32, class: u32) -> bool {
    class < throttle::ALL && CLASS_HOOKS.get(slot).is_some_and(|m| m & (1 << class) != 0)
}

/// Whether `class` is charged by its own hook rather than by sys_exit.
#[inline(always)]
pub fn hooked(class: u32) -> bool {
    bit(0, class)
}

/// Whether `class`'s own hook also sees io_uring operations (net at the
/// socket tracepoints).
#[inline(always)]
pub fn sees_io_uring(class: u32) -> bool {
    bit(1, class)
}

/// Charges one operation of `class` to the current task's innermost
/// target with a bucket of that class (pace mode), and pauses it when the
/// bucket is over. Only the class: `all` is sys_exit's, which is attached
/// whenever some target has an `all` ceiling.
#[inline(always)]
pub fn charge_class(class: u32) {
    let Some(cfg) = targets::config() else { return };
    // No ceiling anywhere: one array read per event.
    if cfg.syscall_throttled == 0 || !hooked(class) {
        return;
    }
    // SAFETY: helper without pointer arguments.
    let id = owner(cfg.throttle_depth_mask, class, class, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    if let Verdict::Over(at) = charge(id, class, 1, throttle::MODE_PACE, Limit::Pace, unsafe { bpf_ktime_get_ns() }) {
        pause(id, at, class);
    }
}

/// sched_process_fork, in the parent: one fork-class operation.
#[inline(always)]
pub fn on_fork() {
    charge_class(throttle::FORK);
}

/// sched_process_exec, in the task that exec'd: one exec-class operation.
#[inline(always)]
pub fn on_exec() {
    charge_class(throttle::EXEC);
}

/// The `net` class at a cgroup sock_addr hook (connect4/6, sendmsg4/6):
/// true when the call must fail (deny mode, over the burst: EAGAIN, set by
/// `net_refused`). In pace mode only a UDP connect is charged here, and
/// only where net is at the socket tracepoints (which see no UDP connect):
/// over the bucket the agent is told to freeze the target (no SIGSTOP
/// here: see the module doc).
#[inline(always)]
pub fn net_verdict(depth_mask: u32, ctx: &SockAddrContext, is_connect: bool) -> bool {
    if super::syscalls::net_refused(depth_mask) {
        return true;
    }
    // SAFETY: the kernel-provided bpf_sock_addr context.
    if !is_connect || unsafe { (*ctx.sock_addr).type_ } != SOCK_DGRAM || !sees_io_uring(throttle::NET) {
        return false;
    }
    // SAFETY: helper without pointer arguments.
    let id = owner(depth_mask, throttle::NET, throttle::NET, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return false;
    }
    // A deny-mode bucket was charged by net_refused: charge() skips a
    // bucket of the other mode, so this charges pace buckets only.
    // SAFETY: helper without arguments.
    if let Verdict::Over(at) = charge(id, throttle::NET, 1, throttle::MODE_PACE, Limit::Pace, unsafe { bpf_ktime_get_ns() }) {
        // tgid 0: no process was stopped, the agent has none to resume.
        let ev = ThrottleEvent { cgroup_id: id, resume_at_ns: at, tgid: 0, class: throttle::NET };
        let _ = THROTTLE_EVENTS.output::<ThrottleEvent>(&ev, 0);
    }
    false
}
