//! Level 2, degrade, on the user side.
//!
//! - [`capability`]: the capability catalog, the single source of truth.
//! - [`programs`]: degrade's host-wide BPF LSM hooks.
//! - [`maps`]: allow-lists, denial counters and struct offsets in the kernel.
//! - [`allow`]: `--allow-connect` parsing.
//!
//! Kernel side: `killpath-ebpf/src/degrade/`.
pub mod allow;
pub mod capability;
pub mod maps;
pub mod programs;

pub use allow::parse_allow_connect;
pub use capability::{bit, capabilities, name_of_index, names, Capability, CapabilityStatus, KernelGaps};
