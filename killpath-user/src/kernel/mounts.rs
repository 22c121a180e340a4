//! The mount table, read from `/proc/self/mounts`: the one place that
//! parses it. Paths are never hard-coded: hybrid hosts mount cgroup2 at
//! /sys/fs/cgroup/unified, and bpffs is not mounted on the build hosts.
use std::{fs, path::PathBuf};

use crate::error::{Error, Result};

/// One line of `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dir: PathBuf,
    pub fstype: String,
    /// Mount options (`rw`, `nosuid`, and for cgroup v1 the controllers).
    pub options: Vec<String>,
}

/// Every mount of this process's mount namespace.
pub fn all() -> Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mounts").map_err(Error::io("reading /proc/self/mounts"))?;
    Ok(parse(&text))
}

/// Parses the text of `/proc/self/mounts`.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            Some(Mount { dir: PathBuf::from(dir), fstype: fstype.to_owned(), options: options.split(',').map(str::to_owned).collect() })
        })
        .collect()
}

/// Mount points of one filesystem type, in mount order.
pub fn of_type(fstype: &str) -> Result<Vec<Mount>> {
    Ok(all()?.into_iter().filter(|m| m.fstype == fstype).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_layout() {
        let text = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,nosuid,pids 0 0\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dir, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].fstype, "cgroup2");
        assert!(m[1].options.iter().any(|o| o == "pids"));
    }
}
