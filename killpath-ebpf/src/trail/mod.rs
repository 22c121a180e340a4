//! STUB until the `trail` branch lands (replaced by its mod.rs at the merge):
//! the contract's maps and the two functions the network part uses.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use killpath_common::{
    trail::{self as t, FlowKey, FlowValue, TrailConfig, TrailEvent},
    GuardConfig,
};

use crate::targets;

pub mod net;

#[map(name = "KP_TRAIL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(t::EVENTS_BYTES, 0);
#[map(name = "KP_TRAIL_ON")]
pub static ON: HashMap<u64, u32> = HashMap::with_max_entries(crate::maps::MAX_TARGETS, 0);
#[map(name = "KP_TRAIL_CONFIG")]
pub static CONFIG: Array<TrailConfig> = Array::with_max_entries(1, 0);
#[map(name = "KP_TRAIL_LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(t::LOST_COUNT, 0);
#[map(name = "KP_TRAIL_FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(t::MAX_FLOWS, 0);

#[inline(always)]
pub fn lost(index: u32) {
    if let Some(c) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn enabled() -> Option<TrailConfig> {
    let c = CONFIG.get(0)?;
    if c.recording == 0 {
        return None;
    }
    Some(*c)
}

#[inline(always)]
pub fn records(id: u64) -> bool {
    // SAFETY: value only tested for presence.
    id != 0 && unsafe { ON.get(&id) }.is_some()
}

/// The current task's innermost target and level, when it records.
#[inline(always)]
pub fn recording(cfg: &GuardConfig) -> Option<(u64, u32)> {
    if CONFIG.get(0)?.recording == 0 {
        return None;
    }
    let (id, st) = targets::of_current_with_id(cfg.depth_mask)?;
    // SAFETY: value read at once.
    unsafe { ON.get(&id) }?;
    Some((id, st.level))
}

/// Emits one event of the current task; `fill` sets the kind-specific fields.
#[inline(always)]
pub fn emit(target: u64, level: u32, kind: u32, fill: impl FnOnce(&mut TrailEvent)) {
    let Some(mut e) = EVENTS.reserve::<TrailEvent>(0) else {
        lost(kind);
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        let ev = &mut *p;
        ev.target = target;
        ev.level = level;
        ev.kind = kind;
        ev.time_ns = bpf_ktime_get_ns();
        let pt = bpf_get_current_pid_tgid();
        ev.pid = (pt >> 32) as u32;
        ev.tid = pt as u32;
        ev.uid = bpf_get_current_uid_gid() as u32;
        ev.comm = bpf_get_current_comm().unwrap_or_default();
        fill(ev);
    }
    e.submit(0);
}
