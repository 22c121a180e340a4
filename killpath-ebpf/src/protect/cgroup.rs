//! Protection `protect.cgroup-write`: no write to cgroupfs outside the task's own
//! target subtree. This is what keeps a root task from leaving its target
//! by writing its pid into another cgroup's `cgroup.procs`/`cgroup.threads`,
//! and from freezing, killing or re-limiting cgroups outside its target.
//!
//! Hooks, and why these (Linux 6.1, kernel/cgroup/cgroup.c, fs/namei.c):
//! - `inode_permission` with MAY_WRITE fires when a cgroupfs file is opened
//!   for write (may_open), when a cgroup directory is written (mkdir/rmdir),
//!   and from `cgroup_may_write()`: every migration through cgroup.procs or
//!   cgroup.threads, and clone3(CLONE_INTO_CGROUP) through
//!   `cgroup_css_set_fork()`, asks for MAY_WRITE on the cgroup.procs of the
//!   common ancestor of the source and destination cgroups. That ancestor is
//!   inside the target exactly when the destination is (the source being
//!   inside): so one hook refuses the write path and the clone3 path alike,
//!   whatever fd was used to name the destination.
//! - `file_permission` with MAY_WRITE (every write(2), via rw_verify_area)
//!   catches a cgroupfs file opened for write before the task entered its
//!   target (an inherited fd) for the files whose write has no permission
//!   check of its own (cgroup.kill, cgroup.freeze, limits).
//!
//! Which cgroup a cgroupfs inode belongs to: a kernfs inode's i_private is
//! its kernfs_node; walking kernfs_node.parent reaches the cgroup
//! directories, whose kernfs node id is the cgroup id. Offsets from BTF.
use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use killpath_common::{protect, KernelOffsets, MAX_CGROUP_DEPTH};

use super::{current_target, offsets, refuse};
use crate::kcgroup::read;

/// include/linux/fs.h.
const MAY_WRITE: i32 = 0x2;
/// include/uapi/linux/magic.h: CGROUP2_SUPER_MAGIC.
pub const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
/// A file sits one level below its cgroup: depth + file + root.
const MAX_WALK: u32 = MAX_CGROUP_DEPTH + 2;

/// The magic number of `inode`'s super block (0 if unreadable).
#[inline(always)]
pub fn inode_magic(o: &KernelOffsets, inode: u64) -> u64 {
    read::<u64>(inode, o.inode_i_sb).and_then(|sb| read::<u64>(sb, o.sb_s_magic)).unwrap_or(0)
}

/// Whether the cgroupfs `inode` is outside the subtree of cgroup `id`: no
/// node on its kernfs parent chain has id `id`.
#[inline(always)]
fn outside(o: &KernelOffsets, inode: u64, id: u64) -> bool {
    let mut kn = read::<u64>(inode, o.inode_i_private).unwrap_or(0);
    let mut i = 0;
    while i < MAX_WALK {
        if kn == 0 {
            return true;
        }
        if read::<u64>(kn, o.kernfs_node_id) == Some(id) {
            return false;
        }
        kn = read::<u64>(kn, o.kernfs_node_parent).unwrap_or(0);
        i += 1;
    }
    true
}

/// The verdict for a write to `inode` by the current task.
#[inline(always)]
fn check(inode: u64) -> i32 {
    // Every write on the host comes through here: with no target anywhere,
    // leave on one array lookup, before following any kernel pointer.
    if crate::targets::config().is_none_or(|c| c.depth_mask == 0) {
        return 0;
    }
    let Some(o) = offsets() else { return 0 };
    if inode == 0 || inode_magic(o, inode) != CGROUP2_SUPER_MAGIC {
        return 0;
    }
    let Some((id, _)) = current_target() else { return 0 };
    if outside(o, inode, id) {
        return refuse(id, protect::CGROUP_WRITE);
    }
    0
}

/// security_inode_permission(inode, mask). Hot (every path component of
/// every lookup): non-writes return on the first instructions.
#[lsm(hook = "inode_permission")]
pub fn kp_protect_inode_permission(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 {
        return 0;
    }
    check(ctx.arg(0))
}

/// security_file_permission(file, mask). Hot (every read and write).
/// The one program on this hook also serves isolation: reads and writes on
/// a /dev/net/tun fd of an isolated target (`isolate/tun.rs`), checked only
/// while some target is isolated.
#[lsm(hook = "file_permission")]
pub fn kp_protect_file_permission(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let mask: i32 = ctx.arg(1);
    let isolating = crate::targets::config().is_some_and(|c| c.isolated_targets != 0);
    if mask & MAY_WRITE == 0 && !isolating {
        return 0;
    }
    let file: u64 = ctx.arg(0);
    let Some(o) = offsets() else { return 0 };
    let dentry = read::<u64>(file + u64::from(o.file_f_path), o.path_dentry).unwrap_or(0);
    let inode = read::<u64>(dentry, o.dentry_d_inode).unwrap_or(0);
    if mask & MAY_WRITE != 0 {
        let v = check(inode);
        if v != 0 {
            return v;
        }
        let v = own_control(o, dentry, inode);
        if v != 0 {
            return v;
        }
    }
    crate::isolate::tun::file_verdict(o, inode)
}

/// A write to a control file of the task's own target cgroup (the top of
/// its subtree, the cgroup the agent acts on) that would undo a level:
/// `cgroup.freeze` (a root task writing 0 thaws the throttle's pacing
/// freeze; cgroup v2 freezing is hierarchical, so the cgroups below the
/// top cannot thaw it) and every controller file (`pids.max`: `throttle
/// --tasks` on cgroup2 hosts; `memory.max`, `cpu.max`, ...). The files
/// the workload needs to manage its own subtree stay writable:
/// `cgroup.procs`, `cgroup.threads`, `cgroup.subtree_control`,
/// `cgroup.max.*`, `cgroup.kill` (killing itself undoes nothing), and
/// everything in the sub-cgroups it makes. Checked at file_permission,
/// which every write(2), pwrite, writev, splice and io_uring write of a
/// cgroupfs file passes (rw_verify_area): opening for write stays
/// allowed, the write fails with EPERM. The name is the dentry's
/// (`d_name`), read only for cgroupfs files whose kernfs parent is the
/// target's own cgroup.
#[inline(always)]
fn own_control(o: &KernelOffsets, dentry: u64, inode: u64) -> i32 {
    // As in `check`: one array lookup when no target exists, before any
    // kernel pointer is followed.
    if o.names_valid == 0 || inode == 0 || crate::targets::config().is_none_or(|c| c.depth_mask == 0) || inode_magic(o, inode) != CGROUP2_SUPER_MAGIC {
        return 0;
    }
    let Some((id, _)) = current_target() else { return 0 };
    let parent = read::<u64>(inode, o.inode_i_private).and_then(|kn| read::<u64>(kn, o.kernfs_node_parent)).unwrap_or(0);
    if parent == 0 || read::<u64>(parent, o.kernfs_node_id) != Some(id) {
        return 0;
    }
    let name_ptr = read::<u64>(dentry + u64::from(o.dentry_d_name), o.qstr_name).unwrap_or(0);
    let mut name = [0u8; 16];
    // SAFETY: bounded read of a NUL-terminated kernel string into a stack buffer.
    if name_ptr == 0 || unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, &mut name) }.is_err() {
        return 0;
    }
    if is_undoing(&name) {
        return refuse(id, protect::CGROUP_WRITE);
    }
    0
}

/// `cgroup.freeze`, or a controller file (any name not starting with `cgroup.`).
#[inline(always)]
fn is_undoing(name: &[u8; 16]) -> bool {
    const FREEZE: &[u8; 14] = b"cgroup.freeze\0";
    let mut i = 0;
    let mut freeze = true;
    while i < FREEZE.len() {
        if name[i] != FREEZE[i] {
            freeze = false;
        }
        i += 1;
    }
    freeze || name[..7] != *b"cgroup."
}
