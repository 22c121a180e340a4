//! The mount table (`/proc/self/mounts`): where cgroup2, the v1 pids
//! hierarchy and bpffs are.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dir: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Parses a mount table: `device dir fstype options dump pass` per line.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_device, dir, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount { dir: PathBuf::from(dir), fstype: fstype.to_owned(), options: options.split(',').map(str::to_owned).collect() })
        })
        .collect()
}

/// The mount table of this process.
pub fn read() -> Result<Vec<Mount>> {
    fs::read_to_string("/proc/self/mounts").map(|t| parse(&t)).map_err(Error::io("reading /proc/self/mounts"))
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2(mounts: &[Mount]) -> Result<PathBuf> {
    mounts.iter().find(|m| m.fstype == "cgroup2").map(|m| m.dir.clone()).ok_or(Error::NoCgroup2)
}

/// The mount point of the cgroup v1 hierarchy holding the pids controller
/// (hybrid hosts), if any.
pub fn v1_pids(mounts: &[Mount]) -> Option<PathBuf> {
    mounts.iter().find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == "pids")).map(|m| m.dir.clone())
}

/// Whether a filesystem of type `fstype` is mounted exactly at `dir`.
pub fn is_mounted(mounts: &[Mount], dir: &Path, fstype: &str) -> bool {
    mounts.iter().any(|m| m.dir == dir && m.fstype == fstype)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "sysfs /sys sysfs rw,nosuid 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec 0 0\n\
        cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,pids 0 0\n\
        bpf /sys/fs/bpf bpf rw,nosuid 0 0\n\
        broken-line\n";

    #[test]
    fn finds_each_filesystem() {
        let m = parse(HYBRID);
        assert_eq!(m.len(), 4, "the short line is skipped");
        assert_eq!(cgroup2(&m).ok(), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v1_pids(&m), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        assert!(is_mounted(&m, Path::new("/sys/fs/bpf"), "bpf"));
        assert!(!is_mounted(&m, Path::new("/sys/fs/bpf"), "cgroup2"));
    }

    #[test]
    fn no_cgroup2() {
        let m = parse("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n");
        assert!(matches!(cgroup2(&m), Err(Error::NoCgroup2)));
        assert_eq!(v1_pids(&m), None);
    }
}
