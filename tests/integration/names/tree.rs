//! A cgroup tree a test lays out at the cgroup2 root as systemd, the
//! kubelet or a runtime would, with sleepers in it; killed and removed
//! (deepest first) when dropped.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use killpath::kernel::cgroup::{cgroup2_mount, Cgroup};

use crate::{harness::wait_until, support::cgroup::make_cgroup};

pub(super) struct Tree {
    pub(super) top: PathBuf,
    children: Vec<Child>,
}

impl Tree {
    /// `<cgroup2 mount>/kptest-names-<pid>-<tag>`: unique per test process and test.
    pub(super) fn new(tag: &str) -> Tree {
        let top = cgroup2_mount().expect("cgroup2 mount").join(format!("kptest-names-{}-{tag}", std::process::id()));
        make_cgroup(top.clone());
        Tree { top, children: Vec::new() }
    }

    /// Makes `rel` (and its parents) below the top.
    pub(super) fn cgroup(&self, rel: &str) -> Cgroup {
        make_cgroup(self.top.join(rel))
    }

    /// Starts `n` sleepers inside `cg` (each moves itself in before it
    /// execs sleep) and returns their pids once cgroup.procs lists them.
    pub(super) fn sleepers(&mut self, cg: &Cgroup, n: usize) -> Vec<i32> {
        let mut pids = Vec::new();
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", r#"echo 0 > "$0" && exec sleep 300"#])
                .arg(cg.path().join("cgroup.procs"))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a sleeper");
            pids.push(child.id() as i32);
            self.children.push(child);
        }
        wait_until(Duration::from_secs(10), || pids.iter().all(|p| cg.procs().contains(p)))
            .unwrap_or_else(|| panic!("sleepers {pids:?} never showed in {}", cg.path().display()));
        pids
    }
}

/// Kills everything below `dir` (cgroup.kill) and removes its cgroups, deepest first.
pub(super) fn remove_tree(dir: &Path) {
    let top = Cgroup::new(dir);
    if !top.exists() {
        return;
    }
    let _ = top.kill();
    let _ = top.wait_empty(Duration::from_secs(5));
    for cg in top.subtree().iter().rev() {
        let _ = std::fs::remove_dir(cg.path());
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        remove_tree(&self.top);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
