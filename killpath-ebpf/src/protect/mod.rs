//! Self-protection: always on, for every task inside any target at any
//! level (normal included), wherever BPF LSM runs. A root task inside a
//! target must not be able to step out of the kill path: move itself (or
//! anything) to a cgroup outside its target, unload or edit killpath's
//! programs and maps, signal or ptrace the agent, remove killpath's pins or
//! edit its state, or mount over cgroupfs / bpffs. One file per hook family:
//!
//! - `cgroup.rs`: writes to cgroupfs outside the target's subtree
//!   (`inode_permission`, `file_permission`; covers clone3 into a cgroup);
//! - `bpf.rs`: bpf(2);
//! - `task.rs`: signals and ptrace aimed at killpath's processes;
//! - `files.rs`: writes, unlinks, renames below killpath's pin and state dirs;
//! - `mount.rs`: mounts onto cgroupfs, bpffs or killpath's dirs, and their unmounts;
//! - `sysctl.rs`: writes to `kernel.pid_max`/`threads-max` (a cgroup
//!   sysctl program on each target's cgroup, not LSM: on every kernel).
//!
//! Each refusal is counted per target in KP_DENIALS and sampled into the
//! denial ring buffer, at index `protect::FIRST + n`. Every hook first
//! returns when no target exists (`depth_mask == 0`) or, for the hot
//! permission hooks, when the access is not a write.
use killpath_common::{protect, KernelOffsets, TargetState};

use crate::{
    degrade::{deny, Detail},
    maps::OFFSETS,
    targets,
};

mod bpf;
mod cgroup;
mod files;
mod mount;
mod sysctl;
mod task;

/// The current task's innermost target (cgroup id, state), if it is inside one.
#[inline(always)]
fn current_target() -> Option<(u64, TargetState)> {
    let cfg = targets::config()?;
    if cfg.depth_mask == 0 {
        return None;
    }
    targets::of_current_with_id(cfg.depth_mask)
}

/// The struct offsets the pointer-following protections need (None when
/// this kernel's BTF lacks one: those protections are off, `probe` says so).
#[inline(always)]
fn offsets() -> Option<&'static KernelOffsets> {
    OFFSETS.get(0).filter(|o| o.protect_valid != 0)
}

/// Counts and samples a refusal of protection `what` for target `id`; -EPERM.
#[inline(always)]
fn refuse(id: u64, what: u32) -> i32 {
    deny(id, protect::FIRST + what, Detail::default())
}
