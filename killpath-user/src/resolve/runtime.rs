//! A container found through its runtime's state instead of its cgroup
//! name: runc (and docker, containerd and CRI-O, which run runc) keeps
//! `ROOT/ID/state.json` with the init pid and its start time. Used when no
//! cgroup carries the id (a `cgroupsPath` of the caller's choosing, or a
//! container that shares its cgroup2 with other processes).
use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{container, Found, Resolved};
use crate::{
    error::{Error, Result},
    kernel::{
        cgroup::{self, Cgroup},
        proctree,
    },
};

/// runc's state roots: runc and CRI-O (`/run/runc`), docker
/// (`/run/docker/runtime-runc/moby`), containerd's shim (one directory per
/// namespace below `/run/containerd/runc`: `*` means each).
pub const STATE_ROOTS: &[&str] = &["/run/runc", "/run/docker/runtime-runc/moby", "/run/containerd/runc/*"];

pub(super) fn describe(roots: &[&str]) -> String {
    roots.iter().map(|r| format!("{r}/ID/state.json")).collect::<Vec<_>>().join(", ")
}

/// Every state directory below the roots (a `*` root expanded one level).
fn state_dirs(roots: &[&str]) -> Vec<PathBuf> {
    let mut bases = Vec::new();
    for r in roots {
        match r.strip_suffix("/*") {
            Some(parent) => bases.extend(fs::read_dir(parent).into_iter().flatten().flatten().map(|e| e.path())),
            None => bases.push(PathBuf::from(r)),
        }
    }
    bases.iter().flat_map(|b| fs::read_dir(b).into_iter().flatten().flatten().map(|e| e.path())).filter(|p| p.join("state.json").is_file()).collect()
}

/// Start time (clock ticks since boot, field 22 of /proc/PID/stat).
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// A running container's init as runc's state records it: the pid (checked
/// by its start time), its cgroup, the state directory and how it was found.
pub(super) struct Init {
    pub pid: i32,
    pub cgroup: Cgroup,
    dir: PathBuf,
    via: String,
}

/// The init of container `spec` from the runtimes' state, if a state file
/// names it.
pub(super) fn init_of(mount: &Path, spec: &str, roots: &[&str]) -> Result<Option<Init>> {
    let dirs: Vec<PathBuf> =
        state_dirs(roots).into_iter().filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| container::matches(spec, n))).collect();
    let Some(dir) = super::one("container", spec, dirs, || format!("runtime state in {}", describe(roots)))? else {
        return Ok(None);
    };
    let file = dir.join("state.json");
    let text = fs::read_to_string(&file).map_err(|e| Error::Io { what: format!("reading {}", file.display()), source: e })?;
    let state: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::InvalidRequest(format!("container {spec:?}: {} is not runc state: {e}", file.display())))?;
    let pid = state["init_process_pid"].as_i64().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1);
    let started = state["init_process_start"].as_u64().or_else(|| state["init_process_start"].as_str().and_then(|s| s.parse().ok()));
    let (Some(pid), Some(started)) = (pid, started) else {
        return Err(Error::InvalidRequest(format!("container {spec:?}: {} has no init pid and start time", file.display())));
    };
    // The pid alone could be another process by now: the container's init
    // is the process with that pid AND that start time.
    if start_time(pid) != Some(started) {
        return Err(Error::InvalidRequest(format!("container {spec:?} is not running: its init pid {pid} ({}) is gone or reused", file.display())));
    }
    let rel = cgroup::cgroup_of(pid)?;
    let cgroup = Cgroup::new(mount.join(rel.trim_start_matches('/')));
    let via = format!("init pid {pid} from {}", file.display());
    Ok(Some(Init { pid, cgroup, dir, via }))
}

pub(super) fn find(mount: &Path, spec: &str, roots: &[&str]) -> Result<Option<Resolved>> {
    let Some(Init { pid, cgroup: cg, dir, via }) = init_of(mount, spec, roots)? else {
        return Ok(None);
    };
    let canonical = dir.file_name().and_then(|n| n.to_str()).unwrap_or(spec).to_owned();
    // Its cgroup is the container's only if everything in it is the init
    // and its descendants; otherwise adopting it would take strangers.
    let tree: std::collections::HashSet<i32> = proctree::descendants(pid).into_iter().collect();
    let procs = cg.procs_recursive();
    let strangers: Vec<i32> = procs.iter().copied().filter(|p| !tree.contains(p)).collect();
    let own = cg.path() != mount && procs.contains(&pid) && strangers.is_empty();
    if !own {
        // Moving only the init's tree would leave out the container's
        // processes that are not its descendants: `runc exec` / `docker
        // exec` start them as children of the runtime's shim, in the
        // container's pid namespace. Those are told apart from strangers
        // by that namespace; a container in the host's pid namespace
        // cannot be told apart at all. Either way: refused, not half done.
        let ns = |p: i32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let init_ns = ns(pid);
        let host_ns = init_ns.is_some() && init_ns == ns(std::process::id() as i32);
        let outside_tree: Vec<i32> = strangers.iter().copied().filter(|p| host_ns || ns(*p) == init_ns).collect();
        if !outside_tree.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "container {spec:?} ({via}): its cgroup {} also holds pids {outside_tree:?}, {}; adopting the init's tree would leave them \
                 outside: adopt by --cgroup {} (taking every process there) or stop them first",
                cg.path().display(),
                if host_ns {
                    "and the container shares the host's pid namespace, so they cannot be told apart from its own"
                } else {
                    "in the container's pid namespace but not descendants of its init (runc/docker exec)"
                },
                cg.path().display(),
            )));
        }
    }
    let found = if own { Found::Cgroup(cg.path().to_owned()) } else { Found::Pid(pid) };
    Ok(Some(Resolved { kind: "container", id: spec.to_owned(), canonical, found, via }))
}
