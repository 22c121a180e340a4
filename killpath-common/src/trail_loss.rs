//! The trail's kernel-side loss per recording target (issue 16), beside
//! the shared contract in [`super::trail`]: a record the kernel could not
//! keep (the event ring full, the flows or file-writes map full) is counted
//! at the target it belonged to, so one target's flood shows as loss in its
//! own trail only. Only when this map is itself full does the count go to
//! the host-wide [`super::trail::LOST`] (reported as host-wide, labelled):
//! loss is never silent.

/// `PerCpuHashMap<LostKey, u64>`: records lost per (target, index), the
/// index as in [`super::trail::LOST`] (a kind, `LOST_FLOWS`, `LOST_FILES`).
/// Entries of a target are removed by the agent when it stops recording
/// (`trail --off`, release, a re-created cgroup), after folding their counts
/// into the target's trail file.
pub const BY_TARGET: &str = "KP_TRAIL_LOST_BY_TARGET";
/// Capacity of [`BY_TARGET`]: every index of a thousand recording targets
/// (entries exist only for what was lost).
pub const MAX_BY_TARGET: u32 = 1024 * super::trail::LOST_COUNT;

/// Which count of [`BY_TARGET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LostKey {
    /// The recording target's cgroup id.
    pub target: u64,
    /// A kind, `LOST_FLOWS` or `LOST_FILES`.
    pub index: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, the padding an explicit field.
    unsafe impl aya::Pod for super::LostKey {}
}
