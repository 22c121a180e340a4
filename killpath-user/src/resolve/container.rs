//! `adopt --container ID`: the cgroup a container runtime made for the
//! container, found by how each runtime names it, for both cgroup drivers:
//!
//! | runtime | systemd driver | cgroupfs driver |
//! | --- | --- | --- |
//! | docker | `system.slice/docker-ID.scope` | `docker/ID` |
//! | containerd (CRI) | `kubepods…pod….slice/cri-containerd-ID.scope` | `kubepods/…/podUID/ID` |
//! | CRI-O | `kubepods…pod….slice/crio-ID.scope` | `kubepods/…/podUID/crio-ID` |
//! | podman | `machine.slice/libpod-ID.scope` | `libpod_parent/libpod-ID` |
//! | runc | `PARENT/runc-ID.scope` (`--systemd-cgroup`) | `ID` (no cgroupsPath) |
//! | containerd (ctr) | `…/containerd-ID.scope` | `NAMESPACE/ID` |
//!
//! The monitors (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) are not
//! the container and never match. An id is matched whole, or by a prefix
//! of at least [`MIN_PREFIX`] hex digits (`docker ps` shows 12) of a
//! 64-hex id. When no cgroup carries the id, the runtimes' state files
//! give the container's init pid ([`super::runtime`]).
use std::path::Path;

use super::{
    runtime,
    walk::{self, Scope},
    Found, Resolved,
};
use crate::error::{Error, Result};

/// The shortest id prefix matched (docker's short id).
pub const MIN_PREFIX: usize = 12;

/// Prefixes the runtimes put before the id in a cgroup name, longest first
/// where one ends another (`cri-containerd-` before `containerd-`).
const PREFIXES: &[&str] = &["cri-containerd-", "containerd-", "docker-", "crio-", "libpod-", "runc-"];

/// Unit types that name a systemd unit, never a bare container id.
const UNIT_SUFFIXES: &[&str] = &[".slice", ".service", ".scope", ".socket", ".mount", ".swap"];

/// A container id as the runtimes accept it (runc: `[A-Za-z0-9_+.-]+`).
pub fn check_id(spec: &str) -> Result<()> {
    let ok = !spec.is_empty() && spec.len() <= 256 && spec != "." && spec != ".." && spec.chars().all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("container id {spec:?}: 1 to 256 letters, digits and _+.- (not . or ..)")))
    }
}

fn is_full_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a cgroup (or state) directory name carries, if any.
pub fn id_in(name: &str) -> Option<&str> {
    if let Some(stem) = name.strip_suffix(".scope") {
        // systemd driver: PREFIX-ID.scope, never a bare ID.scope.
        let id = PREFIXES.iter().find_map(|p| stem.strip_prefix(p))?;
        return (!id.starts_with("conmon-") && !id.is_empty()).then_some(id);
    }
    if UNIT_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return None;
    }
    // cgroupfs driver: crio-ID, libpod-ID, or the bare ID.
    for p in ["crio-", "libpod-"] {
        if let Some(id) = name.strip_prefix(p) {
            return (!id.starts_with("conmon-") && !id.is_empty()).then_some(id);
        }
    }
    Some(name)
}

/// Whether the id `candidate` is the container `query` names: the same
/// id, or a 64-hex id that a hex query of at least [`MIN_PREFIX`] digits
/// begins (case-insensitive, as the runtimes print lowercase).
pub fn matches(query: &str, candidate: &str) -> bool {
    if query == candidate {
        return true;
    }
    query.len() >= MIN_PREFIX
        && query.bytes().all(|b| b.is_ascii_hexdigit())
        && is_full_hex_id(candidate)
        && candidate.to_ascii_lowercase().starts_with(&query.to_ascii_lowercase())
}

pub(super) fn resolve(scope: Scope, spec: &str, state_roots: &[&str]) -> Result<Resolved> {
    check_id(spec)?;
    let (found, seen) = walk::find(scope, |n| id_in(n).is_some_and(|id| matches(spec, id)))?;
    let layouts = "docker-ID.scope, cri-containerd-ID.scope, crio-ID(.scope), libpod-ID(.scope), runc-ID.scope, containerd-ID.scope, ID";
    let searched = || {
        format!(
            "searched {seen} cgroups under {} (depth {}) for {layouts} ({}); and the runtimes' state in {}",
            scope.mount.display(),
            walk::MAX_DEPTH,
            walk::NOT_SEARCHED,
            runtime::describe(state_roots)
        )
    };
    let canonical = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(id_in).unwrap_or(spec).to_owned();
    if let Some(path) = super::one("container", spec, found, searched)? {
        // A cgroup named like the container must hold it: where the
        // runtime's state names the container's init, the init's cgroup is
        // at or below the match, or the match is a decoy (root made an
        // empty cgroup named like the id) and adopting it would leave the
        // container at normal while the answer said "adopted". State that
        // names no running init (stale, ambiguous) is no evidence either way.
        if let Ok(Some(init)) = runtime::init_of(scope.mount, spec, state_roots) {
            if !init.cgroup.path().starts_with(&path) {
                return Err(Error::InvalidRequest(format!(
                    "container {spec:?}: the cgroup named like it, {}, does not hold its init (pid {} in {}, from the runtime's state): refused; adopt by --cgroup",
                    path.display(),
                    init.pid,
                    init.cgroup.path().display()
                )));
            }
        }
        return Ok(Resolved { kind: "container", id: spec.to_owned(), canonical: canonical(&path), found: Found::Cgroup(path), via: "cgroup layout".into() });
    }
    match runtime::find(scope.mount, spec, state_roots)? {
        Some(r) => Ok(r),
        None => Err(Error::NameNotFound { kind: "container", id: spec.to_owned(), searched: searched() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn every_runtime_layout_carries_the_id() {
        for name in [
            format!("docker-{ID}.scope"),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("libpod-{ID}.scope"),
            format!("runc-{ID}.scope"),
            format!("containerd-{ID}.scope"),
            format!("crio-{ID}"),
            format!("libpod-{ID}"),
            ID.to_owned(),
        ] {
            assert_eq!(id_in(&name), Some(ID), "{name}");
        }
    }

    #[test]
    fn monitors_slices_and_units_carry_no_id() {
        for name in [
            format!("crio-conmon-{ID}.scope"),
            format!("libpod-conmon-{ID}.scope"),
            format!("libpod-conmon-{ID}"),
            "system.slice".into(),
            "docker.service".into(),
            format!("{ID}.scope"),
            "session-3.scope".into(),
            "docker-.scope".into(),
        ] {
            assert_eq!(id_in(&name), None, "{name}");
        }
    }

    #[test]
    fn a_short_hex_prefix_matches_a_full_id_only() {
        assert!(matches(ID, ID));
        assert!(matches(&ID[..12], ID));
        assert!(matches(&ID[..12].to_ascii_uppercase(), ID));
        assert!(!matches(&ID[..11], ID), "shorter than docker's short id");
        assert!(!matches("4f1c2b3a9d8e", "4f1c2b3a9d8e-not-hex-at-all-but-long"), "prefix of a non-hex id");
        assert!(!matches("web", "web-2"), "a name matches whole");
        assert!(matches("web-2", "web-2"));
        assert!(!matches(&format!("{}0", &ID[..12]), ID));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("web_1.prod+a-b").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x;rm"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
