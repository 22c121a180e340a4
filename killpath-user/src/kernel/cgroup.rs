//! cgroup v2 operations on a target's directory: create, move, freeze,
//! kill, wait until empty. Paths are absolute paths on the cgroup2 mount,
//! which is found from /proc/self/mounts (hybrid hosts mount it at
//! /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup).
//!
//! A target's cgroup is opened by its id ([`Cgroup::by_id`], see
//! [`super::cgroup_id`]): every file is then opened relative to the real
//! directory's fd, so a mount over the path cannot feed it fake files.
use std::{
    fs,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use super::cgroup_id;

use crate::error::{Error, Result};

/// Finds the cgroup2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf> {
    super::mounts::of_type("cgroup2")?.into_iter().next().map(|m| m.dir).ok_or(Error::NoCgroup2)
}

/// Whether cgroup path `path` is `base` or below it, as
/// `Path::starts_with` says, but decided on the bytes whenever it can be.
///
/// The agent asks it once per target on a stop's path (targets nested in
/// the stopped one) and on every command's (is the caller inside a
/// target?); a component-wise compare costs ~0.3 µs, so with 1,000
/// targets a third of a millisecond per command. The bytes of two
/// absolute paths are compared up to their first difference: where
/// neither byte there is a `/` or a `.`, the components differ there, and
/// where `base` ends on a component boundary of `path`, it is a prefix.
/// Whatever could be a `//`, a `.` component or a trailing `/` (never in
/// the agent's own paths) is left to `Path::starts_with`.
pub fn is_within(path: &Path, base: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    // One trailing `/` (a caller in the root cgroup is `<mount>/`) does
    // not change the components.
    fn trim(s: &Path) -> &[u8] {
        let s = s.as_os_str().as_bytes();
        if s.len() > 1 {
            s.strip_suffix(b"/").unwrap_or(s)
        } else {
            s
        }
    }
    let (p, b) = (trim(path), trim(base));
    let slow = || path.starts_with(base);
    if p.first() != Some(&b'/') || b.first() != Some(&b'/') {
        return slow();
    }
    if b == b"/" {
        return true;
    }
    let odd = |c: &u8| *c == b'/' || *c == b'.';
    let i = p.iter().zip(b).take_while(|(x, y)| x == y).count();
    if i == b.len() {
        // `base` ends here: a prefix if `path` ends or goes on with a new
        // component, unless `base`'s last component is not a name.
        if b.ends_with(b"/") || b.ends_with(b"/.") || b.ends_with(b"/..") {
            return slow();
        }
        return i == p.len() || p[i] == b'/';
    }
    if i == p.len() {
        // `base` goes on: only `/` and `.` could make that nothing.
        return if b[i..].iter().all(odd) { slow() } else { false };
    }
    if odd(&p[i]) || odd(&b[i]) {
        return slow();
    }
    false
}

/// The cgroup2 path (relative to the mount, starting with `/`) of `pid`.
pub fn cgroup_of(pid: i32) -> Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoSuchProcess(pid)
        } else {
            Error::Io { what: format!("reading {path}"), source: e }
        }
    })?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned).ok_or_else(|| Error::Kernel(format!("{path} has no cgroup2 entry")))
}

/// Whether process `pid` is in cgroup `id` or below it: the process's
/// cgroup (from its `/proc/<pid>/cgroup`) or one of that cgroup's
/// ancestors up to `mount` has inode `id` (a cgroup2 directory's inode is
/// its cgroup id). False when the process or its cgroup cannot be read.
pub fn process_within_id(mount: &Path, pid: i32, id: u64) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(rel) = cgroup_of(pid) else { return false };
    let mut dir = mount.join(rel.trim_start_matches('/'));
    while dir.starts_with(mount) {
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return true;
        }
        if !dir.pop() {
            break;
        }
    }
    false
}

/// One cgroup v2 directory: by path, or (from [`Cgroup::by_id`]) by an fd
/// of the real directory, the path then only naming it in messages.
#[derive(Clone, Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: Option<Arc<OwnedFd>>,
}

impl PartialEq for Cgroup {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for Cgroup {}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), dir: None }
    }

    /// The cgroup whose id is `id`, opened by handle on the cgroup2 mount
    /// (the real directory even under a mount over `path`), and what is
    /// wrong with `path` if it no longer leads there (None: it does).
    pub fn by_id(path: impl Into<PathBuf>, id: u64) -> Result<(Self, Option<String>)> {
        let path = path.into();
        let mount = cgroup2_mount()?;
        let fd = cgroup_id::open_by_id(&mount, id).map_err(Error::cgroup(&path))?;
        let mismatch = cgroup_id::path_mismatch(&path, id);
        Ok((Self { path, dir: Some(Arc::new(fd)) }, mismatch))
    }

    /// The cgroup whose id is `id`, opened by handle on `mount` (the
    /// caller's known cgroup2 mount: no read of the mount table), named
    /// `path` in messages; whether `path` still leads there is not checked
    /// (see [`Cgroup::by_id`] for that).
    pub fn by_id_on(mount: &Path, path: impl Into<PathBuf>, id: u64) -> Result<Self> {
        let path = path.into();
        let fd = cgroup_id::open_by_id(mount, id).map_err(Error::cgroup(&path))?;
        Ok(Self { path, dir: Some(Arc::new(fd)) })
    }

    /// The cgroup whose id is `id`, opened by handle on `mount` (see
    /// [`Cgroup::by_id`]), when only its id is known (the pacer, from a
    /// kernel event); `path` names it in messages.
    pub fn from_id(mount: &Path, id: u64) -> Result<Self> {
        let path = mount.join(format!("<cgroup id {id}>"));
        let fd = cgroup_id::open_by_id(mount, id).map_err(Error::cgroup(&path))?;
        Ok(Self { path, dir: Some(Arc::new(fd)) })
    }

    /// Whether this cgroup is held by an fd of its directory.
    pub fn by_fd(&self) -> bool {
        self.dir.is_some()
    }

    /// Opens one of this cgroup's files: beneath the directory fd (never
    /// crossing a mount) when held by fd, by path otherwise.
    fn open(&self, name: &str, write: bool) -> io::Result<fs::File> {
        match &self.dir {
            Some(d) => {
                let flags = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
                cgroup_id::open_beneath(d.as_ref(), Path::new(name), flags).map(fs::File::from)
            }
            None if write => fs::OpenOptions::new().write(true).open(self.file(name)),
            None => fs::File::open(self.file(name)),
        }
    }

    fn read_file(&self, name: &str) -> io::Result<String> {
        let mut s = String::new();
        self.open(name, false)?.read_to_string(&mut s)?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The kernel's cgroup id: on cgroup2 it is the directory's kernfs inode
    /// number, the same value bpf_get_current_ancestor_cgroup_id() returns.
    pub fn id(&self) -> Result<u64> {
        match &self.dir {
            Some(d) => nix::sys::stat::fstat(d.as_ref()).map(|s| s.st_ino).map_err(|e| Error::cgroup(&self.path)(e.into())),
            None => fs::metadata(&self.path).map(|m| m.ino()).map_err(Error::cgroup(&self.path)),
        }
    }

    /// Nesting depth below the cgroup2 root (root = 0).
    pub fn depth(&self, mount: &Path) -> Result<u32> {
        let rel = self
            .path
            .strip_prefix(mount)
            .map_err(|_| Error::InvalidRequest(format!("{} is not below the cgroup2 mount {}", self.path.display(), mount.display())))?;
        u32::try_from(rel.components().count()).map_err(|_| Error::InvalidRequest("cgroup nested too deep".into()))
    }

    pub fn exists(&self) -> bool {
        match self.dir {
            Some(_) => self.open("cgroup.procs", false).is_ok(),
            None => self.file("cgroup.procs").exists(),
        }
    }

    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::Cgroup { path: self.path.clone(), source: e }),
        }
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        self.open(name, true).and_then(|mut f| f.write_all(value.as_bytes())).map_err(Error::cgroup(self.file(name)))
    }

    /// Moves a whole thread group into this cgroup.
    pub fn move_pid(&self, pid: i32) -> Result<()> {
        let f = self.file("cgroup.procs");
        self.open("cgroup.procs", true).and_then(|mut w| w.write_all(pid.to_string().as_bytes())).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            _ => Error::Cgroup { path: f, source: e },
        })
    }

    /// The cgroups directly below this one.
    fn children(&self) -> Vec<Cgroup> {
        let Some(d) = &self.dir else {
            let Ok(rd) = fs::read_dir(&self.path) else {
                return Vec::new();
            };
            return rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| Cgroup::new(e.path())).collect();
        };
        // By fd: list the real directory, and open each child beneath it
        // (a child with something mounted over it fails with EXDEV and is
        // left out here; its tasks are still killed by the parent's
        // cgroup.kill, which is hierarchical).
        let Ok(mut dir) = cgroup_id::open_beneath(d.as_ref(), Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .and_then(|fd| nix::dir::Dir::from_fd(fd).map_err(io::Error::from))
        else {
            return Vec::new();
        };
        let names: Vec<String> = dir
            .iter()
            .flatten()
            .filter(|e| e.file_type() == Some(nix::dir::Type::Directory))
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| n != "." && n != "..")
            .collect();
        names
            .into_iter()
            .filter_map(|n| {
                let fd = cgroup_id::open_beneath(d.as_ref(), Path::new(&n), OFlag::O_RDONLY | OFlag::O_DIRECTORY).ok()?;
                Some(Cgroup { path: self.path.join(n), dir: Some(Arc::new(fd)) })
            })
            .collect()
    }

    /// This cgroup and every cgroup below it, parents before children.
    pub fn subtree(&self) -> Vec<Cgroup> {
        let mut out = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            let children = out[i].children();
            out.extend(children);
            i += 1;
        }
        out
    }

    /// Pids directly in this cgroup.
    pub fn procs(&self) -> Vec<i32> {
        self.read_file("cgroup.procs").map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
    }

    /// Pids in this cgroup and every nested cgroup.
    pub fn procs_recursive(&self) -> Vec<i32> {
        self.subtree().iter().flat_map(Cgroup::procs).collect()
    }

    /// `populated` from cgroup.events: 1 while any task lives in the subtree.
    pub fn populated(&self) -> Result<bool> {
        let text = self.read_file("cgroup.events").map_err(Error::cgroup(self.file("cgroup.events")))?;
        Ok(events_field(&text, "populated") == Some(1))
    }

    pub fn has_kill(&self) -> bool {
        self.has("cgroup.kill")
    }

    pub fn has_freeze(&self) -> bool {
        self.has("cgroup.freeze")
    }

    fn has(&self, name: &str) -> bool {
        match self.dir {
            // Opening for writing would need the permission, not the
            // file: O_PATH asks only whether it is there.
            Some(ref d) => cgroup_id::open_beneath(d.as_ref(), Path::new(name), OFlag::O_PATH).is_ok(),
            None => self.file(name).exists(),
        }
    }

    /// cgroup.freeze (Linux 5.2): every task of the subtree stops at its
    /// next return to user space; new tasks are born frozen.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// What `cgroup.freeze` asks for (the knob, not whether every task has
    /// stopped yet: `frozen` in cgroup.events lags it while tasks reach
    /// their next return to user space).
    pub fn freeze_requested(&self) -> Result<bool> {
        let text = self.read_file("cgroup.freeze").map_err(Error::cgroup(self.file("cgroup.freeze")))?;
        Ok(text.trim() == "1")
    }

    /// Every write to this cgroup's `name` file from now on, by anyone:
    /// an inotify watch for IN_MODIFY, which `vfs_write` raises after each
    /// successful write(2) on any file (kernfs included), so a thaw (`0`)
    /// written behind a stop is seen even if a re-freeze follows at once
    /// and the knob reads `1` again. Watched through the open file
    /// (`/proc/self/fd/N` is followed to the inode), so a cgroup held by fd
    /// is watched beneath its real directory. inotify merges an event with
    /// an identical one still unread: drain after your own write.
    pub fn watch_writes(&self, name: &str) -> Result<Inotify> {
        let path = self.file(name);
        let f = self.open(name, false).map_err(Error::cgroup(&path))?;
        let io = |e: nix::errno::Errno| Error::Io { what: format!("watching {}", path.display()), source: e.into() };
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io)?;
        ino.add_watch(format!("/proc/self/fd/{}", f.as_raw_fd()).as_str(), AddWatchFlags::IN_MODIFY).map_err(io)?;
        Ok(ino)
    }

    /// cgroup.events, opened for reading: kernfs wakes a poll(2) on it with
    /// POLLPRI whenever `populated` or `frozen` changes (a thaw, too); read
    /// it again after each wake-up to re-arm.
    pub fn events_file(&self) -> Result<fs::File> {
        self.open("cgroup.events", false).map_err(Error::cgroup(self.file("cgroup.events")))
    }

    /// cgroup.kill (Linux 5.14): SIGKILL to every task of the subtree in the
    /// write itself; the kernel also kills tasks forked while it runs
    /// (CGRP_KILL is checked in cgroup_post_fork), so no fork escapes.
    pub fn kill(&self) -> Result<()> {
        self.write("cgroup.kill", "1")
    }

    /// `cgroup.kill` opened for writing, to kill through later
    /// ([`Cgroup::kill_through`]); an error where the kernel has none (before
    /// 5.14) or the file cannot be opened.
    pub fn open_kill(&self) -> io::Result<fs::File> {
        self.open("cgroup.kill", true)
    }

    /// Kills every task of the cgroup through `cgroup.kill` as opened by
    /// [`Cgroup::open_kill`]: the write alone on the stop's path.
    pub fn kill_through(&self, file: &mut fs::File) -> Result<()> {
        file.write_all(b"1").map_err(Error::cgroup(self.file("cgroup.kill")))
    }

    /// Waits until cgroup.events says `populated 0` (see [`Cgroup::wait_event`]).
    /// Returns false on timeout.
    pub fn wait_empty(&self, timeout: Duration) -> Result<bool> {
        self.wait_event("populated", 0, timeout)
    }

    /// Waits until cgroup.events says `key want`, sleeping in poll(2) on the
    /// file with no interval: kernfs wakes pollers with POLLPRI on every
    /// change, and a read records the event count the next poll compares
    /// against, so a change between our read and poll() wakes it at once.
    /// The kernel rate-limits these notifications to one per
    /// CGROUP_FILE_NOTIFY_MIN_INTV (10 ms, since Linux 5.3): a change within
    /// 10 ms of the previous one is announced late (the file itself is
    /// always current). Returns false on timeout.
    pub fn wait_event(&self, key: &str, want: u64, timeout: Duration) -> Result<bool> {
        let path = self.file("cgroup.events");
        let f = self.open("cgroup.events", false).map_err(Error::cgroup(&path))?;
        let deadline = Instant::now() + timeout;
        loop {
            if events_field(&read_events(&f).map_err(Error::cgroup(&path))?, key) == Some(want) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }

    /// The pids of this subtree when it holds at most `limit` processes
    /// (None: more). Stops reading at `limit + 1`, so asking about a fork
    /// bomb costs one page of cgroup.procs, not its whole list.
    pub fn procs_upto(&self, limit: usize) -> Option<Vec<i32>> {
        let mut out = Vec::new();
        for cg in self.subtree() {
            let Ok(f) = cg.open("cgroup.procs", false) else { continue };
            for line in io::BufRead::lines(io::BufReader::new(f)) {
                let Ok(line) = line else { break };
                if let Ok(pid) = line.trim().parse() {
                    out.push(pid);
                }
                if out.len() > limit {
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Removes this cgroup and every nested one (children first). Fails if
    /// any still holds a task.
    pub fn remove(&self) -> Result<()> {
        for cg in self.subtree().iter().rev() {
            fs::remove_dir(&cg.path).map_err(Error::cgroup(&cg.path))?;
        }
        Ok(())
    }
}

/// The whole of cgroup.events, read from offset 0 (pread: one call, and
/// the read re-arms poll(2) on the file).
pub fn read_events(f: &fs::File) -> io::Result<String> {
    let mut buf = [0u8; 256];
    let n = std::os::unix::fs::FileExt::read_at(f, &mut buf, 0)?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// One `key value` field of cgroup.events text.
pub fn events_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_within_id_finds_the_cgroup_and_its_ancestors_only() {
        use std::os::unix::fs::MetadataExt as _;
        let mount = super::cgroup2_mount().expect("cgroup2 mount");
        let pid = std::process::id() as i32;
        let rel = super::cgroup_of(pid).expect("own cgroup");
        let own = std::fs::metadata(mount.join(rel.trim_start_matches('/'))).expect("stat own cgroup").ino();
        let root = std::fs::metadata(&mount).expect("stat the mount").ino();
        assert!(super::process_within_id(&mount, pid, own), "its own cgroup {rel} ({own})");
        assert!(super::process_within_id(&mount, pid, root), "the root cgroup ({root}) holds every process");
        assert!(!super::process_within_id(&mount, pid, u64::MAX), "no cgroup has that id");
        assert!(!super::process_within_id(&mount, i32::MAX, root), "no such process");
    }

    #[test]
    fn is_within_agrees_with_path_starts_with() {
        use std::path::Path;
        let paths = [
            "/sys/fs/cgroup/kp/a",
            "/sys/fs/cgroup/kp/a/b",
            "/sys/fs/cgroup/kp/ab",
            "/sys/fs/cgroup/kp/a/",
            "/sys/fs/cgroup/kp//a/b",
            "/sys/fs/cgroup/kp/./a",
            "/sys/fs/cgroup/kp",
            "/sys/fs/cgroup/",
            "/",
            "/sys/fs/cgroup/kp/a//",
            "/sys/fs/cgroup/kp/a/.",
            "/sys/fs/cgroup/kp/a/..",
            "/sys/fs/cgroup/kp/.a",
            "/sys/fs/cgroup/kp/a./b",
            "/sys/fs/cgroup/kp//",
            "//sys",
            "/sys/fs/cgroup/kp/a/./b",
            "kp/a",
            "kp/a/b",
            "/sys/fs/cgroup/kp/a/.hidden",
            "/sys/fs/cgroup/kp/a.b",
        ];
        for p in paths {
            for b in paths {
                assert_eq!(super::is_within(Path::new(p), Path::new(b)), Path::new(p).starts_with(b), "{p} within {b}");
            }
        }
    }

    use super::*;

    #[test]
    fn events_parse() {
        let t = "populated 1\nfrozen 0\n";
        assert_eq!(events_field(t, "populated"), Some(1));
        assert_eq!(events_field(t, "frozen"), Some(0));
        assert_eq!(events_field(t, "nope"), None);
    }

    #[test]
    fn depth_counts_components() {
        let cg = Cgroup::new("/sys/fs/cgroup/a/b");
        assert_eq!(cg.depth(Path::new("/sys/fs/cgroup")).ok(), Some(2));
        assert!(cg.depth(Path::new("/elsewhere")).is_err());
    }
}
