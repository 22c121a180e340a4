//! The dead-man lease, enforced by the kernel with no agent running: a
//! perf_event program on a software cpu-clock event (one CPU, one sample
//! every `TICK_NS` = 1 ms) compares every lease's deadline with the kernel
//! clock and raises an expired lease's target through `raise::raise`
//! (cause LEASE, trigger = the deadline).
//!
//! Why a perf_event tick rather than the target's own hooks: a target
//! that does nothing (no packet, syscall or context switch) would never
//! reach a hook, so its lease would not expire until it acts. The
//! cpu-clock event is an hrtimer in the kernel: it fires every period,
//! also while the CPU is idle (it samples the idle task then), and its
//! bpf_link (BPF_LINK_TYPE_PERF_EVENT, Linux 5.15) holds the perf event
//! itself, so the pinned link keeps the tick running after the agent is
//! SIGKILLed. The agent attaches it only while some lease exists, and the
//! program returns at once while `GuardConfig.leased_targets` is 0.
//!
//! Why not a BPF timer (bpf_timer_start, 5.15): it needs a map value
//! with BTF for `struct bpf_timer`, which aya-ebpf 0.2.1's map definitions
//! cannot express (they carry no BTF).
//!
//! The program runs in hardirq context (the hrtimer): only preallocated
//! maps are touched (KP_LEASES is an array, KP_TARGETS and KP_RAISES are
//! preallocated hash maps), as the verifier requires for perf_event programs.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, macros::perf_event, maps::Array, programs::PerfEventContext};
use killpath_common::{
    deadman::{Lease, MAX_LEASES},
    raise::cause,
};

use crate::{raise, targets};

/// Every lease, one slot each (see killpath-common's `deadman`). Here
/// rather than in maps.rs: only this module and the agent use it.
#[map(name = "KP_LEASES")]
pub static LEASES: Array<Lease> = Array::with_max_entries(MAX_LEASES, 0);

#[perf_event]
pub fn kp_lease_tick(_ctx: PerfEventContext) -> u32 {
    try_tick().unwrap_or(0)
}

#[inline(always)]
fn try_tick() -> Result<u32, i64> {
    let cfg = targets::config().ok_or(0i64)?;
    if cfg.leased_targets == 0 {
        return Ok(0);
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut slot = 0u32;
    while slot < MAX_LEASES {
        if let Some(p) = LEASES.get_ptr_mut(slot) {
            expire(p, slot, now);
        }
        slot += 1;
    }
    Ok(0)
}

/// Raises the target of the lease at `p` if its deadline has passed and
/// it has not fired yet. The agent may rewrite the slot at the same time
/// (a renewal): it checks KP_RAISES after its write, so a renewal that
/// loses this race is reported as too late, never silently accepted.
#[inline(always)]
fn expire(p: *mut Lease, slot: u32, now: u64) {
    // SAFETY: map value pointer, valid for this program run; fields are
    // naturally aligned u64/u32 loads and stores.
    unsafe {
        let id = (*p).cgroup_id;
        if id == 0 || (*p).expired_ns != 0 || now < (*p).deadline_ns {
            return;
        }
        (*p).expired_ns = now;
        raise::raise(id, raise::Request { level: (*p).level, revoke: 0, cause: cause::LEASE, detail: slot, trigger_ns: (*p).deadline_ns, value: 0 });
    }
}
