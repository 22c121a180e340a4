//! cgroup directories as the sandbox tears them down: every task of a
//! subtree killed, then the directories removed, deepest first.
use std::{
    fs::{self, File},
    os::{
        fd::AsFd as _,
        unix::fs::{FileExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::error::{Error, Result};

/// How long the tasks of a subtree may take to die after `cgroup.kill`.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long they may take when killed pid by pid (no `cgroup.kill`).
const FALLBACK_WAIT: Duration = Duration::from_secs(5);

/// `root` and every directory below it, parents before children.
pub fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_owned()];
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned() {
        if let Ok(rd) = fs::read_dir(&d) {
            dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        i += 1;
    }
    dirs
}

/// Waits until the line `key` of `cg`'s `cgroup.events` says `want`.
/// Sleeps in poll(2) on the file (kernfs wakes pollers with POLLPRI on every
/// change), re-reading at least every 10 ms, so a change between a read and
/// the poll is never missed for long.
pub fn wait_event(cg: &Path, key: &str, want: &str, timeout: Duration) -> Result<()> {
    let path = cg.join("cgroup.events");
    let file = File::open(&path).map_err(Error::io(format!("opening {}", path.display())))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let n = file.read_at(&mut buf, 0).map_err(Error::io(format!("reading {}", path.display())))?;
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let done = text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(key) && w.next() == Some(want)
        });
        if done {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::EventTimeout { path, key: key.into(), want: want.into(), timeout });
        }
        let ms = u16::try_from(left.as_millis().min(10)).unwrap_or(10);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
}

/// Kills every task below cgroup `root`: thaws the subtree, writes
/// `cgroup.kill` (Linux 5.14: SIGKILL to the whole subtree in the write,
/// forks racing with it included), else SIGKILLs pid by pid; waits until
/// `populated 0`. Returns whether the subtree is empty.
pub fn kill_tree(root: &Path) -> bool {
    if !root.exists() {
        return true;
    }
    let dirs = subtree(root);
    for d in &dirs {
        let _ = fs::write(d.join("cgroup.freeze"), "0");
    }
    let _ = fs::write(root.join("cgroup.kill"), "1");
    if wait_event(root, "populated", "0", KILL_WAIT).is_ok() {
        return true;
    }
    for d in &dirs {
        for pid in fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    wait_event(root, "populated", "0", FALLBACK_WAIT).is_ok()
}

/// Removes `root` and every directory below it, deepest first (a cgroup
/// can only be removed once it has no children and no tasks).
pub fn remove_dirs(root: &Path) {
    if !root.exists() {
        return;
    }
    for d in subtree(root).iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

/// Kills every task below cgroup `root`, then removes the cgroups, `root`
/// included (if a task would not die, what can be removed is).
pub fn remove_tree(root: &Path) {
    kill_tree(root);
    remove_dirs(root);
}

/// The v1 pids cgroups the agent made for the targets below
/// `cgroup_parent` on a hybrid host: `<v1 mount>/killpath/<name>-<cgroup
/// id>` (the cgroup id being the target directory's inode number). Only
/// those that exist.
pub fn agent_v1_dirs(cgroup_parent: &Path, v1_mount: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(cgroup_parent) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let ino = e.metadata().ok()?.ino();
            let name = e.file_name().to_string_lossy().into_owned();
            Some(v1_mount.join("killpath").join(format!("{name}-{ino}")))
        })
        .filter(|d| d.is_dir())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn subtree_lists_parents_first_and_removal_goes_deepest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        for d in ["a/b/c", "a/d", "e"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::write(root.join("a/file"), "not a directory").expect("file");
        let all = subtree(&root);
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(all.first(), Some(&root));
        let pos = |p: &str| all.iter().position(|d| d == &root.join(p)).expect(p);
        assert!(pos("a") < pos("a/b") && pos("a/b") < pos("a/b/c"));
        // Plain directories stand in for cgroups here: rmdir fails on
        // `a` (it holds a file) and so on `root`, but the rest goes.
        remove_dirs(&root);
        assert!(!root.join("a/b").exists() && !root.join("a/d").exists() && !root.join("e").exists());
        assert!(root.join("a/file").exists());
    }

    #[test]
    fn agent_v1_dirs_are_named_by_target_and_cgroup_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (parent, v1) = (dir.path().join("parent"), dir.path().join("v1"));
        fs::create_dir_all(parent.join("web")).expect("mkdir");
        fs::create_dir_all(parent.join("db")).expect("mkdir");
        let ino = fs::metadata(parent.join("web")).expect("stat").ino();
        let web = v1.join("killpath").join(format!("web-{ino}"));
        fs::create_dir_all(&web).expect("mkdir");
        assert_eq!(agent_v1_dirs(&parent, &v1), vec![web], "only the existing one");
    }
}
