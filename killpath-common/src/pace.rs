//! When a paced target may run again: shared by the kernel (the time it
//! posts in a `ThrottleEvent`) and the agent's pacer (the time it holds
//! the target until, re-read from the bucket).

/// The moment a GCRA bucket with theoretical arrival time `tat_ns` and
/// burst tolerance `tau_ns` has half a burst of room again
/// (CLOCK_MONOTONIC ns).
///
/// Not the moment it is full (`tat_ns`): a bucket that is full stops
/// accruing, so every nanosecond between that moment and the target
/// actually running again (the pacer's wake-up, the thaw, SIGCONT, the
/// scheduler; up to 50 ms on a loaded 2-core host) would be budget lost
/// for good, and the measured rate would fall below the ceiling by that
/// lateness on every pause. Resumed with half a burst of room, the bucket
/// keeps accruing through up to `tau_ns / 2` of lateness, and the long-run
/// rate stays exactly the ceiling; the price is twice as many pauses (one
/// per half burst).
#[inline(always)]
pub const fn resume_at(tat_ns: u64, tau_ns: u64) -> u64 {
    tat_ns.saturating_sub(tau_ns / 2)
}
