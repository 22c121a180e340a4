//! cgroup v2 operations on a target's directory: create, move, freeze,
//! kill, wait until empty. Paths are absolute paths on the cgroup2 mount,
//! which is found from /proc/self/mounts (hybrid hosts mount it at
//! /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup).
use std::{
    fs,
    io::{self, Read, Seek},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};

/// Finds the cgroup2 mount point.
pub fn cgroup2_mount() -> Result<PathBuf> {
    super::mounts::of_type("cgroup2")?.into_iter().next().map(|m| m.dir).ok_or(Error::NoCgroup2)
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

/// One cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
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
        fs::metadata(&self.path).map(|m| m.ino()).map_err(Error::cgroup(&self.path))
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
        self.file("cgroup.procs").exists()
    }

    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::Cgroup { path: self.path.clone(), source: e }),
        }
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        let f = self.file(name);
        fs::write(&f, value).map_err(Error::cgroup(f))
    }

    /// Moves a whole thread group into this cgroup.
    pub fn move_pid(&self, pid: i32) -> Result<()> {
        let f = self.file("cgroup.procs");
        fs::write(&f, pid.to_string()).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            _ => Error::Cgroup { path: f, source: e },
        })
    }

    /// This cgroup and every cgroup below it, parents before children.
    pub fn subtree(&self) -> Vec<Cgroup> {
        let mut out = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(rd) = fs::read_dir(&out[i].path) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(Cgroup::new(e.path()));
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// Pids directly in this cgroup.
    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.file("cgroup.procs")).map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
    }

    /// Pids in this cgroup and every nested cgroup.
    pub fn procs_recursive(&self) -> Vec<i32> {
        self.subtree().iter().flat_map(Cgroup::procs).collect()
    }

    /// `populated` from cgroup.events: 1 while any task lives in the subtree.
    pub fn populated(&self) -> Result<bool> {
        let f = self.file("cgroup.events");
        let text = fs::read_to_string(&f).map_err(Error::cgroup(f))?;
        Ok(events_field(&text, "populated") == Some(1))
    }

    pub fn has_kill(&self) -> bool {
        self.file("cgroup.kill").exists()
    }

    pub fn has_freeze(&self) -> bool {
        self.file("cgroup.freeze").exists()
    }

    /// cgroup.freeze (Linux 5.2): every task of the subtree stops at its
    /// next return to user space; new tasks are born frozen.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// cgroup.kill (Linux 5.14): SIGKILL to every task of the subtree in the
    /// write itself; the kernel also kills tasks forked while it runs
    /// (CGRP_KILL is checked in cgroup_post_fork), so no fork escapes.
    pub fn kill(&self) -> Result<()> {
        self.write("cgroup.kill", "1")
    }

    /// Waits until cgroup.events says `populated 0`, sleeping in poll(2) on
    /// the file (kernfs wakes pollers with POLLPRI on every change) rather
    /// than spinning. Returns false on timeout.
    pub fn wait_empty(&self, timeout: Duration) -> Result<bool> {
        let path = self.file("cgroup.events");
        let mut f = fs::File::open(&path).map_err(Error::cgroup(&path))?;
        let deadline = Instant::now() + timeout;
        let mut buf = String::new();
        loop {
            buf.clear();
            f.rewind().map_err(Error::cgroup(&path))?;
            f.read_to_string(&mut buf).map_err(Error::cgroup(&path))?;
            if events_field(&buf, "populated") == Some(0) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Bounded wait: a notification between our read and poll() is
            // not lost because we re-read after at most 5 ms anyway.
            let ms = left.as_millis().clamp(1, 5) as u16;
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
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

fn events_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
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
