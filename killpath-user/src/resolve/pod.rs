//! `adopt --pod UID`: the kubelet's cgroup for a pod, both drivers:
//! systemd `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice`
//! (besteffort alike; Guaranteed pods directly `kubepods.slice/kubepods-pod<UID>.slice`),
//! with the UID's `-` written `_` (a `-` in a slice name is a nesting
//! level); cgroupfs `kubepods/burstable/pod<UID>` (Guaranteed: `kubepods/pod<UID>`).
//! The kubepods root may sit below another cgroup (`--cgroup-root`, a
//! kubelet in a container): the walk finds it wherever it is.

use super::{
    walk::{self, Scope},
    Found, Resolved,
};
use crate::error::{Error, Result};

/// A pod UID (a UUID), lowercase with dashes; `_` accepted for `-`.
pub fn canonical(spec: &str) -> Result<String> {
    let uid = spec.replace('_', "-").to_ascii_lowercase();
    let ok = uid.len() == 36 && uid.char_indices().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
    if ok {
        Ok(uid)
    } else {
        Err(Error::InvalidRequest(format!("pod UID {spec:?}: not a UID (8-4-4-4-12 hex digits, as `kubectl get pod -o jsonpath={{.metadata.uid}}` prints)")))
    }
}

/// The pod UID (canonical) a cgroup directory name carries, if any.
pub fn uid_in(name: &str) -> Option<String> {
    let raw = if let Some(stem) = name.strip_suffix(".slice") {
        // kubepods-pod<UID_>.slice, kubepods-<qos>-pod<UID_>.slice
        let (parents, uid) = stem.rsplit_once("-pod")?;
        if !parents.starts_with("kubepods") {
            return None;
        }
        uid
    } else {
        name.strip_prefix("pod")?
    };
    canonical(raw).ok()
}

pub(super) fn resolve(scope: Scope, spec: &str) -> Result<Resolved> {
    let uid = canonical(spec)?;
    let (matches, seen) = walk::find(scope, |n| uid_in(n).is_some_and(|u| u == uid))?;
    let slice = uid.replace('-', "_");
    let searched = || {
        format!(
            "searched {seen} cgroups under {} (depth {}) for kubepods[-QOS]-pod{slice}.slice and pod{uid} ({})",
            scope.mount.display(),
            walk::MAX_DEPTH,
            walk::NOT_SEARCHED
        )
    };
    match super::one("pod", spec, matches, searched)? {
        Some(path) => Ok(Resolved { kind: "pod", id: spec.to_owned(), canonical: uid, found: Found::Cgroup(path), via: "cgroup layout".into() }),
        None => Err(Error::NameNotFound { kind: "pod", id: spec.to_owned(), searched: searched() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c5a1e-8b2d-4c6f-9a7e-1d2b3c4d5e6f";

    #[test]
    fn both_drivers_and_every_qos_class_carry_the_uid() {
        let u = UID.replace('-', "_");
        for name in
            [format!("kubepods-burstable-pod{u}.slice"), format!("kubepods-besteffort-pod{u}.slice"), format!("kubepods-pod{u}.slice"), format!("pod{UID}")]
        {
            assert_eq!(uid_in(&name).as_deref(), Some(UID), "{name}");
        }
    }

    #[test]
    fn other_names_carry_no_uid() {
        let u = UID.replace('-', "_");
        for name in [
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".into(),
            format!("system-pod{u}.slice"),
            format!("cri-containerd-pod{u}.scope"),
            "pod".into(),
            "pod1234".into(),
            "podman.service".into(),
        ] {
            assert_eq!(uid_in(&name), None, "{name}");
        }
    }

    #[test]
    fn uids_are_read_with_dashes_or_underscores_in_any_case() {
        assert_eq!(canonical(UID).unwrap(), UID);
        assert_eq!(canonical(&UID.replace('-', "_")).unwrap(), UID);
        assert_eq!(canonical(&UID.to_ascii_uppercase()).unwrap(), UID);
        for bad in ["", "0f3c5a1e", "0f3c5a1e-8b2d-4c6f-9a7e-1d2b3c4d5e6", "0f3c5a1e-8b2d-4c6f-9a7e-1d2b3c4d5e6g", "0f3c5a1e8b2d-4c6f-9a7e-1d2b3c4d5e6f0"] {
            assert!(canonical(bad).is_err(), "{bad:?}");
        }
    }
}
