//! The cgroup2 tree walk every resolver shares.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// How deep below the mount the walk looks: kubepods' containers sit at
/// depth 4 (kubepods.slice/kubepods-burstable.slice/…pod….slice/…scope),
/// a user's units at 5-6, a kubelet under its own slice a few deeper.
pub(super) const MAX_DEPTH: usize = 12;

/// How many cgroups the walk reads before it gives up: the walk runs
/// under the agent's state lock, and a workload with a delegated subtree
/// could create cgroups by the hundred thousand to make it slow.
pub(super) const MAX_CGROUPS: usize = 50_000;

/// Said in every "not found" message: what the walk leaves out.
pub(super) const NOT_SEARCHED: &str = "cgroups owned by a non-root user (delegated subtrees, e.g. user@UID.service) are not searched";

/// Where to look: the cgroup2 mount, less the agent's own cgroup parent
/// (killpath's targets are not what an admin's name means: a runc id
/// `web` must not also match killpath's target `web`).
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub mount: &'a Path,
    pub skip: Option<&'a Path>,
}

/// The cgroups whose directory name `is_match` accepts, outermost only (a
/// match inside a match is the container's or unit's own sub-cgroup), and
/// how many cgroups were looked at. Cgroups removed during the walk are
/// skipped; symlinks are never followed (cgroupfs has none). A cgroup
/// owned by another user than the mount's (root) is neither matched nor
/// entered: an
/// unprivileged user can create cgroups only there (delegation), and a
/// look-alike it made (`nginx.service` under its `user@.service`,
/// `pod<UID>` in its own subtree) must not make the admin's name
/// ambiguous or, worse, be adopted instead of the real one.
pub(super) fn find(scope: Scope, is_match: impl Fn(&str) -> bool) -> Result<(Vec<PathBuf>, usize)> {
    let mut found = Vec::new();
    let mut seen = 0;
    let mut stack = vec![(scope.mount.to_path_buf(), 0usize)];
    // The mount's owner: root on a host (a test's tree: its user).
    let owner = fs::metadata(scope.mount).map_or(0, |m| m.uid());
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if scope.skip == Some(path.as_path()) || !e.metadata().is_ok_and(|m| m.uid() == owner) {
                continue;
            }
            seen += 1;
            if seen > MAX_CGROUPS {
                return Err(Error::InvalidRequest(format!(
                    "more than {MAX_CGROUPS} cgroups under {}: the name lookup stopped; adopt by --cgroup PATH or --pid",
                    scope.mount.display()
                )));
            }
            if e.file_name().to_str().is_some_and(&is_match) {
                found.push(path);
            } else if depth + 1 < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    Ok((found, seen))
}
