//! PROVISIONAL (trail-files): the trail pipeline's maps and switch, written
//! against killpath-common/src/trail.rs until the `trail` branch lands;
//! replaced by that branch's mod.rs at merge.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use killpath_common::trail::{FileKey, FileValue, TrailConfig, EVENTS_BYTES, LOST_COUNT, MAX_FILE_WRITES};

pub mod files;

#[map(name = "KP_TRAIL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "KP_TRAIL_ON")]
pub static ON: HashMap<u64, u32> = HashMap::with_max_entries(crate::maps::MAX_TARGETS, 0);

#[map(name = "KP_TRAIL_CONFIG")]
pub static CONFIG: Array<TrailConfig> = Array::with_max_entries(1, 0);

#[map(name = "KP_TRAIL_LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_COUNT, 0);

#[map(name = "KP_TRAIL_FILE_WRITES")]
pub static FILE_WRITES: HashMap<FileKey, FileValue> = HashMap::with_max_entries(MAX_FILE_WRITES, 0);

/// The innermost target of the current task and its level, when it records.
#[inline(always)]
pub fn recording(cfg: &TrailConfig) -> Option<(u64, u32)> {
    if cfg.recording == 0 {
        return None;
    }
    let mask = crate::targets::config()?.depth_mask;
    let (id, state) = crate::targets::of_current_with_id(mask)?;
    ON.get_ptr(id)?;
    Some((id, state.level))
}

/// Counts one lost event or map entry at `index` of LOST.
#[inline(always)]
pub fn lost(index: u32) {
    if let Some(c) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
