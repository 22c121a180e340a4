//! The walk, the one-match rule and the runtime state, on directory trees
//! made in a tempdir (the walk reads names only, so plain directories lay
//! out a cgroup tree) and on this test process (a real pid and start time).
use std::{fs, path::Path};

use super::{container, pod, runtime, unit, Found};

fn at(mount: &Path) -> super::Scope<'_> {
    super::Scope { mount, skip: None }
}

fn dirs(root: &Path, rels: &[&str]) {
    for r in rels {
        fs::create_dir_all(root.join(r)).unwrap();
    }
}

const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

#[test]
fn a_unit_is_found_wherever_its_slice_put_it() {
    let t = tempfile::tempdir().unwrap();
    dirs(t.path(), &["a.slice/a-b.slice/job.service/worker", "system.slice/other.service"]);
    let r = unit::resolve(at(t.path()), "job").unwrap();
    assert_eq!(r.found, Found::Cgroup(t.path().join("a.slice/a-b.slice/job.service")));
    assert_eq!(r.canonical, "job.service");
}

#[test]
fn two_matches_are_refused_naming_both() {
    let t = tempfile::tempdir().unwrap();
    dirs(t.path(), &["system.slice/job.service", "user.slice/user-1000.slice/user@1000.service/app.slice/job.service"]);
    let e = unit::resolve(at(t.path()), "job.service").unwrap_err().to_string();
    assert!(e.contains("ambiguous") && e.contains("system.slice/job.service") && e.contains("app.slice/job.service"), "{e}");
}

/// A look-alike in a subtree delegated to another user (its
/// `user@.service`, owned by that uid) is neither a match nor makes the
/// name ambiguous; a pod UID or a container id there neither. Needs root
/// (chown); a plain unprivileged `cargo test` skips it, strict mode fails.
#[test]
fn look_alikes_in_delegated_subtrees_are_not_searched() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("KILLPATH_TEST_STRICT").is_none(), "needs root (chown) and KILLPATH_TEST_STRICT is set");
        eprintln!("skipped: needs root to chown the look-alike subtree");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let user = "user.slice/user-1000.slice/user@1000.service";
    let pod_uid = "0a1b2c3d-1111-2222-3333-444455556666";
    dirs(
        t.path(),
        &[
            "system.slice/job.service",
            &format!("{user}/app.slice/job.service"),
            &format!("{user}/app.slice/kubepods-pod{}.slice", pod_uid.replace('-', "_")),
            &format!("{user}/app.slice/docker-{ID}.scope"),
        ],
    );
    let delegated = t.path().join(user);
    for d in [delegated.clone(), delegated.join("app.slice")] {
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
    }
    let r = unit::resolve(at(t.path()), "job.service").unwrap();
    assert_eq!(r.found, Found::Cgroup(t.path().join("system.slice/job.service")));
    let e = pod::resolve(at(t.path()), pod_uid).unwrap_err().to_string();
    assert!(e.contains("not searched"), "{e}");
    let e = container::resolve(at(t.path()), ID, &[]).unwrap_err().to_string();
    assert!(e.contains("not searched"), "{e}");
}

#[test]
fn nothing_found_names_what_was_searched() {
    let t = tempfile::tempdir().unwrap();
    dirs(t.path(), &["system.slice/a.service", "system.slice/b.service"]);
    let e = unit::resolve(at(t.path()), "job").unwrap_err().to_string();
    assert!(e.contains("no unit \"job\"") && e.contains("searched 3 cgroups") && e.contains("job.service"), "{e}");
    let e = pod::resolve(at(t.path()), "0f3c5a1e-8b2d-4c6f-9a7e-1d2b3c4d5e6f").unwrap_err().to_string();
    assert!(e.contains("kubepods[-QOS]-pod0f3c5a1e_8b2d_4c6f_9a7e_1d2b3c4d5e6f.slice"), "{e}");
}

#[test]
fn a_container_is_its_outermost_cgroup_never_its_monitor() {
    let t = tempfile::tempdir().unwrap();
    let slice = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3c5a1e_8b2d_4c6f_9a7e_1d2b3c4d5e6f.slice";
    dirs(t.path(), &[&format!("{slice}/crio-{ID}.scope/container"), &format!("{slice}/crio-conmon-{ID}.scope")]);
    let r = container::resolve(at(t.path()), &ID[..12], &[]).unwrap();
    assert_eq!(r.found, Found::Cgroup(t.path().join(format!("{slice}/crio-{ID}.scope"))));
    assert_eq!(r.canonical, ID);
    let r = pod::resolve(at(t.path()), "0f3c5a1e-8b2d-4c6f-9a7e-1d2b3c4d5e6f").unwrap();
    assert_eq!(r.found, Found::Cgroup(t.path().join(slice)));
}

/// Start time of this process, as runc records its init's.
fn own_start() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn runc_state_gives_the_init_pid_checked_by_its_start_time() {
    let Ok(mount) = crate::kernel::cgroup::cgroup2_mount() else { return };
    // The cgroup tree walked (empty: no cgroup carries the id) and the state root apart.
    let t = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("runc");
    let me = std::process::id();
    fs::create_dir_all(root.join("web-1")).unwrap();
    fs::write(root.join("web-1/state.json"), format!(r#"{{"init_process_pid": {me}, "init_process_start": {}}}"#, own_start())).unwrap();
    let roots = [root.to_str().unwrap()];
    let r = container::resolve(at(t.path()), "web-1", &roots).unwrap();
    assert!(r.via.contains("init pid") && r.via.contains("web-1/state.json"), "{r:?}");
    // Alone in its cgroup, this process's cgroup is the "container's".
    // Sharing it (cargo, the shell) in the host's pid namespace, the other
    // processes cannot be told apart from exec'd ones of the container:
    // refused rather than only this process's tree moved.
    let own_cgroup = mount.join(crate::kernel::cgroup::cgroup_of(me as i32).unwrap().trim_start_matches('/'));
    let alone = own_cgroup != mount && crate::kernel::cgroup::Cgroup::new(&own_cgroup).procs_recursive().iter().all(|p| *p == me as i32);
    match runtime::find(&mount, "web-1", &roots) {
        Ok(Some(r)) => assert!(alone && r.found == Found::Cgroup(own_cgroup), "{r:?}"),
        Ok(None) => panic!("the state file was not found"),
        Err(e) => assert!(!alone && e.to_string().contains("host's pid namespace"), "{e}"),
    }
    // A recorded start time that is not the process's: pid reused.
    fs::write(root.join("web-1/state.json"), format!(r#"{{"init_process_pid": {me}, "init_process_start": {}}}"#, own_start() + 1)).unwrap();
    let e = container::resolve(at(t.path()), "web-1", &roots).unwrap_err().to_string();
    assert!(e.contains("gone or reused"), "{e}");
    let e = container::resolve(at(t.path()), "web-2", &roots).unwrap_err().to_string();
    assert!(e.contains("no container") && e.contains("/runc/ID/state.json"), "{e}");
}

#[test]
fn the_agents_own_targets_are_not_searched() {
    let t = tempfile::tempdir().unwrap();
    dirs(t.path(), &["killpath/web", "web"]);
    let skip = t.path().join("killpath");
    let e = container::resolve(at(t.path()), "web", &[]).unwrap_err().to_string();
    assert!(e.contains("ambiguous"), "{e}");
    let r = container::resolve(super::Scope { mount: t.path(), skip: Some(&skip) }, "web", &[]).unwrap();
    assert_eq!(r.found, Found::Cgroup(t.path().join("web")));
}
