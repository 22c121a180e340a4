//! Protection `protect.files`: nothing below killpath's pin directory
//! (bpffs: the links' and maps' pins, the links' only reference once the
//! agent is gone) or its state directory (registry, journal, agent.json,
//! which the CLI's fallback trusts) may be written, created, unlinked,
//! renamed, truncated, linked, chmod'ed or chown'ed by a task inside a
//! target. The agent lists both directories, by (device, inode), in
//! KP_PROTECTED_DIRS. As in fs.write's allow-list (degrade/fswrite.rs), the
//! check walks d_parent from the dentry the kernel resolved, so no path
//! spelling, symlink or bind mount leads around it. bpffs unlink goes
//! through security_path_unlink like any other filesystem.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::{protect, KernelOffsets, ProtectedInode};

use super::{current_target, offsets, refuse};
use crate::{kcgroup::read, maps::PROTECTED_DIRS};

const FMODE_WRITE: u32 = 0x2;

/// Whether `dentry` is a protected directory or below one.
#[inline(always)]
pub fn protected(o: &KernelOffsets, dentry: u64) -> bool {
    crate::dentry::at_or_below(o, dentry, |dev, ino| PROTECTED_DIRS.get_ptr(ProtectedInode { dev, _pad: 0, ino }).is_some())
}

/// The verdict for a change at or below `dentries` (0 = not applicable).
#[inline(always)]
fn check(ctx: &LsmContext, prev_slot: usize, dentries: [u64; 2]) -> i32 {
    let prev: i32 = ctx.arg(prev_slot);
    if prev != 0 {
        return prev;
    }
    let Some((id, _)) = current_target() else { return 0 };
    let Some(o) = offsets() else { return 0 };
    for d in dentries {
        if d != 0 && protected(o, d) {
            return refuse(id, protect::FILES);
        }
    }
    0
}

/// dentry of a `struct path *`.
#[inline(always)]
pub fn path_dentry(path: u64) -> u64 {
    let Some(o) = offsets() else { return 0 };
    read::<u64>(path, o.path_dentry).unwrap_or(0)
}

/// security_file_open(file): opening for write.
#[lsm(hook = "file_open")]
pub fn kp_protect_file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let Some(o) = offsets() else { return ctx.arg(1) };
    if read::<u32>(file, o.file_f_mode).unwrap_or(0) & FMODE_WRITE == 0 {
        return ctx.arg(1);
    }
    let dentry = read::<u64>(file + u64::from(o.file_f_path), o.path_dentry).unwrap_or(0);
    check(&ctx, 1, [dentry, 0])
}

/// security_path_unlink(dir, dentry).
#[lsm(hook = "path_unlink")]
pub fn kp_protect_path_unlink(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [ctx.arg(1), 0])
}

/// security_path_rmdir(dir, dentry).
#[lsm(hook = "path_rmdir")]
pub fn kp_protect_path_rmdir(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [ctx.arg(1), 0])
}

/// security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags):
/// neither out of nor into a protected directory (nor over a pin).
#[lsm(hook = "path_rename")]
pub fn kp_protect_path_rename(ctx: LsmContext) -> i32 {
    check(&ctx, 5, [ctx.arg(1), path_dentry(ctx.arg(2))])
}

/// security_path_truncate(path).
#[lsm(hook = "path_truncate")]
pub fn kp_protect_path_truncate(ctx: LsmContext) -> i32 {
    check(&ctx, 1, [path_dentry(ctx.arg(0)), 0])
}

/// security_path_link(old_dentry, new_dir, new_dentry): neither a link to
/// a protected file nor a new name in a protected directory.
#[lsm(hook = "path_link")]
pub fn kp_protect_path_link(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [ctx.arg(0), path_dentry(ctx.arg(1))])
}

/// security_path_symlink(dir, dentry, old_name).
#[lsm(hook = "path_symlink")]
pub fn kp_protect_path_symlink(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [path_dentry(ctx.arg(0)), 0])
}

/// security_path_mknod(dir, dentry, mode, dev): also O_CREAT.
#[lsm(hook = "path_mknod")]
pub fn kp_protect_path_mknod(ctx: LsmContext) -> i32 {
    check(&ctx, 4, [path_dentry(ctx.arg(0)), 0])
}

/// security_path_mkdir(dir, dentry, mode).
#[lsm(hook = "path_mkdir")]
pub fn kp_protect_path_mkdir(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [path_dentry(ctx.arg(0)), 0])
}

/// security_path_chmod(path, mode).
#[lsm(hook = "path_chmod")]
pub fn kp_protect_path_chmod(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [path_dentry(ctx.arg(0)), 0])
}

/// security_path_chown(path, uid, gid).
#[lsm(hook = "path_chown")]
pub fn kp_protect_path_chown(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [path_dentry(ctx.arg(0)), 0])
}
