//! `throttle --tasks N`: at most N live tasks in a target, enforced by the
//! kernel's pids controller, so fork/clone beyond it fails with EAGAIN in
//! cgroup_can_fork() — exact under concurrent forks, and held with the
//! agent dead (it is cgroup state).
//!
//! Where the pids controller is on the cgroup2 hierarchy (pure v2 hosts,
//! the test VM), the target's own `pids.max` is used. On hybrid hosts
//! (this build host: pids is a v1 controller) the target's tasks are
//! moved into a v1 pids cgroup `<pids mount>/killpath/<name>`; children
//! inherit it at fork, so the whole target stays counted.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    cgroup::Cgroup,
    error::{Error, Result},
};

/// Where a target's task limit lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidsCgroup {
    /// The target's own cgroup2 directory.
    V2(PathBuf),
    /// A v1 pids cgroup holding the target's tasks.
    V1(PathBuf),
}

impl PidsCgroup {
    fn dir(&self) -> &Path {
        match self {
            Self::V2(p) | Self::V1(p) => p,
        }
    }

    /// Live tasks counted by the controller.
    pub fn current(&self) -> Option<u64> {
        fs::read_to_string(self.dir().join("pids.current")).ok()?.trim().parse().ok()
    }

    /// Forks refused because of the limit (`pids.events` "max").
    pub fn refused(&self) -> Option<u64> {
        let ev = fs::read_to_string(self.dir().join("pids.events")).ok()?;
        ev.lines().find_map(|l| l.strip_prefix("max ")).and_then(|n| n.trim().parse().ok())
    }

    pub fn describe(&self) -> String {
        match self {
            Self::V2(p) => format!("cgroup2 pids.max in {}", p.display()),
            Self::V1(p) => format!("cgroup v1 pids controller at {}", p.display()),
        }
    }
}

/// The v1 pids controller's mount point, if any.
fn v1_pids_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids")).then(|| PathBuf::from(f[1]))
    })
}

/// Finds (and sets up) the pids cgroup for a target.
pub fn locate(name: &str, target: &Path) -> Result<PidsCgroup> {
    if target.join("pids.max").exists() {
        return Ok(PidsCgroup::V2(target.to_owned()));
    }
    if let Some(parent) = target.parent() {
        let controllers = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "pids") {
            // Enabling a controller for the parent's children; refused
            // (EBUSY) when the parent itself holds tasks, the cgroup2
            // "no internal processes" rule.
            fs::write(parent.join("cgroup.subtree_control"), "+pids").map_err(Error::cgroup(parent.join("cgroup.subtree_control")))?;
            if target.join("pids.max").exists() {
                return Ok(PidsCgroup::V2(target.to_owned()));
            }
        }
    }
    let mount = v1_pids_mount().ok_or_else(|| {
        Error::Kernel("--tasks needs the pids controller: it is neither enabled on cgroup2 nor mounted as a v1 hierarchy".into())
    })?;
    // Named with the cgroup id too: a name reused for a new target must
    // not inherit an old target's pids cgroup.
    let id = Cgroup::new(target).id()?;
    let dir = mount.join("killpath").join(format!("{name}-{id}"));
    fs::create_dir_all(&dir).map_err(Error::cgroup(&dir))?;
    Ok(PidsCgroup::V1(dir))
}

/// Sets the limit (`None`: lift it). For v1, first moves every task of the
/// target in, repeating until a pass moves nothing: a task forked during
/// a pass inherits its parent's v1 cgroup, so once a pass finds everyone
/// already inside, no task of the target can be outside.
pub fn apply(pids: &PidsCgroup, target: &Path, limit: Option<u64>) -> Result<u64> {
    let value = limit.map_or("max".to_owned(), |n| n.to_string());
    // Limit first, so nothing forked while moving escapes the count.
    fs::write(pids.dir().join("pids.max"), &value).map_err(Error::cgroup(pids.dir().join("pids.max")))?;
    let mut moved = 0;
    if let PidsCgroup::V1(dir) = pids {
        if limit.is_some() {
            let inside = |dir: &Path| -> Vec<i32> {
                fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
            };
            for _ in 0..100 {
                let have = inside(dir);
                let missing: Vec<i32> = Cgroup::new(target).procs_recursive().into_iter().filter(|p| !have.contains(p)).collect();
                if missing.is_empty() {
                    return Ok(moved);
                }
                for pid in missing {
                    // A task that exited meanwhile is fine (ESRCH).
                    if fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                        moved += 1;
                    }
                }
            }
            return Err(Error::Kernel(format!("tasks of {} kept appearing outside {}", target.display(), dir.display())));
        }
    }
    Ok(moved)
}

/// Removes the v1 cgroup of a released target when it is empty.
pub fn cleanup(pids: &PidsCgroup) {
    if let PidsCgroup::V1(dir) = pids {
        let _ = fs::remove_dir(dir);
    }
}
