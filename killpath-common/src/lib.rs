//! Types and names shared by killpath's kernel programs and its agent.
//!
//! Everything here is `#[repr(C)]` and plain data: the same bytes are read by
//! the eBPF programs (no_std, bpfel) and by the agent through aya maps.
#![no_std]

/// Enforcement level of a target. Levels are cumulative and ordered.
pub mod level {
    /// Running normally, nothing enforced.
    pub const NORMAL: u32 = 0;
    /// Rate of action capped.
    pub const THROTTLE: u32 = 1;
    /// Capabilities revoked.
    pub const DEGRADE: u32 = 2;
    /// Cut off from everything outside the target.
    pub const ISOLATE: u32 = 3;
    /// Hard-stopped: every task killed, any new task killed by the guard.
    pub const STOPPED: u32 = 4;
}

/// Map names, shared so that the agent and the programs cannot disagree.
pub mod maps {
    /// `HashMap<u64 cgroup id, TargetState>`: every managed target.
    pub const TARGETS: &str = "KP_TARGETS";
    /// `Array<GuardConfig>` with one entry: lets the per-syscall guard exit
    /// on its first instructions when no target is stopped.
    pub const GUARD_CONFIG: &str = "KP_GUARD_CONFIG";
    /// `PerCpuArray<u64>` with one entry: tasks killed by the guard.
    pub const GUARD_KILLS: &str = "KP_GUARD_KILLS";
    /// `Array<ProbeState>` with one entry: used by `probe` to see an LSM hook fire.
    pub const PROBE: &str = "KP_PROBE";
}

/// Program names as they appear in the eBPF object.
pub mod programs {
    /// raw_tracepoint/sys_enter: kills tasks of stopped targets at their next syscall.
    pub const GUARD_SYS_ENTER: &str = "kp_guard_sys_enter";
    /// raw_tracepoint/sched_process_fork: kills a stopped target's task that forks.
    pub const GUARD_FORK: &str = "kp_guard_fork";
    /// raw_tracepoint/sched_switch: kills a stopped target's task when it
    /// leaves the CPU, so a pure CPU loop without syscalls is caught too.
    pub const GUARD_SWITCH: &str = "kp_guard_switch";
    /// Tiny programs `probe` loads to learn what the kernel accepts.
    pub const PROBE_LSM: &str = "kp_probe_lsm";
    pub const PROBE_CGROUP_SKB: &str = "kp_probe_cgroup_skb";
    pub const PROBE_SOCK_ADDR: &str = "kp_probe_sock_addr";
    pub const PROBE_SOCK: &str = "kp_probe_sock";
    pub const PROBE_TC: &str = "kp_probe_tc";
    pub const PROBE_TRACEPOINT: &str = "kp_probe_tracepoint";
}

/// Deepest cgroup nesting level (root = 0) at which a target may sit. The
/// guard walks the current task's ancestors only at depths in use.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Per-target state, keyed by the target's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetState {
    /// One of [`level`].
    pub level: u32,
    /// Nesting depth of the target's cgroup (root = 0).
    pub depth: u32,
}

/// Global switches read first by every hot-path program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// Number of targets at level STOPPED. Zero: the guard returns at once.
    pub stopped_targets: u32,
    /// Bit d set: some target sits at cgroup depth d.
    pub depth_mask: u32,
}

/// Written by the agent before a probe, read back after it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// tgid whose hook invocations are counted.
    pub tgid: u32,
    /// Number of times the LSM probe hook ran for `tgid`.
    pub hits: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::TargetState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeState {}
}
