//! The GCRA bucket both throttle paths charge (syscalls and egress), and
//! the choice of which enclosing target's bucket is charged.
use killpath_common::{pace::resume_at, Bucket, ThrottleCounts, ThrottleKey, MAX_CGROUP_DEPTH};

use crate::maps::{THROTTLE, THROTTLE_COUNTS};

/// What charging a bucket decided.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No bucket, or within budget.
    Pass,
    /// Charged and over the burst: pace (syscalls, io_uring operations),
    /// or pass with a congestion notification (egress). Carries when the
    /// paused task may run again (CLOCK_MONOTONIC ns, `pace::resume_at`).
    Over(u64),
    /// Not charged: refuse (deny mode) or drop (egress, far over).
    Refuse,
}

/// How far over its burst a bucket may go before an operation is refused.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Never refuse: every operation is charged (pace mode). The operation
    /// has already happened (syscall exit, io_uring submission), so the
    /// only honest answer is to charge it and pause the target for the
    /// debt, however large: a refusal here would neither stop the call
    /// nor pay for it.
    Pace,
    /// Refuse (uncharged) past one more burst: the cgroup egress policer,
    /// whose TCP senders back off on congestion notifications first.
    TwoBursts,
    /// Refuse (uncharged) as soon as the burst is spent: deny mode, and
    /// the TC policer.
    Burst,
}

#[inline(always)]
fn count(key: &ThrottleKey, f: impl FnOnce(&mut ThrottleCounts)) {
    if let Some(c) = THROTTLE_COUNTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        f(unsafe { &mut *c });
    } else {
        let mut c = ThrottleCounts::default();
        f(&mut c);
        let _ = THROTTLE_COUNTS.insert(key, c, 0);
    }
}

/// Charges `units` to the bucket (`id`, `class`) if it exists and is in
/// `mode`, at time `now` (bpf_ktime_get_ns, read once by the caller);
/// `limit` says when it refuses instead.
///
/// Counts: `passed` gets every unit that went through (charged), `paced`
/// every operation that went through over the burst (a pause, or a
/// congestion notification), `denied` every operation refused; so
/// `paced <= passed`, and in pace mode `denied` stays 0.
#[inline(always)]
pub fn charge(id: u64, class: u32, units: u64, mode: u32, limit: Limit, now: u64) -> Verdict {
    let key = ThrottleKey { cgroup_id: id, class, _pad: 0 };
    let Some(b) = THROTTLE.get_ptr_mut(key) else { return Verdict::Pass };
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
    let refuse = match limit {
        Limit::Pace => false,
        Limit::TwoBursts => new > now + 2 * tau,
        Limit::Burst => true,
    };
    if refuse {
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
    // Resume when half a burst is back (see pace::resume_at): the task
    // then pauses once per half burst rather than once per syscall, and
    // the bucket is still accruing when the pacer, the thaw and the
    // scheduler let it run late, so that lateness is not budget lost.
    Verdict::Over(resume_at(new, tau))
}

/// Atomic add without fetch. On bpfel core's AtomicU64 has no
/// read-modify-write methods, so the intrinsic is used directly; its result
/// is unused, so LLVM emits a plain BPF_XADD (BPF cpu v1). Elsewhere (a
/// host `cargo clippy`) the ordinary atomic.
///
/// # Safety
/// `p` must point to an aligned u64 that lives for the call.
#[inline(always)]
pub(crate) unsafe fn xadd(p: *mut u64, v: u64) {
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

/// The innermost enclosing target that has a bucket of class `a` or `b`
/// (0: none). Only that target is charged: charging every enclosing
/// target would multiply the verifier's work by the nesting depth (it hit
/// the 1M-instruction limit), and nested targets are made by the agent,
/// never by the workload, so this is not a way out of a ceiling.
#[inline(always)]
pub fn owner(mask: u32, a: u32, b: u32, ancestor: impl Fn(i32) -> u64) -> u64 {
    let mut found = 0u64;
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            let id = ancestor(depth as i32);
            let ka = ThrottleKey { cgroup_id: id, class: a, _pad: 0 };
            let kb = ThrottleKey { cgroup_id: id, class: b, _pad: 0 };
            // SAFETY: existence checks only; the second lookup only when
            // it asks something else.
            if unsafe { THROTTLE.get(ka) }.is_some() || (b != a && unsafe { THROTTLE.get(kb) }.is_some()) {
                found = id;
            }
        }
        depth += 1;
    }
    found
}
