//! The kernel layer: everything killpath needs from Linux that is not
//! specific to one level. Levels and the agent build on it; it imports
//! neither.
//!
//! - [`object`]: the compiled eBPF object; loading, pinning, attaching.
//! - [`pins`]: bpffs, pin paths and pin generations (fail-static upgrades).
//! - [`links`]: links held by fd, missing pins put back (`pin_stamps`:
//!   which pin directories need a look).
//! - [`maps`]: typed handles on the pinned maps and the global switches.
//! - [`batch`]: whole-map reads in batches (one syscall per 64 entries).
//! - [`members`]: membership marks (tasks that belong to a target
//!   wherever they sit), escape counts, killing marked tasks by pidfd.
//! - [`mark_snapshot`]: a target's marks as read once, trusted while the
//!   kernel's counter of its mark writes stands.
//! - [`marks_capacity`]: `KP_MEMBERS` sized for every task the kernel
//!   can run.
//! - [`btf`]: struct offsets from the running kernel's BTF.
//! - [`probe`]: which program types and hooks this kernel accepts.
//! - [`cgroup`]: cgroup v2 directories: create, move, freeze, kill, wait.
//! - [`proctree`]: process trees from /proc.
//! - [`mounts`]: the one parser of /proc/self/mounts.
//! - [`durable`]: write-then-rename with fsyncs.
//! - [`clock`]: CLOCK_MONOTONIC, the clock of the kernel's programs.
pub mod batch;
pub mod btf;
pub mod cgroup;
pub mod cgroup_id;
pub mod clock;
pub mod deadman;
pub mod durable;
pub mod links;
pub mod maps;
pub mod mark_index;
pub mod mark_snapshot;
pub mod marks_capacity;
pub mod members;
pub mod mounts;
pub mod object;
mod pin_stamps;
pub mod pins;
pub mod priority;
pub mod probe;
pub mod procfs;
pub mod proctree;
pub mod raises;
