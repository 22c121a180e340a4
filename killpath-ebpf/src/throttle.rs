//! Level 1, throttle: token buckets on syscalls and egress traffic.
//!
//! Buckets are GCRA state (see `killpath_common::Bucket`): charging an
//! operation is one atomic add on the bucket's theoretical arrival time, so
//! tasks on different CPUs share one exact budget without a lock (tracing
//! programs may not take bpf_spin_lock).
//!
//! - Syscalls: raw_tracepoint/sys_exit. It is attached only while some
//!   target has a syscall ceiling, so with nothing throttled no per-syscall
//!   hook runs at all. In pace mode an over-budget syscall completes, and
//!   the task is sent SIGSTOP (delivered on its return to user space,
//!   before its next instruction); the agent sends SIGCONT when the bucket
//!   has room again. A BPF program cannot sleep, so resuming needs the
//!   agent: while it is down a paused task stays paused (fail-safe).
//! - Deny mode for the `net` class: the cgroup sock_addr hooks (connect,
//!   datagram send with an address) fail the call with EAGAIN through
//!   bpf_set_retval (Linux 5.18). A raw tracepoint cannot fail a syscall,
//!   so other classes have no deny mode on kernels without fmod_ret.
//! - Egress: cgroup_skb/egress polices bytes and packets. Within the burst
//!   a packet passes; beyond it, it passes with a congestion notification
//!   (verdict 3: TCP's tcp_enter_cwr shrinks the congestion window instead
//!   of taking a loss); more than one more burst beyond, it is dropped
//!   with a notification (verdict 2) and not charged. TCP thus settles at
//!   the ceiling instead of collapsing into retransmission timeouts.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_addr},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_send_signal, bpf_setsockopt,
        bpf_skb_ancestor_cgroup_id,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use killpath_common::{throttle, Bucket, ThrottleCounts, ThrottleEvent, ThrottleKey, MAX_CGROUP_DEPTH};

use crate::{
    maps::{SYSCALL_CLASS, TARGETS, THROTTLE, THROTTLE_COUNTS, THROTTLE_EVENTS},
    targets,
};

const SIGSTOP: u32 = 19;
const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;

/// What charging a bucket decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No bucket, or within budget.
    Pass,
    /// Charged, over the burst by less than one more burst (egress: pass
    /// with a congestion notification). Carries when the bucket is full
    /// again (CLOCK_MONOTONIC ns).
    Over(u64),
    /// Not charged: refuse (deny mode) or drop (egress, far over).
    Refuse,
}

#[inline(always)]
fn count(key: &ThrottleKey, f: impl FnOnce(&mut ThrottleCounts)) {
    if let Some(c) = THROTTLE_COUNTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        f(unsafe { &mut *c });
    } else {
        let mut c = ThrottleCounts::default();
        f(&mut c);
        let _ = THROTTLE_COUNTS.insert(key, &c, 0);
    }
}

/// Charges `units` to the bucket (`id`, `class`) if it exists and is in
/// `mode`, at time `now` (bpf_ktime_get_ns, read once by the caller).
/// `hard_limit`: refuse (without charging) once over the burst, instead of
/// only past one more burst.
#[inline(always)]
pub fn charge(id: u64, class: u32, units: u64, mode: u32, hard_limit: bool, now: u64) -> Verdict {
    let key = ThrottleKey { cgroup_id: id, class, _pad: 0 };
    let Some(b) = THROTTLE.get_ptr_mut(&key) else { return Verdict::Pass };
    // SAFETY: map value pointer, valid for this program run.
    let b: &mut Bucket = unsafe { &mut *b };
    if b.mode != mode {
        return Verdict::Pass;
    }
    // The eBPF object is built for BPF cpu v1 (aya-build's default), which
    // has atomic add only without fetch (BPF_XADD): no atomic load,
    // fetch-add or compare-exchange. So: a plain read, the charge as one
    // XADD, and a second read that sees this charge plus any concurrent
    // ones from other CPUs (a slightly pessimistic verdict, never a lost
    // charge). tat_ns is an aligned u64 inside the map value.
    let tat: *mut u64 = &mut b.tat_ns;
    // SAFETY: see above.
    let cur = unsafe { core::ptr::read_volatile(tat) };
    if cur < now {
        // Idle since: the bucket is full. Racing a charge from another CPU
        // here can drop that one charge, only at the idle-to-busy edge.
        // SAFETY: see above.
        unsafe { core::ptr::write_volatile(tat, now) };
    }
    let inc = units * b.cost_ps / 1000;
    // SAFETY: see above.
    unsafe { xadd(tat, inc) };
    // SAFETY: see above.
    let new = unsafe { core::ptr::read_volatile(tat) };
    let tau = b.tau_ns;
    if new <= now + tau {
        count(&key, |c| c.passed += units);
        return Verdict::Pass;
    }
    if hard_limit || new > now + 2 * tau {
        // Refund: XADD of the two's complement.
        // SAFETY: see above.
        unsafe { xadd(tat, inc.wrapping_neg()) };
        count(&key, |c| c.denied += 1);
        return Verdict::Refuse;
    }
    count(&key, |c| {
        c.passed += units;
        c.paced += 1;
    });
    // Resume when the bucket is full again (tat reached): the task then
    // has a whole burst, so a paced task pauses once per burst rather than
    // once per syscall, and the average rate is still exactly the ceiling.
    Verdict::Over(new)
}

/// Atomic add without fetch. On bpfel core's AtomicU64 has no
/// read-modify-write methods, so the intrinsic is used directly; its result
/// is unused, so LLVM emits a plain BPF_XADD (BPF cpu v1). Elsewhere (a
/// host `cargo clippy`) the ordinary atomic.
///
/// # Safety
/// `p` must point to an aligned u64 that lives for the call.
#[inline(always)]
unsafe fn xadd(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: per the function's contract.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v)
    };
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: per the function's contract.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p).fetch_add(v, core::sync::atomic::Ordering::Relaxed)
    };
}

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
    if cfg.syscall_throttled == 0 {
        return Ok(0);
    }
    // Every task on the host passes here while anything is throttled: a
    // task outside every target leaves after one hash lookup per depth in
    // use, before reading its registers.
    if !in_a_target(cfg.throttle_depth_mask) {
        return Ok(0);
    }
    // sys_exit(struct pt_regs *regs, long ret).
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // SAFETY: bounded kernel read of one register slot.
    let nr = unsafe { bpf_probe_read_kernel(regs.add(PT_REGS_ORIG_AX) as *const u64) }?;
    let class = if nr < throttle::MAX_SYSCALL_NR as u64 { SYSCALL_CLASS.get(nr as u32).copied().unwrap_or(0) } else { 0 };
    let specific = if class == 0 { throttle::ALL } else { class - 1 };
    // The child's return from fork/clone passes here too (ret 0): the
    // fork was charged once already, in the parent.
    if specific == throttle::FORK && ret == 0 {
        return Ok(0);
    }
    // SAFETY: helper without pointer arguments.
    let id = owner(cfg.throttle_depth_mask, throttle::ALL, specific, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return Ok(0);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut resume = 0u64;
    if let Verdict::Over(at) = charge(id, throttle::ALL, 1, throttle::MODE_PACE, false, now) {
        resume = at;
    }
    if specific != throttle::ALL {
        if let Verdict::Over(at) = charge(id, specific, 1, throttle::MODE_PACE, false, now) {
            if at > resume {
                resume = at;
            }
        }
    }
    if resume != 0 {
        pause(id, resume, specific);
    }
    Ok(0)
}

/// Whether the current task is in some target at a depth where throttled
/// targets sit (one lookup in the targets map per such depth).
#[inline(always)]
fn in_a_target(mask: u32) -> bool {
    let mut found = false;
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            // SAFETY: helper without pointer arguments.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(depth as i32) };
            // SAFETY: existence check only.
            if unsafe { TARGETS.get(&id) }.is_some() {
                found = true;
            }
        }
        depth += 1;
    }
    found
}

/// The innermost enclosing target that has a bucket of class `a` or `b`
/// (0: none). Only that target is charged: charging every enclosing
/// target would multiply the verifier's work by the nesting depth (it hit
/// the 1M-instruction limit), and nested targets are made by the agent,
/// never by the workload, so this is not a way out of a ceiling.
#[inline(always)]
fn owner(mask: u32, a: u32, b: u32, ancestor: impl Fn(i32) -> u64) -> u64 {
    let mut found = 0u64;
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            let id = ancestor(depth as i32);
            let ka = ThrottleKey { cgroup_id: id, class: a, _pad: 0 };
            let kb = ThrottleKey { cgroup_id: id, class: b, _pad: 0 };
            // SAFETY: existence checks only; the second lookup only when
            // it asks something else.
            if unsafe { THROTTLE.get(&ka) }.is_some() || (b != a && unsafe { THROTTLE.get(&kb) }.is_some()) {
                found = id;
            }
        }
        depth += 1;
    }
    found
}

/// Stops the current process and tells the agent when to resume it.
#[inline(always)]
fn pause(cgroup_id: u64, resume_at_ns: u64, class: u32) {
    // SAFETY: signals the current process only. Called at syscall exit:
    // SIGSTOP takes effect on the return to user space, the syscall
    // itself has completed normally (pace never fails an operation).
    if unsafe { bpf_send_signal(SIGSTOP) } != 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ev = ThrottleEvent { cgroup_id, resume_at_ns, tgid, class };
    let _ = THROTTLE_EVENTS.output::<ThrottleEvent>(&ev, 0);
}

/// Deny-mode `net` ceiling for the sock_addr hooks: true when the call
/// must fail with EAGAIN.
#[inline(always)]
pub fn net_denied(depth_mask: u32) -> bool {
    // SAFETY: helper without pointer arguments.
    let id = owner(depth_mask, throttle::NET, throttle::NET, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    // SAFETY: helper without arguments.
    id != 0 && charge(id, throttle::NET, 1, throttle::MODE_DENY, true, unsafe { bpf_ktime_get_ns() }) == Verdict::Refuse
}

/// Egress policer verdict for one skb: charges the byte and packet buckets
/// of the innermost enclosing throttled target.
#[inline(always)]
pub fn egress(depth_mask: u32, skb: *mut __sk_buff) -> Verdict {
    // SAFETY: skb is the program's context pointer.
    let (len, segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let packets = if segs == 0 { 1 } else { segs };
    // SAFETY: skb is the program's context pointer.
    let id = owner(depth_mask, throttle::EGRESS_BYTES, throttle::EGRESS_PACKETS, |d| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, d) });
    if id == 0 {
        return Verdict::Pass;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    worse(charge(id, throttle::EGRESS_BYTES, len, throttle::MODE_PACE, false, now), charge(id, throttle::EGRESS_PACKETS, packets, throttle::MODE_PACE, false, now))
}

/// At connect (cgroup sock_addr connect4/6, process context): caps the
/// new socket's pacing rate at the target's egress byte ceiling with
/// SO_MAX_PACING_RATE, which also switches on TCP's internal pacing
/// (Linux 4.20, tcp_needs_internal_pacing) where no fq qdisc paces. On
/// loopback a congestion window cannot go low enough to reach a small
/// ceiling (rate = cwnd / RTT, and the RTT is microseconds), so without
/// pacing TCP would only meet the policer's drops and stall on
/// retransmission timers; with it, a flow sends at the ceiling and the
/// policer only trims the sum of several flows.
#[inline(always)]
pub fn pace_socket(sa: *mut bpf_sock_addr) {
    let Some(cfg) = targets::config() else { return };
    if cfg.egress_throttled == 0 {
        return;
    }
    // SAFETY: helper without pointer arguments.
    let id = owner(cfg.throttle_depth_mask, throttle::EGRESS_BYTES, throttle::EGRESS_BYTES, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return;
    }
    let key = ThrottleKey { cgroup_id: id, class: throttle::EGRESS_BYTES, _pad: 0 };
    // SAFETY: value copied out immediately.
    let Some(b) = (unsafe { THROTTLE.get(&key) }) else { return };
    if b.cost_ps == 0 {
        return;
    }
    let rate = 1_000_000_000_000u64 / b.cost_ps;
    let mut val: u32 = if rate > u32::MAX as u64 { u32::MAX } else { rate as u32 };
    // SAFETY: sa is the program's context; val lives on the stack.
    unsafe { bpf_setsockopt(sa as *mut _, SOL_SOCKET, SO_MAX_PACING_RATE, (&mut val as *mut u32).cast(), 4) };
}

/// Egress policer at TC for a `--netdev` device owned by target `id`.
#[inline(always)]
pub fn egress_tc(id: u64, len: u64, segs: u64) -> Verdict {
    let packets = if segs == 0 { 1 } else { segs };
    // No congestion notification reaches the sender from TC in another
    // namespace: a hard policer with the burst as its depth.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    worse(
        charge(id, throttle::EGRESS_BYTES_TC, len, throttle::MODE_PACE, true, now),
        charge(id, throttle::EGRESS_PACKETS_TC, packets, throttle::MODE_PACE, true, now),
    )
}

#[inline(always)]
fn worse(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Refuse, _) | (_, Verdict::Refuse) => Verdict::Refuse,
        (Verdict::Over(x), _) => Verdict::Over(x),
        (_, v) => v,
    }
}
