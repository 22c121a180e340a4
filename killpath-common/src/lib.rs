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
    /// `PerCpuArray<u64>` indexed by [`super::counter`]: isolation drops and denials.
    pub const COUNTERS: &str = "KP_COUNTERS";
    /// `HashMap<u32 ifindex, u64 cgroup id>`: host-side network devices
    /// (the veth of a container in its own network namespace) whose traffic
    /// belongs to a target; the TC program cuts it when the target is isolated.
    pub const NETDEVS: &str = "KP_NETDEVS";
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
    /// Level 3, per-target cgroup hooks (attached to each target's cgroup).
    pub const ISOLATE_SKB: &str = "kp_isolate_skb";
    pub const ISOLATE_CONNECT4: &str = "kp_isolate_connect4";
    pub const ISOLATE_CONNECT6: &str = "kp_isolate_connect6";
    pub const ISOLATE_SENDMSG4: &str = "kp_isolate_sendmsg4";
    pub const ISOLATE_SENDMSG6: &str = "kp_isolate_sendmsg6";
    pub const ISOLATE_SOCK_CREATE: &str = "kp_isolate_sock_create";
    /// Level 3 at TC (TCX where available) on a target's host-side veth.
    pub const ISOLATE_TC: &str = "kp_isolate_tc";
    /// Level 3, host-wide BPF LSM hooks (attached once where BPF LSM is on).
    pub const ISOLATE_LSM_SOCKET_CREATE: &str = "kp_isolate_lsm_socket_create";
    pub const ISOLATE_LSM_SOCKET_CONNECT: &str = "kp_isolate_lsm_socket_connect";
    pub const ISOLATE_LSM_SOCKET_SENDMSG: &str = "kp_isolate_lsm_socket_sendmsg";
    pub const ISOLATE_LSM_SOCKET_RECVMSG: &str = "kp_isolate_lsm_socket_recvmsg";
    /// Tiny programs `probe` loads to learn what the kernel accepts.
    pub const PROBE_LSM: &str = "kp_probe_lsm";
    pub const PROBE_CGROUP_SKB: &str = "kp_probe_cgroup_skb";
    pub const PROBE_SOCK_ADDR: &str = "kp_probe_sock_addr";
    pub const PROBE_SOCK: &str = "kp_probe_sock";
    pub const PROBE_TC: &str = "kp_probe_tc";
    pub const PROBE_TRACEPOINT: &str = "kp_probe_tracepoint";
}

/// Indexes of the `KP_COUNTERS` per-CPU array.
pub mod counter {
    /// Packets dropped on a cgroup skb hook of an isolated target.
    pub const ISOLATE_SKB_DROPS: u32 = 0;
    /// connect/sendmsg refused on a cgroup sock_addr hook.
    pub const ISOLATE_ADDR_DENIALS: u32 = 1;
    /// raw socket creation refused on the cgroup sock hook.
    pub const ISOLATE_SOCK_DENIALS: u32 = 2;
    /// Socket operations refused by a BPF LSM hook.
    pub const ISOLATE_LSM_DENIALS: u32 = 3;
    /// Packets dropped at TC on a target's network device.
    pub const ISOLATE_TC_DROPS: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
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
    /// Number of targets at level ISOLATE or above. Zero: the host-wide LSM
    /// socket hooks return at once.
    pub isolated_targets: u32,
    /// Padding; keeps the struct 8-byte sized and explicit.
    pub _pad: u32,
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
