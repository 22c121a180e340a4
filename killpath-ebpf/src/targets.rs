//! Finding the target a task or a packet belongs to. A target is keyed by
//! its cgroup id; a task or socket belongs to it when the target's cgroup
//! is its ancestor at the target's depth, so nested cgroups are included.
//! Only depths where some target sits (GuardConfig.depth_mask) are looked at.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
};
use killpath_common::{GuardConfig, TargetState, MAX_CGROUP_DEPTH};

use crate::maps::{COUNTERS, GUARD_CONFIG, TARGETS};

/// The global switches, or None if the config map is unreadable.
#[inline(always)]
pub fn config() -> Option<GuardConfig> {
    GUARD_CONFIG.get(0).copied()
}

/// Targets can nest (a target adopted inside another one): the effective
/// state is the strictest of all enclosing targets — highest level, union
/// of revoked (and of audited) capabilities — reported under the innermost target's id.
#[inline(always)]
fn find_with_id(mask: u32, ancestor: impl Fn(i32) -> u64) -> Option<(u64, TargetState)> {
    // Plain initialised locals rather than an Option accumulator: the
    // verifier rejects reads of registers LLVM leaves uninitialised for a
    // None payload.
    let mut any = false;
    let mut best_id = 0u64;
    let mut best = TargetState::default();
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            let id = ancestor(depth as i32);
            // SAFETY: value copied out immediately.
            if let Some(state) = unsafe { TARGETS.get(id) } {
                if state.depth == depth {
                    let level = if state.level > best.level { state.level } else { best.level };
                    let revoked = state.revoked | best.revoked;
                    let audit = state.audit | best.audit;
                    best = *state;
                    best.level = level;
                    best.revoked = revoked;
                    best.audit = audit;
                    best_id = id;
                    any = true;
                }
            }
        }
        depth += 1;
    }
    if any {
        Some((best_id, best))
    } else {
        None
    }
}

/// The target of the current task with its cgroup id, if any.
#[inline(always)]
pub fn of_current_with_id(mask: u32) -> Option<(u64, TargetState)> {
    // SAFETY: helper without pointer arguments.
    find_with_id(mask, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) })
}

/// The target owning the socket of `skb` with its cgroup id, if any.
#[inline(always)]
pub fn of_skb_with_id(mask: u32, skb: *mut __sk_buff) -> Option<(u64, TargetState)> {
    // SAFETY: skb is the program's context pointer.
    find_with_id(mask, |d| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, d) })
}

/// Adds one to a global per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
