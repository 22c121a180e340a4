//! Loss per recording target: a record the kernel could not keep (ring
//! full, flows or file-writes map full) is counted at its target in
//! `KP_TRAIL_LOST_BY_TARGET`, so a flood in one target is loss in that
//! target's trail only (see `killpath-common/src/trail_loss.rs`). When that
//! map is full the count goes to the host-wide `KP_TRAIL_LOST`: never
//! silent.
use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use killpath_common::trail_loss::{LostKey, MAX_BY_TARGET};

#[map(name = "KP_TRAIL_LOST_BY_TARGET")]
pub static BY_TARGET: PerCpuHashMap<LostKey, u64> = PerCpuHashMap::with_max_entries(MAX_BY_TARGET, 0);

/// BPF_NOEXIST.
const NOEXIST: u64 = 1;

/// Counts one record of `target` lost at `index` (a kind, LOST_FLOWS or
/// LOST_FILES); false when the map is full (the caller counts it
/// host-wide).
///
/// A function of its own (a BPF-to-BPF call), not inlined: its key on the
/// stack would otherwise grow the frame of every hook that can lose an
/// event, and Linux 6.1 refused `kp_isolate_connect6` at 544 bytes of
/// combined stack (the limit is 512). Its own frame must stay within 32
/// bytes (the key and the value 1): `kp_egress_skb` -> `net::skb` ->
/// here is 352 + 128 + 32 = 512 on 6.1, so the host-wide fallback (a
/// lookup with its own index on the stack) is the caller's.
/// Called only when something is lost.
#[inline(never)]
#[expect(clippy::needless_borrows_for_generic_args, reason = "by value, the insert copies the value into a second stack slot")]
pub fn count(target: u64, index: u32) -> bool {
    // By reference: passed by value, the map's lookup copies the key into
    // a second stack slot (40 bytes of frame instead of 24).
    // The value on the stack too (a constant would be the object's only
    // `.rodata`, a global-data map of its own).
    let key = &LostKey { target, index, _pad: 0 };
    let one: u64 = 1;
    if let Some(n) = BY_TARGET.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU value, no concurrent writer.
        unsafe { *n += 1 };
        return true;
    }
    // First loss of this (target, index) on any CPU. A per-CPU hash update
    // from a program writes this CPU's slot and zeroes the others; NOEXIST
    // keeps another CPU's concurrent first insert (then the slot exists:
    // add to it).
    if BY_TARGET.insert(key, &one, NOEXIST).is_ok() {
        return true;
    }
    if let Some(n) = BY_TARGET.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe { *n += 1 };
        return true;
    }
    false
}
