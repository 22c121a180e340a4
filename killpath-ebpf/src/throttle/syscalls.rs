//! Level 1, syscall ceilings: pace mode at raw_tracepoint/sys_exit for
//! `all` and for the classes without a hook of their own on this kernel
//! (`classes.rs`), and deny mode for the `net` class on the cgroup
//! sock_addr hooks (those programs are shared with isolate: see
//! `isolate/sock.rs`).
use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_send_signal, bpf_set_retval},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use killpath_common::{throttle, ThrottleEvent, MAX_CGROUP_DEPTH};

use super::bucket::{charge, owner, Limit, Verdict};
use crate::{
    abi::EAGAIN,
    maps::{SYSCALL_CLASS, TARGETS, THROTTLE_EVENTS},
    targets,
};

const SIGSTOP: u32 = 19;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn kp_throttle_sys_exit(ctx: RawTracePointContext) -> i32 {
    try_sys_exit(&ctx).unwrap_or(0)
}

/// Offset of `orig_ax` (the syscall number) in x86_64 `struct pt_regs`:
/// fixed by the syscall ABI (arch/x86/include/asm/ptrace.h), not a
/// struct layout that varies between kernel builds.
const PT_REGS_ORIG_AX: usize = 15 * 8;

/// Charged at syscall exit, not entry: a task paused at entry would be
/// stopped in the middle of a blocking call (connect, read), which then
/// returns -ERESTARTSYS and is re-executed after SIGCONT, charged twice.
/// At exit the call has completed; SIGSTOP takes effect on the return to
/// user space, before the task's next instruction.
fn try_sys_exit(ctx: &RawTracePointContext) -> Result<i32, i64> {
    let cfg = targets::config().ok_or(0i64)?;
    // Attached while a target has a syscall ceiling or a `syscalls`
    // tripwire exists (see the agent's throttle/hook.rs).
    if cfg.syscall_throttled == 0 && !crate::tripwire::armed(&cfg) {
        return Ok(0);
    }
    crate::tripwire::syscall(&cfg, ctx);
    if cfg.syscall_throttled == 0 {
        return Ok(0);
    }
    // Every task on the host passes here while anything is throttled: a
    // task outside every target leaves after one hash lookup per depth in
    // use, before reading its registers.
    if !in_a_target(cfg.throttle_depth_mask) {
        return Ok(0);
    }
    let (specific, ret) = class_of(ctx).ok_or(0i64)?;
    // The child's return from fork/clone passes here too (ret 0): the
    // fork was charged once already, in the parent.
    if specific == throttle::FORK && ret == 0 {
        return Ok(0);
    }
    // A class charged by its own hook (fork, exec, net, fs-write where
    // fexit loads) is charged here to `all` only.
    let specific = if super::classes::hooked(specific) { throttle::ALL } else { specific };
    charge_op(cfg.throttle_depth_mask, specific);
    Ok(0)
}

/// The class of the syscall exiting (`throttle::ALL` for one in no
/// class) and its return value. sys_exit(struct pt_regs *regs, long ret).
#[inline(always)]
pub(crate) fn class_of(ctx: &RawTracePointContext) -> Option<(u32, i64)> {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // SAFETY: bounded kernel read of one register slot.
    let nr = unsafe { bpf_probe_read_kernel(regs.add(PT_REGS_ORIG_AX) as *const u64) }.ok()?;
    // A 32-bit syscall (int 0x80) has an i386 number: its own table.
    let class =
        super::compat::class_entry(nr, regs, || if nr < throttle::MAX_SYSCALL_NR as u64 { SYSCALL_CLASS.get(nr as u32).copied().unwrap_or(0) } else { 0 });
    Some((if class == 0 { throttle::ALL } else { class - 1 }, ret))
}

/// Charges one operation of class `specific` (or only `all`) done by the
/// current task to its innermost throttled target, in pace mode: the
/// operation has happened, so it is always charged (never refunded), and
/// when it crosses a bucket the process is stopped and the agent told to
/// freeze the target until the debt is paid. Shared by sys_exit and the
/// io_uring submission tracepoint (`uring.rs`).
#[inline(always)]
pub(super) fn charge_op(mask: u32, specific: u32) {
    // SAFETY: helper without pointer arguments.
    let id = owner(mask, throttle::ALL, specific, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut resume = 0u64;
    if let Verdict::Over(at) = charge(id, throttle::ALL, 1, throttle::MODE_PACE, Limit::Pace, now) {
        resume = at;
    }
    if specific != throttle::ALL {
        if let Verdict::Over(at) = charge(id, specific, 1, throttle::MODE_PACE, Limit::Pace, now) {
            if at > resume {
                resume = at;
            }
        }
    }
    if resume != 0 {
        pause(id, resume, specific);
    }
}

/// Whether the current task is in some target at a depth where throttled
/// targets sit (one lookup in the targets map per such depth).
#[inline(always)]
pub(super) fn in_a_target(mask: u32) -> bool {
    let mut found = false;
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            // SAFETY: helper without pointer arguments.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(depth as i32) };
            // SAFETY: existence check only.
            if unsafe { TARGETS.get(id) }.is_some() {
                found = true;
            }
        }
        depth += 1;
    }
    found
}

/// Stops the current process and tells the agent when the debt is paid.
/// SIGSTOP is the immediate effect (no round trip to the agent); it can be
/// undone by a SIGCONT from a sibling, so the agent then freezes the whole
/// target's cgroup (cgroup v2 freezer, which SIGCONT does not thaw) until
/// `resume_at_ns`. The event is sent even when the signal could not be
/// (an io_uring SQPOLL thread that is exiting, say): the freeze is what
/// holds.
#[inline(always)]
pub(super) fn pause(cgroup_id: u64, resume_at_ns: u64, class: u32) {
    // SAFETY: signals the current process only. Called at syscall exit
    // (SIGSTOP takes effect on the return to user space, the syscall
    // itself has completed normally: pace never fails an operation) or at
    // an io_uring submission (the submitting task, or the ring's SQPOLL
    // thread, whose process is the ring's owner).
    let _ = unsafe { bpf_send_signal(SIGSTOP) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ev = ThrottleEvent { cgroup_id, resume_at_ns, tgid, class };
    let _ = THROTTLE_EVENTS.output::<ThrottleEvent>(&ev, 0);
}

/// Deny-mode `net` ceiling, for the sock_addr hooks (connect, sendmsg):
/// true when the call must fail, and then it fails with EAGAIN.
#[inline(always)]
pub fn net_refused(depth_mask: u32) -> bool {
    // SAFETY: helper without pointer arguments.
    let id = owner(depth_mask, throttle::NET, throttle::NET, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    // SAFETY: helper without arguments.
    if id != 0 && charge(id, throttle::NET, 1, throttle::MODE_DENY, Limit::Burst, unsafe { bpf_ktime_get_ns() }) == Verdict::Refuse {
        // SAFETY: helper for cgroup programs (Linux 5.18): the call fails
        // with EAGAIN instead of the default EPERM.
        unsafe { bpf_set_retval(-EAGAIN) };
        return true;
    }
    false
}
