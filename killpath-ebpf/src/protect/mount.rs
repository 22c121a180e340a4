//! Protection `protect.mount`: a task inside a target may not mount onto
//! cgroupfs or bpffs (a tmpfs over a cgroup directory would feed the agent
//! fake files; one over the pin directory would hide the pins), onto
//! killpath's pin or state directory, move such a mount, or unmount
//! cgroupfs or bpffs. Other mounts stay allowed (a blanket refusal is the
//! `mount` capability of degrade): a container runtime inside a target
//! still mounts its own filesystems, including a fresh cgroup2 on a
//! directory of its own rootfs.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::{protect, KernelOffsets};

use super::{
    cgroup::{inode_magic, CGROUP2_SUPER_MAGIC},
    current_target,
    files::{path_dentry, protected},
    offsets, refuse,
};
use crate::kcgroup::read;

/// include/uapi/linux/magic.h.
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

#[inline(always)]
fn sensitive_magic(m: u64) -> bool {
    m == CGROUP2_SUPER_MAGIC || m == CGROUP_SUPER_MAGIC || m == BPF_FS_MAGIC
}

/// Whether the mount point `path` is on cgroupfs/bpffs or protected.
#[inline(always)]
fn sensitive_path(o: &KernelOffsets, path: u64) -> bool {
    let dentry = path_dentry(path);
    if dentry == 0 {
        return false;
    }
    let inode = read::<u64>(dentry, o.dentry_d_inode).unwrap_or(0);
    sensitive_magic(inode_magic(o, inode)) || protected(o, dentry)
}

/// -EPERM (counted) if the current task is in a target and one of `paths` is sensitive.
#[inline(always)]
fn check(ctx: &LsmContext, prev_slot: usize, paths: [u64; 2]) -> i32 {
    let prev: i32 = ctx.arg(prev_slot);
    if prev != 0 {
        return prev;
    }
    let Some((id, _)) = current_target() else { return 0 };
    let Some(o) = offsets() else { return 0 };
    for p in paths {
        if p != 0 && sensitive_path(o, p) {
            return refuse(id, protect::MOUNT);
        }
    }
    0
}

/// security_sb_mount(dev_name, path, type, flags, data): every mount(2),
/// bind mounts and remounts included; `path` is the mount point.
#[lsm(hook = "sb_mount")]
pub fn kp_protect_sb_mount(ctx: LsmContext) -> i32 {
    check(&ctx, 5, [ctx.arg(1), 0])
}

/// security_move_mount(from_path, to_path): the new mount API (fsmount +
/// move_mount) and moving an existing mount.
#[lsm(hook = "move_mount")]
pub fn kp_protect_move_mount(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [ctx.arg(0), ctx.arg(1)])
}

/// security_sb_umount(mnt, flags).
#[lsm(hook = "sb_umount")]
pub fn kp_protect_sb_umount(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let Some((id, _)) = current_target() else { return 0 };
    let Some(o) = offsets() else { return 0 };
    let mnt: u64 = ctx.arg(0);
    let magic = read::<u64>(mnt, o.vfsmount_mnt_sb).and_then(|sb| read::<u64>(sb, o.sb_s_magic)).unwrap_or(0);
    if sensitive_magic(magic) {
        return refuse(id, protect::MOUNT);
    }
    0
}
