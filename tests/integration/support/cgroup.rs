//! Cgroups the tests make, move processes into and run commands in.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use killpath::kernel::cgroup::Cgroup;

/// The cgroup2 path of `pid` (the `0::` line of /proc/PID/cgroup).
pub(crate) fn cgroup_line(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// `path` relative to the cgroup2 mount, with a leading `/` (as in /proc/PID/cgroup).
pub(crate) fn cgroup_rel(path: &std::path::Path) -> String {
    let mount = killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount");
    format!("/{}", path.strip_prefix(&mount).expect("path below the cgroup2 mount").display())
}

/// Creates a cgroup directory (and parents) for the test.
pub(crate) fn make_cgroup(path: PathBuf) -> Cgroup {
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    let cg = Cgroup::new(path);
    assert!(cg.exists(), "{} is not a cgroup", cg.path().display());
    cg
}

/// Moves `pid` into `cg` (the write to cgroup.procs must succeed; the
/// caller checks where it landed: a stopped target may kill it at once).
pub(crate) fn move_into(cg: &Cgroup, pid: i32) {
    cg.move_pid(pid).unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", cg.path().display()));
}

/// Runs `cmd` to completion inside cgroup `cg`: a fresh `sh` moves itself
/// into the cgroup (writes 0 to cgroup.procs), then execs `cmd`, so no
/// instruction of `cmd` runs outside. Bounded by `timeout -s KILL LIMIT_S`.
pub(crate) fn in_cgroup_within(limit_s: u32, cg: &Path, cmd: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &limit_s.to_string(), "sh", "-c", r#"echo 0 > "$0" && exec "$@""#])
        .arg(cg.join("cgroup.procs"))
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", cg.display()))
}
