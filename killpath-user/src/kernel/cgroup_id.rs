//! Cgroups by id, not by path. A task that can mount (root in the host
//! mount namespace) can put a tmpfs or a bind mount over a target's cgroup
//! directory, or over one file in it, and feed a path-based reader fake
//! `cgroup.procs`/`cgroup.events` files while the real tasks run on.
//!
//! The agent therefore opens a target's cgroup from its id: on cgroup2 the
//! cgroup id is the kernfs node id, which is also the directory's inode
//! number and its file handle (`FILEID_KERNFS`, what `name_to_handle_at`
//! returns there), so `open_by_handle_at(cgroup2 root, id)` yields the real
//! directory whatever is mounted over its path. Files are then opened
//! relative to that fd with `openat2(RESOLVE_NO_XDEV)`, which refuses to
//! cross into a mount over any of them.
use std::{
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use nix::{
    fcntl::{openat2, OFlag, OpenHow, ResolveFlag},
    sys::{
        stat::fstat,
        statfs::{fstatfs, statfs, CGROUP2_SUPER_MAGIC},
    },
};

/// `FILEID_KERNFS` (include/linux/exportfs.h): kernfs file handles.
const FILEID_KERNFS: i32 = 0xfe;

/// `struct file_handle` with room for a kernfs handle (the 64-bit id).
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 8],
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

/// Whether `fd` is on a cgroup2 filesystem.
pub fn is_cgroup2(fd: impl AsFd) -> io::Result<bool> {
    Ok(fstatfs(fd).map_err(nix_io)?.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// Opens the cgroup with id `id` on the cgroup2 mount `mount`, by handle:
/// the real directory even if something is mounted over its path. Needs
/// CAP_DAC_READ_SEARCH (the agent and the fallback run as root).
pub fn open_by_id(mount: &Path, id: u64) -> io::Result<OwnedFd> {
    let root: OwnedFd = fs::File::open(mount)?.into();
    if !is_cgroup2(&root)? {
        return Err(io::Error::other(format!("{} is not a cgroup2 filesystem (something is mounted over it)", mount.display())));
    }
    let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, f_handle: id.to_ne_bytes() };
    // SAFETY: h is a struct file_handle whose f_handle holds handle_bytes
    // bytes; the kernel reads it during the call only.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            (&mut h as *mut KernfsHandle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // ESTALE: no cgroup has this id (any more).
        return Err(io::Error::new(e.kind(), format!("no cgroup with id {id} ({e})")));
    }
    // SAFETY: a new fd the kernel just returned; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ino = fstat(&fd).map_err(nix_io)?.st_ino;
    if ino != id || !is_cgroup2(&fd)? {
        return Err(io::Error::other(format!("handle {id} opened inode {ino}, not that cgroup")));
    }
    Ok(fd)
}

/// Opens `name` below the directory `dir` without crossing a mount point
/// or following a symlink: a file bind-mounted over `cgroup.procs` is
/// refused (EXDEV) instead of read.
pub fn open_beneath(dir: impl AsFd, name: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let how =
        OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    openat2(dir, name, how).map_err(nix_io)
}

/// What is wrong with `path` as the cgroup `id`, or None when the path
/// leads to that cgroup (a cgroup2 directory whose inode is the id).
pub fn path_mismatch(path: &Path, id: u64) -> Option<String> {
    let fs_ok = match statfs(path) {
        Ok(s) => s.filesystem_type() == CGROUP2_SUPER_MAGIC,
        Err(e) => return Some(format!("{} cannot be read ({e})", path.display())),
    };
    if !fs_ok {
        return Some(format!("{} is not on cgroup2: something is mounted over the target's cgroup", path.display()));
    }
    match fs::metadata(path) {
        Ok(m) if m.ino() == id => None,
        Ok(m) => Some(format!("{} is cgroup {}, not the target's cgroup {id}", path.display(), m.ino())),
        Err(e) => Some(format!("{} cannot be read ({e})", path.display())),
    }
}
