//! The dead-man lease: a target must be renewed before its deadline, or
//! the kernel itself raises it to the lease's expiry level (isolate or
//! stop), with or without a running agent.
//!
//! The whole lease lives in the pinned `KP_LEASES` array (one slot per
//! lease, free while `cgroup_id` is 0): the deadline the kernel enforces
//! and what the agent reports about it (ttl, renewals, who renewed). The
//! kernel is the source of truth: a restarted agent reads the leases back
//! from it, and a renewal is acknowledged only after its deadline is in
//! the map.

/// `Array<Lease>` of [`MAX_LEASES`] slots.
pub const MAP: &str = "KP_LEASES";
/// The perf_event program that checks every deadline each [`TICK_NS`].
pub const PROGRAM: &str = "kp_lease_tick";
/// How many leases can exist at once (the tick walks every slot).
pub const MAX_LEASES: u32 = 64;
/// The tick's period: a deadline is enforced at most this late.
pub const TICK_NS: u64 = 1_000_000;

/// One lease, in slot `detail` of `KP_LEASES` (the raise's `detail`).
/// Times are CLOCK_MONOTONIC ns (bpf_ktime_get_ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The target's cgroup id; 0: free slot.
    pub cgroup_id: u64,
    /// The kernel raises the target once its clock passes this.
    pub deadline_ns: u64,
    /// Each renewal moves the deadline to now + ttl.
    pub ttl_ns: u64,
    /// When the lease was armed.
    pub armed_ns: u64,
    /// The last renewal (0: none yet).
    pub renewed_ns: u64,
    /// Set by the kernel when it raised the target (0: live).
    pub expired_ns: u64,
    /// Renewals so far.
    pub renewals: u64,
    /// The expiry level (isolate or stop, see [`super::level`]).
    pub level: u32,
    /// Who renewed last (SO_PEERCRED of the caller).
    pub renew_uid: u32,
    pub renew_pid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers, no padding (explicit `_pad`), any bit pattern valid.
unsafe impl aya::Pod for Lease {}
