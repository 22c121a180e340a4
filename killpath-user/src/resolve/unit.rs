//! `adopt --unit foo.service`: systemd puts every unit that runs processes
//! (service, scope, slice, socket, mount, swap) in a cgroup named exactly
//! after the unit, under its slice: `system.slice/foo.service`,
//! `user.slice/user-1000.slice/user@1000.service/app.slice/foo.service`,
//! `a.slice/a-b.slice/foo.service` for `Slice=a-b.slice`. The walk finds it
//! wherever its slice put it (without asking systemd: the agent also runs
//! where systemd is not PID 1, and reads what the kernel has).

use super::{
    walk::{self, Scope},
    Found, Resolved,
};
use crate::error::{Error, Result};

/// Unit types that own a cgroup.
const WITH_CGROUP: &[&str] = &["service", "scope", "slice", "socket", "mount", "swap"];
/// Unit types that never run processes themselves.
const WITHOUT_CGROUP: &[&str] = &["target", "timer", "path", "device", "automount"];

/// The unit name as systemd spells its cgroup: `foo` means `foo.service`
/// (as `systemctl` reads it); a unit type without a cgroup is refused.
pub fn canonical(spec: &str) -> Result<String> {
    let bad = |why: &str| Error::InvalidRequest(format!("unit {spec:?}: {why}"));
    if spec.is_empty() || spec.len() > 255 {
        return Err(bad("a unit name has 1 to 255 characters"));
    }
    if !spec.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)) {
        return Err(bad("a unit name has only letters, digits and :-_.\\@"));
    }
    if spec.starts_with('.') {
        return Err(bad("a unit name does not start with '.'"));
    }
    if spec == "-.slice" {
        return Err(bad("the root slice is the whole host"));
    }
    match spec.rsplit_once('.') {
        Some((stem, ty)) if !stem.is_empty() && WITH_CGROUP.contains(&ty) => Ok(spec.to_owned()),
        Some((_, ty)) if WITHOUT_CGROUP.contains(&ty) => Err(bad(&format!("a .{ty} unit has no cgroup of its own"))),
        _ => Ok(format!("{spec}.service")),
    }
}

pub(super) fn resolve(scope: Scope, spec: &str) -> Result<Resolved> {
    let unit = canonical(spec)?;
    let (matches, seen) = walk::find(scope, |n| n == unit)?;
    let searched =
        || format!("searched {seen} cgroups under {} (depth {}) for a cgroup named {unit} ({})", scope.mount.display(), walk::MAX_DEPTH, walk::NOT_SEARCHED);
    match super::one("unit", spec, matches, searched)? {
        Some(path) => Ok(Resolved { kind: "unit", id: spec.to_owned(), canonical: unit, found: Found::Cgroup(path), via: "cgroup layout".into() }),
        None => Err(Error::NameNotFound { kind: "unit", id: spec.to_owned(), searched: searched() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_a_service() {
        assert_eq!(canonical("nginx").unwrap(), "nginx.service");
        assert_eq!(canonical("getty@tty1").unwrap(), "getty@tty1.service");
        assert_eq!(canonical("foo.bar").unwrap(), "foo.bar.service");
    }

    #[test]
    fn units_with_a_cgroup_keep_their_suffix() {
        for u in ["nginx.service", "session-3.scope", "machine.slice", "user-1000.slice", "docker.socket", "home.mount", "dev-sda2.swap"] {
            assert_eq!(canonical(u).unwrap(), u);
        }
    }

    #[test]
    fn units_without_a_cgroup_and_bad_names_are_refused() {
        for (u, why) in [
            ("multi-user.target", "no cgroup"),
            ("apt-daily.timer", "no cgroup"),
            ("-.slice", "whole host"),
            ("", "1 to 255"),
            ("../etc", "only letters"),
            ("a/b.service", "only letters"),
            ("a b", "only letters"),
            (".service", "start with"),
        ] {
            let e = canonical(u).unwrap_err().to_string();
            assert!(e.contains(why), "{u:?}: {e}");
        }
    }
}
