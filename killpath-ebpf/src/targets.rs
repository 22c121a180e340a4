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
///
/// The loop body only ORs into its accumulators: a `max` taken with a
/// branch per match refines the level's range on each path, precision
/// tracking (kernel 5.16+) then keeps a verifier state per range, and the
/// 32-depth walk alone cost every sock_addr program ~300k verified
/// instructions (about 0.5 s of load per program).
#[inline(always)]
fn find_with_id(mask: u32, ancestor: impl Fn(i32) -> u64) -> Option<(u64, TargetState)> {
    let mut levels = 0u32;
    let mut best = TargetState::default();
    let mut best_id = 0u64;
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if mask & (1u32 << depth) != 0 {
            let id = ancestor(depth as i32);
            // SAFETY: value copied out immediately.
            if let Some(state) = unsafe { TARGETS.get(id) } {
                if state.depth == depth {
                    levels |= level_bit(state.level);
                    best.revoked |= state.revoked;
                    best.audit |= state.audit;
                    best.depth = depth;
                    best_id = id;
                }
            }
        }
        depth += 1;
    }
    if levels == 0 {
        return None;
    }
    best.level = highest_level(levels);
    Some((best_id, best))
}

/// `level` as one bit of a set of levels (levels are 0..=4; anything
/// larger is clamped to bit 31, which [`highest_level`] maps back to 31,
/// above every level).
#[inline(always)]
pub fn level_bit(level: u32) -> u32 {
    1u32 << level.min(31)
}

/// The highest level in a non-empty set made by [`level_bit`]: a
/// branch-free bit scan (BPF has no count-leading-zeros instruction;
/// LLVM expands this into shifts and masks).
#[inline(always)]
pub fn highest_level(levels: u32) -> u32 {
    31 - levels.leading_zeros()
}

/// The depths in `mask` at which a cgroup at nesting `level` has an
/// ancestor (0..=level; none when the level is unknown, -1). Computed
/// once before a walk of the ancestors so the loop tests bits only: a
/// `depth <= level` test inside the loop refines `level`'s range on
/// every iteration, and precision tracking then keeps a verifier state
/// per range (355k verified instructions for the 500-instruction cgroup
/// device program).
#[inline(always)]
pub fn depths_up_to(mask: u32, level: i32) -> u32 {
    if level < 0 {
        0
    } else if level >= 31 {
        mask
    } else {
        mask & ((2u32 << level) - 1)
    }
}

/// The target of the current task with its cgroup id, if any. Inlined:
/// for the hooks every task on the host passes (the stop guard, sys_exit,
/// exec, the BPF LSM hooks), where a call to the global
/// [`kp_target_of_current`] cost ~15 ns per event (measured on the
/// sys_exit path: getppid 345 -> 360 ns while a ceiling exists).
#[inline(always)]
pub fn of_current_with_id(mask: u32) -> Option<(u64, TargetState)> {
    // SAFETY: helper without pointer arguments.
    find_with_id(mask, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) })
}

/// [`of_current_with_id`] through the global [`kp_target_of_current`],
/// verified once per program: for programs attached to targets' own
/// cgroups only (sock_addr, sock_create), which bystanders never run and
/// whose several calls made them the largest for the verifier.
#[inline(always)]
pub fn of_current_with_id_global(mask: u32) -> Option<(u64, TargetState)> {
    let mut st = TargetState::default();
    // SAFETY: `st` is a live, initialised TargetState on this stack.
    let id = unsafe { kp_target_of_current(mask, &mut st) };
    (id != 0).then_some((id, st))
}

/// The target owning the socket of `skb` with its cgroup id, if any,
/// through the global [`kp_target_of_skb`]: skb programs sit on targets'
/// cgroups only, so bystanders never pay the call.
#[inline(always)]
pub fn of_skb_with_id(mask: u32, skb: *mut __sk_buff) -> Option<(u64, TargetState)> {
    let mut st = TargetState::default();
    // SAFETY: `skb` is the program's context; `st` as above.
    let id = unsafe { kp_target_of_skb(skb, mask, &mut st) };
    (id != 0).then_some((id, st))
}

/// [`of_current_with_id`] as a global BPF function: its id (0: none),
/// the state in `*out`.
///
/// Global (BTF linkage global; exported by bpf-linker, see build.rs): the
/// verifier checks it once per program against its prototype, instead of
/// once per distinct caller state. Inlined, the 32-depth walk was
/// re-verified for every path into it, about a third of the instructions
/// verified for each sock_addr and skb program. Global functions need
/// Linux 5.6 (BTF func info), below the floor the probe requires.
///
/// # Safety
/// `out` is null or points to a writable TargetState.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn kp_target_of_current(mask: u32, out: *mut TargetState) -> u64 {
    // SAFETY: helper without pointer arguments.
    let found = find_with_id(mask, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    // SAFETY: as the caller promises.
    unsafe { put(found, out) }
}

/// [`of_skb_with_id`] as a global BPF function (see
/// [`kp_target_of_current`]). The kernel types `skb` as the program's
/// context from its BTF name, `__sk_buff`.
///
/// # Safety
/// `skb` is the program's context; `out` as for [`kp_target_of_current`].
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn kp_target_of_skb(skb: *mut __sk_buff, mask: u32, out: *mut TargetState) -> u64 {
    // SAFETY: skb is the program's context pointer.
    let found = find_with_id(mask, |d| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, d) });
    // SAFETY: as the caller promises.
    unsafe { put(found, out) }
}

/// Writes a found target's state to `out` and returns its id (0: none or
/// no `out`; the verifier makes a global function check its pointers).
///
/// # Safety
/// `out` is null or points to a writable TargetState.
#[inline(always)]
unsafe fn put(found: Option<(u64, TargetState)>, out: *mut TargetState) -> u64 {
    match found {
        Some((id, st)) if !out.is_null() => {
            // SAFETY: non-null, and valid as the caller promises.
            unsafe { *out = st };
            id
        }
        _ => 0,
    }
}

/// Adds one to a global per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
