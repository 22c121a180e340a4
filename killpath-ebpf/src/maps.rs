//! Maps shared by all programs. The agent pins the persistent ones under its bpffs
//! directory so that enforcement outlives the agent (fail-static).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use killpath_common::{GuardConfig, ProbeState, TargetState};

/// Upper bound on managed targets.
pub const MAX_TARGETS: u32 = 4096;

#[map(name = "KP_TARGETS")]
pub static TARGETS: HashMap<u64, TargetState> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_GUARD_CONFIG")]
pub static GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

#[map(name = "KP_GUARD_KILLS")]
pub static GUARD_KILLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "KP_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(killpath_common::counter::COUNT, 0);

#[map(name = "KP_NETDEVS")]
pub static NETDEVS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

#[map(name = "KP_PROBE")]
pub static PROBE: Array<ProbeState> = Array::with_max_entries(1, 0);
