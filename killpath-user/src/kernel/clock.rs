//! The kernel's clock as user space reads it.

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns` reads (and
/// `std::time::Instant` on Linux), so times the kernel's programs record
/// compare with ours.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

/// `at` on the CLOCK_MONOTONIC ns scale of [`monotonic_ns`].
pub fn instant_ns(at: std::time::Instant) -> u64 {
    monotonic_ns().saturating_sub(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
}
