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
    error::{Error, Result},
    kernel::cgroup::Cgroup,
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
    crate::kernel::mounts::of_type("cgroup").ok()?.into_iter().find(|m| m.options.iter().any(|o| o == "pids")).map(|m| m.dir)
}

/// The v1 pids cgroup a target's tasks go to on a hybrid host. Named
/// with the cgroup id too: a name reused for a new target must not
/// inherit an old target's pids cgroup.
fn v1_dir(mount: &Path, name: &str, target: &Path) -> Result<PathBuf> {
    let id = Cgroup::new(target).id()?;
    Ok(mount.join("killpath").join(format!("{name}-{id}")))
}

/// The pids cgroup already set up for a target, if any; changes nothing
/// (for `status` and the periodic membership check).
pub fn existing(name: &str, target: &Path) -> Option<PidsCgroup> {
    if target.join("pids.max").exists() {
        return Some(PidsCgroup::V2(target.to_owned()));
    }
    let dir = v1_dir(&v1_pids_mount()?, name, target).ok()?;
    dir.exists().then_some(PidsCgroup::V1(dir))
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
    let mount = v1_pids_mount()
        .ok_or_else(|| Error::Kernel("--tasks needs the pids controller: it is neither enabled on cgroup2 nor mounted as a v1 hierarchy".into()))?;
    let dir = v1_dir(&mount, name, target)?;
    fs::create_dir_all(&dir).map_err(Error::cgroup(&dir))?;
    Ok(PidsCgroup::V1(dir))
}

/// Sets the limit (`None`: lift it); with a limit on v1, moves every
/// task of the target in first.
pub fn apply(pids: &PidsCgroup, target: &Path, limit: Option<u64>) -> Result<u64> {
    let value = limit.map_or("max".to_owned(), |n| n.to_string());
    // Limit first, so nothing forked while moving escapes the count.
    fs::write(pids.dir().join("pids.max"), &value).map_err(Error::cgroup(pids.dir().join("pids.max")))?;
    if limit.is_some() {
        return sync_members(pids, target);
    }
    Ok(0)
}

/// v1 only: moves into the pids cgroup every task of the target that is
/// not in it yet, repeating until a pass moves nothing. A task forked
/// during a pass inherits its parent's v1 cgroup, so once a pass finds
/// everyone inside, no task of the target can be outside. Returns how
/// many tasks moved.
pub fn sync_members(pids: &PidsCgroup, target: &Path) -> Result<u64> {
    let PidsCgroup::V1(dir) = pids else {
        return Ok(0);
    };
    let inside = || -> Vec<i32> { fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect() };
    let mut moved = 0;
    for _ in 0..100 {
        let have = inside();
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
    Err(Error::Kernel(format!("tasks of {} kept appearing outside {}", target.display(), dir.display())))
}

/// Removes the v1 cgroup of a released target when it is empty.
pub fn cleanup(pids: &PidsCgroup) {
    if let PidsCgroup::V1(dir) = pids {
        let _ = fs::remove_dir(dir);
    }
}
