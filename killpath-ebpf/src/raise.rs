//! The kernel raises a target's level on its own (a critical tripwire on
//! the crossing event, a dead-man lease past its deadline), with no round
//! trip to the agent: the event that triggers the raise is the first one
//! the new level refuses.
//!
//! Order matters. The raise is recorded in `KP_RAISES` before the level is
//! written into `KP_TARGETS`: the agent writes whole `TargetState` values,
//! and after each write it reads `KP_RAISES` back, so a raise its write
//! may have overwritten is always seen and re-applied (see the agent's
//! `Maps::set`). `KP_GUARD_CONFIG` is never written here: the agent
//! counts a target that may be raised as already isolated/stopped/degraded
//! (`armed_*`), so the hooks already look it up.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use killpath_common::raise::Raise;

use crate::maps::{RAISES, TARGETS};

/// What to raise a target to, and why.
#[derive(Clone, Copy)]
pub struct Request {
    pub level: u32,
    pub revoke: u32,
    pub cause: u32,
    pub detail: u32,
    /// When the triggering event happened (CLOCK_MONOTONIC ns).
    pub trigger_ns: u64,
    pub value: u64,
}

/// Raises target `id` to `req.level` (never lowers it) and revokes
/// `req.revoke`. Returns true when something changed. Two CPUs may race
/// to raise the same target: both write the same or a higher level, and
/// the record with the higher level wins, so the outcome is the same.
#[inline(always)]
pub fn raise(id: u64, req: Request) -> bool {
    let Some(p) = TARGETS.get_ptr_mut(id) else { return false };
    // SAFETY: map value pointer, read at once.
    let (cur_level, cur_revoked) = unsafe { ((*p).level, (*p).revoked) };
    if cur_level >= req.level && req.revoke & !cur_revoked == 0 {
        return false;
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: map value reference, read in place rather than copied (a
    // copy would not be atomic either): the tripwire's global rule
    // function inlines this, and its frame adds to its caller's under the
    // 512-byte stack limit (tripwire/mod.rs).
    let prev = unsafe { RAISES.get(id) };
    // The record keeps the highest level asked for and every revocation
    // (a degrade raise after an isolate raise still adds its revoke).
    let rec = match prev {
        Some(r) if r.level >= req.level => Raise { revoke: r.revoke | req.revoke, ..*r },
        _ => Raise {
            time_ns: now,
            trigger_ns: req.trigger_ns,
            value: req.value,
            level: req.level,
            revoke: req.revoke | prev.map_or(0, |r| r.revoke),
            cause: req.cause,
            detail: req.detail,
        },
    };
    // One record per target and room for every target: the insert
    // fails only if the map is gone. Raising anyway fails closed.
    let _ = RAISES.insert(id, rec, 0);
    // Look the target up again: KP_TARGETS is a preallocated hash map, and
    // an agent update since the first lookup replaced the element (the old
    // one goes back to the free list), so a write through the first
    // pointer could land in a recycled element. The agent reads KP_RAISES
    // after each of its writes, so a write of its after this lookup still
    // sees the record above and merges it.
    let Some(p) = TARGETS.get_ptr_mut(id) else { return true };
    // SAFETY: fresh map value pointer; u32 stores are atomic on every BPF
    // JIT. Two CPUs revoking different capabilities at once may lose one
    // bit here; the record above keeps both and the agent merges it.
    unsafe {
        if req.level > (*p).level {
            (*p).level = req.level;
        }
        if req.revoke != 0 {
            (*p).revoked |= req.revoke;
        }
    }
    true
}
