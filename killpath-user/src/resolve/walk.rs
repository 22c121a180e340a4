//! The cgroup2 tree walk every resolver shares.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// How deep below the mount the walk looks: kubepods' containers sit at
/// depth 4 (kubepods.slice/kubepods-burstable.slice/…pod….slice/…scope),
/// a user's units at 5-6, a kubelet under its own slice a few deeper.
pub(super) const MAX_DEPTH: usize = 12;

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
/// skipped; symlinks are never followed (cgroupfs has none).
pub(super) fn find(scope: Scope, is_match: impl Fn(&str) -> bool) -> (Vec<PathBuf>, usize) {
    let mut found = Vec::new();
    let mut seen = 0;
    let mut stack = vec![(scope.mount.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if scope.skip == Some(path.as_path()) {
                continue;
            }
            seen += 1;
            if e.file_name().to_str().is_some_and(&is_match) {
                found.push(path);
            } else if depth + 1 < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    (found, seen)
}
