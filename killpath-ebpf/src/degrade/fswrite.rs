//! Level 2, capability `fs.write`: refuse opening for write, creating,
//! unlinking, renaming, truncating, mkdir/rmdir, chmod/chown and linking,
//! except below the target's `--allow-write` directories.
//!
//! The allow-list is checked on the dentry the kernel already resolved, by
//! walking d_parent up to the filesystem root and looking each directory's
//! (device, inode) up in KP_WRITE_ALLOW. Because the walk follows the real
//! dentry tree, `..`, symlinks and bind mounts cannot lead around it: a bind
//! mount of an outside directory into the allowed one keeps its own parents.
//! Struct offsets come from the running kernel's BTF (KP_OFFSETS).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::{cap, KernelOffsets, WriteAllow};

use super::{revoked, verdict, Detail};
use crate::kcgroup::read;
use crate::maps::{OFFSETS, WRITE_ALLOW};

const FMODE_WRITE: u32 = 0x2;
const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;

/// Whether `dentry` is an allowed directory of target `id` or below one.
#[inline(always)]
fn allowed(o: &KernelOffsets, id: u64, dentry: u64) -> bool {
    crate::dentry::at_or_below(o, dentry, |dev, ino| WRITE_ALLOW.get_ptr(WriteAllow { cgroup_id: id, dev, _pad: 0, ino }).is_some())
}

/// The verdict for a write below `dentries` (0 = not applicable); `named`
/// is the dentry the event names (the new entry for creates).
#[inline(always)]
fn check(ctx: &LsmContext, prev_slot: usize, dentries: [u64; 2], named: u64) -> i32 {
    let prev: i32 = ctx.arg(prev_slot);
    if prev != 0 {
        return prev;
    }
    let Some(s) = revoked(cap::FS_WRITE) else { return 0 };
    let Some(o) = OFFSETS.get(0) else { return 0 };
    if o.fs_valid == 0 {
        return 0;
    }
    for d in dentries {
        if d != 0 && !allowed(o, s.id, d) {
            // The event names the file: dentry->d_name.name.
            let name_ptr = if o.names_valid != 0 { read::<u64>(named + u64::from(o.dentry_d_name), o.qstr_name).unwrap_or(0) } else { 0 };
            return verdict(s, cap::FS_WRITE.trailing_zeros(), Detail { name_ptr, ..Detail::default() });
        }
    }
    0
}

/// dentry of a `struct path *`.
#[inline(always)]
fn path_dentry(path: u64) -> u64 {
    let Some(o) = OFFSETS.get(0) else { return 0 };
    read::<u64>(path, o.path_dentry).unwrap_or(0)
}

#[lsm(hook = "file_open")]
pub fn kp_degrade_file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let Some(o) = OFFSETS.get(0) else { return ctx.arg(1) };
    let mode = read::<u32>(file, o.file_f_mode).unwrap_or(0);
    if mode & FMODE_WRITE == 0 {
        return ctx.arg(1);
    }
    let dentry = read::<u64>(file + u64::from(o.file_f_path), o.path_dentry).unwrap_or(0);
    // Character devices (/dev/null, ttys), FIFOs and sockets are not the
    // filesystem: writing to them stays allowed. Regular files, block
    // devices and anything unreadable are checked.
    let mode = read::<u64>(dentry, o.dentry_d_inode).and_then(|i| read::<u16>(i, o.inode_i_mode)).unwrap_or(0) & S_IFMT;
    if mode == S_IFCHR || mode == S_IFIFO || mode == S_IFSOCK {
        return ctx.arg(1);
    }
    check(&ctx, 1, [dentry, 0], dentry)
}

#[lsm(hook = "path_truncate")]
pub fn kp_degrade_path_truncate(ctx: LsmContext) -> i32 {
    let d = path_dentry(ctx.arg(0));
    check(&ctx, 1, [d, 0], d)
}

#[lsm(hook = "path_unlink")]
pub fn kp_degrade_path_unlink(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [ctx.arg(1), 0], ctx.arg(1))
}

#[lsm(hook = "path_mkdir")]
pub fn kp_degrade_path_mkdir(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [path_dentry(ctx.arg(0)), 0], ctx.arg(1))
}

#[lsm(hook = "path_rmdir")]
pub fn kp_degrade_path_rmdir(ctx: LsmContext) -> i32 {
    check(&ctx, 2, [ctx.arg(1), 0], ctx.arg(1))
}

#[lsm(hook = "path_rename")]
pub fn kp_degrade_path_rename(ctx: LsmContext) -> i32 {
    check(&ctx, 5, [ctx.arg(1), path_dentry(ctx.arg(2))], ctx.arg(1))
}

#[lsm(hook = "path_link")]
pub fn kp_degrade_path_link(ctx: LsmContext) -> i32 {
    // Both ends: the new name's directory, and the linked file itself, so
    // an outside file cannot be linked into the allowed directory and
    // written through the link.
    check(&ctx, 3, [path_dentry(ctx.arg(1)), ctx.arg(0)], ctx.arg(2))
}

#[lsm(hook = "path_symlink")]
pub fn kp_degrade_path_symlink(ctx: LsmContext) -> i32 {
    check(&ctx, 3, [path_dentry(ctx.arg(0)), 0], ctx.arg(1))
}

/// Also the O_CREAT path: creating a file in a directory.
#[lsm(hook = "path_mknod")]
pub fn kp_degrade_path_mknod(ctx: LsmContext) -> i32 {
    check(&ctx, 4, [path_dentry(ctx.arg(0)), 0], ctx.arg(1))
}

#[lsm(hook = "path_chmod")]
pub fn kp_degrade_path_chmod(ctx: LsmContext) -> i32 {
    let d = path_dentry(ctx.arg(0));
    check(&ctx, 2, [d, 0], d)
}

#[lsm(hook = "path_chown")]
pub fn kp_degrade_path_chown(ctx: LsmContext) -> i32 {
    let d = path_dentry(ctx.arg(0));
    check(&ctx, 3, [d, 0], d)
}
