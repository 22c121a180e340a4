//! Tripwires: rules over per-target metrics counted in the kernel. The
//! agent writes each rule into a slot of `KP_TRIPWIRE_RULES`; the hooks
//! that see a metric's events charge every matching rule's window in
//! `KP_TRIPWIRE_WINDOWS` (per target, per rule) and, on the event that
//! crosses the threshold, send a [`Crossing`] on `KP_TRIPWIRE_EVENTS` and,
//! for a critical rule, raise the target's level at once (`raise.rs`).

/// Map names.
pub mod maps {
    /// `Array<Rule>`, [`super::MAX_RULES`] slots.
    pub const RULES: &str = "KP_TRIPWIRE_RULES";
    /// `HashMap<WindowKey, Window>`: each rule's window per target.
    pub const WINDOWS: &str = "KP_TRIPWIRE_WINDOWS";
    /// `LruHashMap<DestKey, u8>`: destinations seen in a window.
    pub const DESTS: &str = "KP_TRIPWIRE_DESTS";
    /// `RingBuf` of [`super::Crossing`].
    pub const EVENTS: &str = "KP_TRIPWIRE_EVENTS";
    /// `Array<SlotList>`, [`super::METRICS`] entries: for each metric, the
    /// slots holding an active rule on it, so a hook visits only its
    /// metric's rules (and none while its metric has no rule).
    pub const ACTIVE: &str = "KP_TRIPWIRE_ACTIVE";
}

/// Program names.
pub mod programs {
    /// raw_tracepoint/sched_process_exec: counts execs.
    pub const EXEC: &str = "kp_tripwire_exec";
}

/// Rule slots in the kernel (one bit each in a `maps::ACTIVE` mask).
pub const MAX_RULES: u32 = 32;

/// Entries of `maps::ACTIVE`: metric numbers are below this.
pub const METRICS: u32 = 9;
const _: () = assert!(metric::SYSCALLS < METRICS, "every metric needs an entry in maps::ACTIVE");

/// The slots of one metric's active rules (`maps::ACTIVE`), in slot order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotList {
    /// How many of `slots` are used.
    pub len: u32,
    pub slots: [u8; MAX_RULES as usize],
}

/// Metrics the kernel counts ([`Rule::metric`]).
pub mod metric {
    pub const EGRESS_BYTES: u32 = 1;
    pub const EGRESS_PACKETS: u32 = 2;
    pub const CONNECTS: u32 = 3;
    pub const DESTINATIONS: u32 = 4;
    /// `arg`: capability index + 1, 0 for any.
    pub const DENIALS: u32 = 5;
    pub const FORKS: u32 = 6;
    pub const EXECS: u32 = 7;
    /// `arg`: syscall class (`throttle::NET`..`ALL`) + 1, 0 for all.
    pub const SYSCALLS: u32 = 8;
}

/// [`Rule::flags`] bits.
pub mod flag {
    /// The slot holds a rule.
    pub const ACTIVE: u32 = 1;
    /// Raise the target's level in the kernel on the crossing event.
    pub const RAISE: u32 = 2;
    /// Only count (`total`): the agent evaluates the rule (`--eval agent`).
    pub const COUNT_ONLY: u32 = 4;
}

/// One rule slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// The target's cgroup id, 0 for every target.
    pub target: u64,
    /// Fires when the window's count goes above this.
    pub threshold: u64,
    pub window_ns: u64,
    /// One of [`metric`].
    pub metric: u32,
    /// Metric qualifier (denials: capability index + 1), 0 for all.
    pub arg: u32,
    /// With [`flag::RAISE`]: the level raised to, and capabilities revoked.
    pub level: u32,
    pub revoke: u32,
    pub flags: u32,
    /// Bumped by the agent on every (re)arming, carried in crossings.
    pub generation: u32,
}

/// Key of a rule's window for one target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowKey {
    pub target: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// A rule's window for one target (fixed windows of `window_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub count: u64,
    /// The previous window's count (0 if it was not the one just before).
    pub prev: u64,
    /// Everything counted since the window was created.
    pub total: u64,
    /// When it crossed (0: not fired). Fired windows stay fired until the
    /// agent deletes them (rule removed or re-armed).
    pub fired_ns: u64,
    pub fired_value: u64,
}

/// A destination seen in a window (metric `destinations`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestKey {
    pub target: u64,
    pub window_start_ns: u64,
    pub addr: [u32; 4],
    pub slot: u32,
    pub port: u32,
}

/// A crossing, sent to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crossing {
    pub target: u64,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) of the crossing event.
    pub time_ns: u64,
    pub value: u64,
    pub prev: u64,
    pub threshold: u64,
    /// With `raised`: bpf_ktime_get_ns once the level was written.
    pub effect_ns: u64,
    pub slot: u32,
    pub metric: u32,
    /// Nonzero: the kernel raised the level on this event.
    pub raised: u32,
    pub generation: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no implicit padding, any bit pattern valid.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: repr(C), plain integers, no padding (4 + 32 bytes).
    unsafe impl aya::Pod for super::SlotList {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WindowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Window {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DestKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Crossing {}
}
