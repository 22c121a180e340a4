//! Loss per recording target: a record the kernel could not keep (ring
//! full, flows or file-writes map full) is counted at its target in
//! `KP_TRAIL_LOST_BY_TARGET`, so a flood in one target is loss in that
//! target's trail only (see `killpath-common/src/trail_loss.rs`). When that
//! map is full the count goes to the host-wide `KP_TRAIL_LOST`: never
//! silent.
use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use killpath_common::trail_loss::{LostKey, MAX_BY_TARGET};

use super::LOST;

#[map(name = "KP_TRAIL_LOST_BY_TARGET")]
pub static BY_TARGET: PerCpuHashMap<LostKey, u64> = PerCpuHashMap::with_max_entries(MAX_BY_TARGET, 0);

/// BPF_NOEXIST.
const NOEXIST: u64 = 1;

/// Counts one record of `target` lost at `index` (a kind, LOST_FLOWS or
/// LOST_FILES).
#[inline(always)]
pub fn count(target: u64, index: u32) {
    let key = LostKey { target, index, _pad: 0 };
    if let Some(n) = BY_TARGET.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU value, no concurrent writer.
        unsafe { *n += 1 };
        return;
    }
    // First loss of this (target, index) on any CPU. A per-CPU hash update
    // from a program writes this CPU's slot and zeroes the others; NOEXIST
    // keeps another CPU's concurrent first insert (then the slot exists:
    // add to it).
    if BY_TARGET.insert(key, 1, NOEXIST).is_ok() {
        return;
    }
    if let Some(n) = BY_TARGET.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe { *n += 1 };
        return;
    }
    // The map is full: host-wide, so the loss is still counted.
    if let Some(c) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
