//! Level 3, isolate: cut the target off from everything outside it.
//!
//! - [`channel`]: the catalog of channels, the single source of truth.
//! - [`programs`]: the per-target cgroup hooks and isolation's LSM hooks.
//! - [`netdev`]: `--netdev`, the TC program on a container's host-side veth.
//! - [`verify`] and [`verify_probe`] (with `verify_probe_families.rs`:
//!   netlink, vsock, AF_XDP, TUN): `isolate --verify`, proven from inside.
//!
//! Kernel side: `killpath-ebpf/src/isolate/`.
pub mod channel;
pub mod netdev;
pub mod programs;
pub mod verify;
pub mod verify_probe;
mod verify_probe_families;

pub use channel::{catalog, Channel, ChannelStatus};
pub use programs::IsolatePrograms;
