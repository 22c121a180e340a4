//! Levels the kernel raises on its own, without the agent: a critical
//! tripwire on the event that crosses its threshold, a dead-man lease at
//! its deadline. The program writes a [`Raise`] into `KP_RAISES` first,
//! then the target's level into `KP_TARGETS`; the agent adopts the raise
//! (journals it, completes the level, deletes the record), also after a
//! restart, so a raise made while the agent is dead is never lost.

/// Why the kernel raised a target ([`Raise::cause`]).
pub mod cause {
    /// A critical tripwire rule crossed its threshold.
    pub const TRIPWIRE: u32 = 1;
    /// A dead-man lease expired.
    pub const LEASE: u32 = 2;
}

/// One raise the agent has not adopted yet, keyed by the target's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raise {
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns) when the kernel raised the level.
    pub time_ns: u64,
    /// The event that caused it (the crossing, the deadline), same clock.
    pub trigger_ns: u64,
    /// The metric's value at the crossing (tripwire), 0 otherwise.
    pub value: u64,
    /// The level raised to (one of [`super::level`]).
    pub level: u32,
    /// Capabilities revoked with it ([`super::cap`] bits; degrade).
    pub revoke: u32,
    /// One of [`cause`].
    pub cause: u32,
    /// Which rule or lease, as the cause numbers them (tripwire: the rule's slot).
    pub detail: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers, no padding, any bit pattern valid.
unsafe impl aya::Pod for Raise {}
