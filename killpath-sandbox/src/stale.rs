//! Leftovers of runs that died before tearing their sandbox down (SIGKILL,
//! a crash): their agent, tasks, cgroups, pins and directory.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{mounts, sandbox::Sandbox, BPFFS};

/// The pid of the process that made the sandbox named `name`, if `name`
/// is `<prefix>-<pid>` or `<prefix>-<pid>-<n>`.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, n) = rest.split_once('-').unwrap_or((rest, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok()).flatten()
}

/// SIGKILLs every process with `arg` among its arguments.
fn kill_naming(arg: &Path) {
    let arg = arg.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == arg) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Tears down every sandbox with this prefix whose process is gone: its
/// agent (the process whose command line names its pin dir) killed, then
/// as [`Sandbox::teardown`], its directory in the temp dir included.
/// Cgroups and pins mark a sandbox that was not torn down (a directory
/// alone may have been kept on purpose). Returns the dead owners' pids.
pub fn remove_stale(prefix: &str) -> Vec<u32> {
    let Ok(table) = mounts::read() else {
        return Vec::new();
    };
    let Ok(cgroup_mount) = mounts::cgroup2(&table) else {
        return Vec::new();
    };
    let v1_pids = mounts::v1_pids(&table);
    let mut bases = vec![cgroup_mount.clone(), PathBuf::from(BPFFS)];
    bases.extend(v1_pids.clone());
    let mut stale: Vec<(u32, String)> = bases
        .iter()
        .filter_map(|b| fs::read_dir(b).ok())
        .flat_map(|rd| rd.flatten())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            owner(&name, prefix).map(|pid| (pid, name))
        })
        .filter(|(pid, _)| !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    stale.sort_unstable();
    stale.dedup();
    for (_, tag) in &stale {
        let mut sb = Sandbox::at(tag.clone(), env::temp_dir().join(tag), true, cgroup_mount.clone(), v1_pids.clone());
        kill_naming(sb.pin_dir());
        sb.teardown();
    }
    let mut pids: Vec<u32> = stale.into_iter().map(|(pid, _)| pid).collect();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owners() {
        assert_eq!(owner("killpath-bench-123", "killpath-bench"), Some(123));
        assert_eq!(owner("kptest-123-4", "kptest"), Some(123));
        assert_eq!(owner("kptest-123-", "kptest"), None);
        assert_eq!(owner("kptest-x", "kptest"), None);
        assert_eq!(owner("killpath", "killpath"), None);
        assert_eq!(owner("killpath-bench-123", "killpath"), None);
        assert_eq!(owner("kptest-1-2-3", "kptest"), None);
    }
}
