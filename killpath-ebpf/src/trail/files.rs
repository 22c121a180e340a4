//! The trail's file events (BPF LSM only): FILE_CREATE, FILE_WRITE,
//! FILE_TRUNCATE, FILE_RENAME and FILE_UNLINK with the file's absolute
//! path, and per-file write counters in KP_TRAIL_FILE_WRITES.
//!
//! Hooks (Linux 6.1 signatures; the last argument of a BPF LSM program is
//! the previous program's return value, handed on unchanged: these
//! programs only observe):
//! - `path_mknod` (mknod(2) and the O_CREAT path of open, called from
//!   may_o_create only when the name does not exist yet), `path_mkdir`,
//!   `path_symlink`, `path_link` → FILE_CREATE;
//! - `file_open` with FMODE_WRITE and `file_permission` with MAY_WRITE (one
//!   call per write(2)/writev(2), from rw_verify_area) → the first of them
//!   per (target, file) is a FILE_WRITE event, every write counts in
//!   KP_TRAIL_FILE_WRITES;
//! - `path_truncate` (truncate(2), open O_TRUNC of an existing file, and
//!   ftruncate(2) up to Linux 6.1), `file_truncate` (ftruncate(2) from
//!   6.2) → FILE_TRUNCATE;
//! - `path_rename` → FILE_RENAME (old path NUL new path);
//! - `path_unlink`, `path_rmdir` → FILE_UNLINK.
//!
//! The hooks run before the operation: an operation the filesystem fails
//! afterwards (ENOSPC, a lost EEXIST race) is still recorded. An operation
//! an earlier BPF LSM program refuses (degrade's fs.write, protect) is not:
//! the first non-zero return ends the chain before these programs, which
//! are attached after them.
//!
//! Paths are built by walking d_parent and, at a mount's root, continuing
//! at its mount point in the parent mount (what d_path does, without its
//! locks: a rename racing the walk can give a stale name, never a fault,
//! since every read is bpf_probe_read_kernel). They are absolute from the
//! root of the initial mount namespace (a container's /data/x is recorded
//! as the host's path of it).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, generated::bpf_probe_read_kernel_str},
    macros::{lsm, map},
    maps::{Array, PerCpuArray},
    programs::LsmContext,
};
use killpath_common::{
    trail::{kind, FileKey, FileValue, TrailEvent, LOST_FILES, TEXT_BYTES},
    trail_files::FileOffsets,
    KernelOffsets,
};

use super::{enabled, lost, recording, EVENTS, FILE_WRITES};
use crate::{kcgroup::read, maps::OFFSETS, throttle::bucket::xadd};

/// Path components walked (directories and mount crossings); a deeper
/// path is recorded from its deepest components, marked truncated.
const MAX_DEPTH: usize = 32;
/// Bytes read per component: NAME_MAX and its NUL.
const NAME_READ: usize = 256;
const FMODE_WRITE: u32 = 0x2;
const MAY_WRITE: i32 = 0x2;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const BPF_NOEXIST: u64 = 1;

#[map(name = "KP_TRAIL_FILE_OFFSETS")]
static FILE_OFFSETS: Array<FileOffsets> = Array::with_max_entries(1, 0);

/// Per-CPU room to build an event: `slack` after the event's text (its
/// last field) lets a component be read at any text offset with a
/// constant size the verifier can bound; what lands past the text is cut.
#[repr(C)]
struct Scratch {
    ev: TrailEvent,
    slack: [u8; NAME_READ],
    /// Leaf to root: a component's name pointer, or 0 for a mount crossing.
    names: [u64; MAX_DEPTH],
    /// Entries of `names` in use, and 1 while the walk has not reached the
    /// root. Kept in the map, not in registers: the verifier then sees one
    /// unknown value after the walk instead of one exact value per exit
    /// iteration, each explored on its own (BPF program too large).
    depth: u64,
    incomplete: u64,
}

#[map(name = "KP_TRAIL_FILE_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The offsets, when every one the walk follows is known.
#[inline(always)]
fn offsets() -> Option<(&'static KernelOffsets, &'static FileOffsets)> {
    let o = OFFSETS.get(0)?;
    let f = FILE_OFFSETS.get(0)?;
    if o.fs_valid == 0 || o.names_valid == 0 || f.valid == 0 {
        return None;
    }
    Some((o, f))
}

/// Appends the absolute path of `dentry` in mount `mnt` (a `struct
/// vfsmount *`) to the event text at `start`; returns the end offset.
/// Written for the verifier: one step per iteration with a single counter,
/// offsets masked, so the states at each loop head are prunable.
#[inline(always)]
fn write_path(s: &mut Scratch, o: &KernelOffsets, f: &FileOffsets, mnt: u64, dentry: u64, start: usize) -> usize {
    // Leaf to root, one step per iteration: a component's name, or, at a
    // mount's root, the crossing to its mount point in the parent mount
    // (struct mount embeds the vfsmount at mount_mnt).
    s.depth = 0;
    s.incomplete = 1;
    let mut d = dentry;
    let mut m = mnt;
    let mut i = 0usize;
    while i < MAX_DEPTH {
        if d == 0 || m == 0 {
            break;
        }
        let parent = read::<u64>(d, o.dentry_d_parent).unwrap_or(0);
        let root = read::<u64>(m, f.vfsmount_mnt_root).unwrap_or(0);
        let mut name = 0u64;
        if d == root || parent == d {
            let mount = m.wrapping_sub(u64::from(f.mount_mnt));
            let up = read::<u64>(mount, f.mount_parent).unwrap_or(0);
            if up == 0 || up == mount {
                s.incomplete = 0;
                break;
            }
            d = read::<u64>(mount, f.mount_mountpoint).unwrap_or(0);
            m = up + u64::from(f.mount_mnt);
        } else {
            name = read::<u64>(d + u64::from(o.dentry_d_name), o.qstr_name).unwrap_or(0);
            d = parent;
        }
        s.names[i & (MAX_DEPTH - 1)] = name;
        i += 1;
        s.depth = i as u64;
    }
    // SAFETY: fields of the scratch value, read back from memory on purpose.
    let (n, incomplete) = unsafe { (core::ptr::read_volatile(&s.depth), core::ptr::read_volatile(&s.incomplete)) };
    if incomplete != 0 {
        s.ev.truncated = 1;
    }
    // Root to leaf: "/" name, each read at a masked offset so the verifier
    // sees text + [0, TEXT_BYTES) + NAME_READ inside the scratch value.
    let text = s.ev.text.as_mut_ptr();
    let mut off = start & (2 * TEXT_BYTES - 1);
    let mut wrote = false;
    let mut k = 0u64;
    while k < MAX_DEPTH as u64 {
        if k >= n {
            break;
        }
        let name = s.names[((n - 1 - k) as usize) & (MAX_DEPTH - 1)];
        if name != 0 {
            if off >= TEXT_BYTES - 1 {
                s.ev.truncated = 1;
                break;
            }
            // SAFETY: off < TEXT_BYTES, inside text.
            unsafe { *text.add(off & (TEXT_BYTES - 1)) = b'/' };
            off += 1;
            // SAFETY: destination text + [0, TEXT_BYTES) with NAME_READ bytes
            // stays inside text and slack; the source is a kernel pointer
            // read by the helper, which faults safely.
            let r = unsafe { bpf_probe_read_kernel_str(text.add(off & (TEXT_BYTES - 1)).cast(), NAME_READ as u32, name as *const _) };
            if r > 1 {
                off += (r as usize - 1) & (NAME_READ - 1);
            }
            off &= 2 * TEXT_BYTES - 1;
            wrote = true;
        }
        k += 1;
    }
    if !wrote && off < TEXT_BYTES {
        // The root itself.
        // SAFETY: off < TEXT_BYTES.
        unsafe { *text.add(off & (TEXT_BYTES - 1)) = b'/' };
        off += 1;
    }
    if off > TEXT_BYTES {
        s.ev.truncated = 1;
        off = TEXT_BYTES;
    }
    off
}

/// One path of an event: the mount and the dentry.
#[derive(Clone, Copy)]
struct At {
    mnt: u64,
    dentry: u64,
}

/// `struct path *` → its mount and dentry.
#[inline(always)]
fn at_path(f: &FileOffsets, o: &KernelOffsets, path: u64) -> At {
    At { mnt: read::<u64>(path, f.path_mnt).unwrap_or(0), dentry: read::<u64>(path, o.path_dentry).unwrap_or(0) }
}

/// The dentry `dentry` in the directory `dir` (a `struct path *`): same mount.
#[inline(always)]
fn at_in(f: &FileOffsets, dir: u64, dentry: u64) -> At {
    At { mnt: read::<u64>(dir, f.path_mnt).unwrap_or(0), dentry }
}

/// Records one event of `kind` naming `a` (and `b`, after a NUL, for a rename).
#[inline(always)]
fn try_event(kind: u32, target: u64, level: u32, a: At, b: Option<At>) -> Result<(), ()> {
    let (o, f) = offsets().ok_or(())?;
    let s = SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's scratch slot; BPF LSM programs do not nest on a CPU
    // within one program, and each program fills it before output.
    let s = unsafe { &mut *s };
    // SAFETY: helpers without pointer arguments.
    let (pid_tgid, uid_gid, now) = unsafe { (bpf_get_current_pid_tgid(), bpf_get_current_uid_gid(), bpf_ktime_get_ns()) };
    s.ev.target = target;
    s.ev.time_ns = now;
    s.ev.value = 0;
    s.ev.kind = kind;
    s.ev.level = level;
    s.ev.pid = (pid_tgid >> 32) as u32;
    s.ev.tid = pid_tgid as u32;
    s.ev.uid = uid_gid as u32;
    s.ev.arg = 0;
    s.ev.peer = 0;
    s.ev.proto = 0;
    s.ev.family = 0;
    s.ev.addr = [0; 4];
    s.ev.port = 0;
    s.ev.truncated = 0;
    s.ev._pad = 0;
    s.ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let mut end = write_path(s, o, f, a.mnt, a.dentry, 0);
    if let Some(b) = b {
        if end < TEXT_BYTES - 1 {
            s.ev.text[end & (TEXT_BYTES - 1)] = 0;
            end = write_path(s, o, f, b.mnt, b.dentry, end + 1);
        } else {
            s.ev.truncated = 1;
        }
    }
    s.ev.text_len = end as u32;
    if EVENTS.output::<TrailEvent>(&s.ev, 0).is_err() {
        lost(target, kind);
    }
    Ok(())
}

/// An event of `kind` for the current task, when its target records files.
#[inline(always)]
fn event(kind: u32, a: At, b: Option<At>) {
    let Some(cfg) = enabled() else { return };
    if cfg.files == 0 {
        return;
    }
    let Some(guard) = crate::targets::config() else { return };
    if let Some((target, level)) = recording(&guard) {
        let _ = try_event(kind, target, level, a, b);
    }
}

/// A write to `file` (a `struct file *`, `open` = it is being opened for
/// writing): counted per (target, device, inode); the first one seen is a
/// FILE_WRITE event with the path. Regular files only: writes to ttys,
/// pipes, sockets and /dev/null change no file.
#[inline(always)]
fn try_write(file: u64, open: bool) -> Result<(), ()> {
    let cfg = enabled().ok_or(())?;
    if cfg.files == 0 {
        return Ok(());
    }
    let guard = crate::targets::config().ok_or(())?;
    let (target, level) = recording(&guard).ok_or(())?;
    let (o, f) = offsets().ok_or(())?;
    let path = file + u64::from(o.file_f_path);
    let dentry = read::<u64>(path, o.path_dentry).ok_or(())?;
    let inode = read::<u64>(dentry, o.dentry_d_inode).filter(|i| *i != 0).ok_or(())?;
    let key = FileKey {
        target,
        dev: u64::from(read::<u64>(inode, o.inode_i_sb).and_then(|sb| read::<u32>(sb, o.sb_s_dev)).unwrap_or(0)),
        ino: read::<u64>(inode, o.inode_i_ino).unwrap_or(0),
    };
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = FILE_WRITES.get_ptr_mut(key) {
        if !open {
            // SAFETY: v points into the map value, alive for the program.
            unsafe {
                xadd(&raw mut (*v).writes, 1);
                (*v).last_ns = now;
            }
        }
        return Ok(());
    }
    if read::<u16>(inode, o.inode_i_mode).unwrap_or(0) & S_IFMT != S_IFREG {
        return Ok(());
    }
    let first = FileValue { writes: u64::from(!open), bytes: 0, first_ns: now, last_ns: now };
    match FILE_WRITES.insert(key, first, BPF_NOEXIST) {
        Ok(()) => try_event(kind::FILE_WRITE, target, level, at_path(f, o, path), None),
        // -EEXIST: another CPU inserted it first and records the event.
        Err(-17) => Ok(()),
        Err(_) => {
            lost(target, LOST_FILES);
            Ok(())
        }
    }
}

#[lsm(hook = "file_open")]
pub fn kp_trail_file_open(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(1);
    }
    let file: u64 = ctx.arg(0);
    if let Some(o) = OFFSETS.get(0) {
        if read::<u32>(file, o.file_f_mode).unwrap_or(0) & FMODE_WRITE != 0 {
            let _ = try_write(file, true);
        }
    }
    ctx.arg(1)
}

/// Every read and write on the host passes here: one config read when
/// nothing records; reads return before it.
#[lsm(hook = "file_permission")]
pub fn kp_trail_file_permission(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(2);
    }
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE != 0 {
        let _ = try_write(ctx.arg(0), false);
    }
    ctx.arg(2)
}

#[lsm(hook = "path_truncate")]
pub fn kp_trail_path_truncate(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(1);
    }
    if let Some((o, f)) = offsets() {
        event(kind::FILE_TRUNCATE, at_path(f, o, ctx.arg(0)), None);
    }
    ctx.arg(1)
}

/// ftruncate(2) on Linux 6.2+ (attached only where the hook exists).
#[lsm(hook = "file_truncate")]
pub fn kp_trail_file_truncate(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(1);
    }
    if let Some((o, f)) = offsets() {
        let file: u64 = ctx.arg(0);
        event(kind::FILE_TRUNCATE, at_path(f, o, file + u64::from(o.file_f_path)), None);
    }
    ctx.arg(1)
}

#[lsm(hook = "path_unlink")]
pub fn kp_trail_path_unlink(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(2);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_UNLINK, at_in(f, ctx.arg(0), ctx.arg(1)), None);
    }
    ctx.arg(2)
}

#[lsm(hook = "path_rmdir")]
pub fn kp_trail_path_rmdir(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(2);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_UNLINK, at_in(f, ctx.arg(0), ctx.arg(1)), None);
    }
    ctx.arg(2)
}

/// mknod(2), and open(O_CREAT) of a name that does not exist yet.
#[lsm(hook = "path_mknod")]
pub fn kp_trail_path_mknod(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(4);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_CREATE, at_in(f, ctx.arg(0), ctx.arg(1)), None);
    }
    ctx.arg(4)
}

#[lsm(hook = "path_mkdir")]
pub fn kp_trail_path_mkdir(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(3);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_CREATE, at_in(f, ctx.arg(0), ctx.arg(1)), None);
    }
    ctx.arg(3)
}

#[lsm(hook = "path_symlink")]
pub fn kp_trail_path_symlink(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(3);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_CREATE, at_in(f, ctx.arg(0), ctx.arg(1)), None);
    }
    ctx.arg(3)
}

/// A hard link: the new name is created (path_link(old_dentry, new_dir, new_dentry)).
#[lsm(hook = "path_link")]
pub fn kp_trail_path_link(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(3);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_CREATE, at_in(f, ctx.arg(1), ctx.arg(2)), None);
    }
    ctx.arg(3)
}

/// path_rename(old_dir, old_dentry, new_dir, new_dentry, flags).
#[lsm(hook = "path_rename")]
pub fn kp_trail_path_rename(ctx: LsmContext) -> i32 {
    // Nothing records: one config read, before any offset or argument.
    if enabled().is_none() {
        return ctx.arg(5);
    }
    if let Some((_, f)) = offsets() {
        event(kind::FILE_RENAME, at_in(f, ctx.arg(0), ctx.arg(1)), Some(at_in(f, ctx.arg(2), ctx.arg(3))));
    }
    ctx.arg(5)
}
