//! Reading the kernel's cgroup structs through the BTF offsets the agent
//! fills in (`KernelOffsets`), for hooks that find a cgroup from a
//! task_struct or a socket rather than with the
//! bpf_get_current_ancestor_cgroup_id helper (which cgroup device and
//! sockopt programs only get from Linux 6.4 on, and which cannot name
//! another task's or a socket's cgroup).
//!
//! `struct cgroup` keeps `level` (root = 0) and `ancestors[]`, the cgroup
//! at each depth up to its own level (include/linux/cgroup-defs.h; the
//! array has `level + 1` entries), and `kn->id`, the cgroup id that
//! targets are keyed by.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use killpath_common::KernelOffsets;

/// Reads a `T` at `base + off` in kernel memory (None if unreadable).
#[inline(always)]
pub fn read<T: Copy>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// The default-hierarchy cgroup of `task` (task->cgroups->dfl_cgrp).
#[inline(always)]
pub fn of_task(o: &KernelOffsets, task: u64) -> Option<u64> {
    read::<u64>(task, o.task_cgroups).and_then(|cs| read::<u64>(cs, o.css_set_dfl_cgrp))
}

/// Whether cgroups `a` and `b` belong to the same hierarchy: their
/// `ancestors[0]` is the same root cgroup. The cgroup_attach_task
/// tracepoint fires for cgroup v1 hierarchies too; this tells a move on the
/// default (v2) hierarchy without looking at where the moved task ended up
/// (an exiting thread-group leader is skipped by the migration and stays
/// where it was while its threads move).
#[inline(always)]
pub fn same_hierarchy(o: &KernelOffsets, a: u64, b: u64) -> bool {
    match (read::<u64>(a, o.cgroup_ancestors), read::<u64>(b, o.cgroup_ancestors)) {
        (Some(ra), Some(rb)) => ra != 0 && ra == rb,
        _ => false,
    }
}

/// The nesting level of `cgrp` (root = 0), or -1 if unreadable.
#[inline(always)]
pub fn level(o: &KernelOffsets, cgrp: u64) -> i32 {
    read::<i32>(cgrp, o.cgroup_level).unwrap_or(-1)
}

/// The id (kernfs node id) of `cgrp` itself, 0 if unreadable.
#[inline(always)]
pub fn id(o: &KernelOffsets, cgrp: u64) -> u64 {
    read::<u64>(cgrp, o.cgroup_kn).and_then(|kn| read::<u64>(kn, o.kernfs_node_id)).unwrap_or(0)
}

/// The id of `cgrp`'s ancestor at `depth`, 0 if unreadable. The caller
/// has checked `depth <= level` (with [`crate::targets::depths_up_to`] in
/// a walk): past the level, `ancestors[]` is other memory.
#[inline(always)]
pub fn ancestor_unchecked(o: &KernelOffsets, cgrp: u64, depth: u32) -> u64 {
    read::<u64>(cgrp, o.cgroup_ancestors + depth * 8).map_or(0, |anc| id(o, anc))
}

/// The id of `task`'s cgroup's ancestor at `depth` (0 if its cgroup sits
/// higher, or unreadable): whether a signal's receiver is in a target.
#[inline(always)]
pub fn task_ancestor(o: &KernelOffsets, task: u64, depth: u32) -> u64 {
    let Some(cgrp) = of_task(o, task) else { return 0 };
    ancestor(o, cgrp, level(o, cgrp), depth)
}

/// The id of `cgrp`'s ancestor at `depth`, 0 if `cgrp` (at `level`) sits
/// higher. For one lookup; a walk over depths uses
/// [`crate::targets::depths_up_to`] and [`ancestor_unchecked`] instead.
#[inline(always)]
pub fn ancestor(o: &KernelOffsets, cgrp: u64, level: i32, depth: u32) -> u64 {
    if level < depth as i32 {
        return 0;
    }
    ancestor_unchecked(o, cgrp, depth)
}
