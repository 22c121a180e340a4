//! The activity trail (issue 16): what a recording target did outside
//! itself, posted by the hooks that see it (see
//! `killpath-common/src/trail.rs` for the contract).
//!
//! Every hook makes ONE call here. [`recording`] is the switch: one read of
//! `KP_TRAIL_CONFIG` while no target records (the host pays nothing
//! more), then the task's innermost target and `KP_TRAIL_ON`. [`emit`]
//! reserves a fixed-size event in the ring and fills it in place (the
//! event is bigger than the 512-byte BPF stack); a full ring is counted at
//! the target and the event's kind (`loss.rs`), never dropped silently.
//!
//! - `exec.rs`: exec events (sched_process_exec, called from the tripwire's
//!   program on that tracepoint);
//! - `signal.rs`: signals to tasks outside the target (signal_generate);
//! - escapes: [`escape`], called from `members.rs` where escapes are seen.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use killpath_common::{
    trail::{kind, FileKey, FileValue, FlowKey, FlowValue, TrailConfig, TrailEvent, TrailOffsets, EVENTS_BYTES, LOST_COUNT, MAX_FILE_WRITES, MAX_FLOWS},
    GuardConfig,
};

use crate::{maps::MAX_TARGETS, targets};

mod direction;
mod exec;
pub mod files;
mod loss;
pub mod net;
mod signal;

pub use exec::on_exec;

#[map(name = "KP_TRAIL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "KP_TRAIL_ON")]
pub static ON: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_TRAIL_CONFIG")]
pub static CONFIG: Array<TrailConfig> = Array::with_max_entries(1, 0);

#[map(name = "KP_TRAIL_LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_COUNT, 0);

// Filled by the network hooks (trail/net.rs): one entry per flow.
#[map(name = "KP_TRAIL_FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(MAX_FLOWS, 0);

// Filled by the file hooks (trail/files.rs, BPF LSM): one entry per file.
#[map(name = "KP_TRAIL_FILE_WRITES")]
pub static FILE_WRITES: HashMap<FileKey, FileValue> = HashMap::with_max_entries(MAX_FILE_WRITES, 0);

#[map(name = "KP_TRAIL_OFFSETS")]
pub static OFFSETS: Array<TrailOffsets> = Array::with_max_entries(1, 0);

/// The global switch: whether any target records (one array read).
#[inline(always)]
pub fn enabled() -> Option<TrailConfig> {
    let c = CONFIG.get(0)?;
    if c.recording == 0 {
        return None;
    }
    Some(*c)
}

/// Whether target `id` records (for hooks that found the target on their
/// own, e.g. from a socket).
#[inline(always)]
pub fn records(id: u64) -> bool {
    // SAFETY: value only tested for presence.
    id != 0 && unsafe { ON.get(id) }.is_some()
}

/// The current task's innermost target and its effective level, when
/// that target records; None at once while no target records.
#[inline(always)]
pub fn recording(cfg: &GuardConfig) -> Option<(u64, u32)> {
    enabled()?;
    let (id, st) = targets::of_current_with_id(cfg.depth_mask)?;
    if !records(id) {
        return None;
    }
    Some((id, st.level))
}

/// Counts one lost record of target `id` at `index` (a kind, or
/// LOST_FLOWS / LOST_FILES): per target, host-wide only when the
/// per-target map is full (`loss.rs`).
#[inline(always)]
pub fn lost(id: u64, index: u32) {
    if loss::count(id, index) {
        return;
    }
    // The per-target map is full: host-wide, so the loss is still counted.
    if let Some(c) = LOST.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Posts one event of `kind` for target `id` at `level`, with the current
/// task's pid, tid, uid and comm; `fill` sets the kind-specific fields
/// (the event is zeroed except `text`, whose used length is `text_len`).
/// A full ring is counted at (`id`, kind) (`loss.rs`).
#[inline(always)]
pub fn emit(id: u64, level: u32, k: u32, fill: impl FnOnce(&mut TrailEvent)) {
    let Some(mut slot) = EVENTS.reserve::<TrailEvent>(0) else {
        lost(id, k);
        return;
    };
    let ev = slot.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `ev` points at reserved ring memory of a whole TrailEvent;
    // every field but `text` is written here, `text` by `fill` up to
    // `text_len`.
    unsafe {
        (*ev).target = id;
        (*ev).time_ns = bpf_ktime_get_ns();
        (*ev).value = 0;
        (*ev).kind = k;
        (*ev).level = level;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).arg = 0;
        (*ev).peer = 0;
        (*ev).proto = 0;
        (*ev).family = 0;
        (*ev).addr = [0; 4];
        (*ev).port = 0;
        (*ev).truncated = 0;
        (*ev)._pad = 0;
        (*ev).text_len = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        fill(&mut *ev);
    }
    slot.submit(0);
}

/// An escape attempt by a task of target `id` (seen by `members.rs`):
/// `refused` = 1 when the kernel killed the task as it moved.
#[inline(always)]
pub fn escape(id: u64, level: u32, tgid: u32, refused: u32) {
    if enabled().is_none() || !records(id) {
        return;
    }
    emit(id, level, kind::ESCAPE, |ev| {
        ev.arg = refused;
        ev.peer = tgid;
    });
}
