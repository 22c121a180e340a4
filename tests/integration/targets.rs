//! Tests: targets. run / adopt / release / status round trips, name
//! validation, and the refusals of `adopt`.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use killpath::kernel::cgroup::Cgroup;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{cgroup_line, cgroup_rel, make_cgroup, move_into},
        process::{children, pids, run_bg, show, spawn_outside, text},
        status::{assert_stopped, guard_kills, stop, target_row},
    },
};

/// Directory names directly under `dir` (sorted).
fn subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn listed(agent: &Agent, name: &str) -> bool {
    target_row(agent, name).is_some()
}

/// The cgroup is not frozen (cgroup.freeze 0 and cgroup.events frozen 0).
fn assert_thawed(cg: &Cgroup) {
    let freeze = std::fs::read_to_string(cg.path().join("cgroup.freeze")).expect("cgroup.freeze");
    let events = std::fs::read_to_string(cg.path().join("cgroup.events")).expect("cgroup.events");
    assert_eq!(freeze.trim(), "0", "{} still frozen; events: {events}", cg.path().display());
    assert!(events.lines().any(|l| l == "frozen 0"), "{} events: {events}", cg.path().display());
}

/// A process moved into `cg` keeps running: the guard no longer applies.
fn assert_not_enforced(agent: &Agent, cg: &Cgroup) {
    let p = spawn_outside(&["sleep", "1000"]);
    let kills = guard_kills(agent);
    move_into(cg, p.pid());
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(p.pid()), "a process moved into released {} was killed: enforcement not lifted", cg.path().display());
    assert_eq!(cgroup_line(p.pid()), Some(cgroup_rel(cg.path())));
    assert_eq!(guard_kills(agent), kills);
}

#[test]
fn targets_run_status_release_round_trip() {
    let Some(agent) = Agent::start() else { return };
    let file = agent.dir.path().join("cgroup-at-start");
    let script = format!("cat /proc/self/cgroup > {f}.cat; cat /proc/$$/cgroup > {f}.sh; sleep 1000", f = file.display());
    let run = run_bg(&agent, "t", &["sh", "-c", &script], 1);
    let cg = agent.target_cgroup("t");
    let want = cgroup_rel(cg.path());
    let sh_file = PathBuf::from(format!("{}.sh", file.display()));
    let cat_file = PathBuf::from(format!("{}.cat", file.display()));
    wait_until(Duration::from_secs(5), || std::fs::metadata(&sh_file).is_ok_and(|m| m.len() > 0)).expect("the command wrote its cgroup");
    for f in [&cat_file, &sh_file] {
        let text = std::fs::read_to_string(f).expect("cgroup file");
        let got = text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned);
        assert_eq!(got.as_deref(), Some(want.as_str()), "{}: the command ran outside its target: {text}", f.display());
    }

    let row = target_row(&agent, "t").expect("status lists t");
    assert_eq!(row["level"], "normal", "{row}");
    assert_eq!(row["kernel_level"], "normal", "{row}");
    assert!(row["tasks"].as_u64().unwrap_or(0) >= 1, "{row}");
    assert_eq!(row["cgroup"], cg.path().to_str().unwrap(), "{row}");
    assert_eq!(row["populated"], true, "{row}");
    // The human status lists it too.
    let out = agent.kp(&["status"]);
    assert!(text(&out.stdout).lines().any(|l| l.starts_with("t ") && l.contains("normal")), "{}", show(&out));

    // Release while tasks live: enforcement lifted, cgroup kept, tasks untouched.
    let tasks = pids(&cg);
    let r = agent.json(&["release", "t"]);
    assert_eq!(r["cgroup_removed"], false, "a cgroup with tasks cannot be removed: {r}");
    assert_eq!(r["tasks_left"].as_u64(), Some(tasks.len() as u64), "{r}");
    assert!(cg.exists(), "cgroup kept while it holds tasks");
    assert!(!listed(&agent, "t"), "status still lists a released target");
    assert!(alive(run.pid()) && pids(&cg) == tasks, "release must not touch the tasks: {:?} vs {tasks:?}", pids(&cg));
    assert_thawed(&cg);
    let out = agent.kp(&["stop", "t"]);
    assert!(!out.status.success(), "a released target can no longer be stopped: {}", show(&out));
    assert!(alive(run.pid()), "{}", show(&out));
    // The released cgroup is ordinary now: killing its tasks is up to us.
    drop(run);
    for p in pids(&cg) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(cg.wait_empty(Duration::from_secs(2)).unwrap_or(false), "old tasks gone");

    // Release once empty: killpath made the cgroup, so it removes it.
    let run2 = run_bg(&agent, "t2", &["sleep", "1000"], 1);
    let cg2 = agent.target_cgroup("t2");
    let before = pids(&cg2);
    let r = stop(&agent, "t2");
    assert_stopped(&agent, "t2", &cg2, &r, &before);
    drop(run2);
    let r = agent.json(&["release", "t2"]);
    assert_eq!(r["cgroup_removed"], true, "{r}");
    assert_eq!(r["tasks_left"], 0, "{r}");
    assert!(!cg2.path().exists(), "{} not removed", cg2.path().display());
    assert!(!listed(&agent, "t2"));
    // And the name can be used again, for a working (not stopped) target.
    let run3 = run_bg(&agent, "t2", &["sleep", "1000"], 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(run3.pid()), "a new target with a released name must not inherit the stop");
    assert_eq!(target_row(&agent, "t2").expect("listed")["level"], "normal");
}

#[test]
fn targets_adopt_pid_takes_the_whole_tree() {
    let Some(agent) = Agent::start() else { return };
    let tree = spawn_outside(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    wait_until(Duration::from_secs(5), || children(tree.pid()).len() == 2).expect("shell has two children");
    let mut all = vec![tree.pid()];
    all.extend(children(tree.pid()));
    all.sort_unstable();

    let r = agent.json(&["adopt", "adopted", "--pid", &tree.pid().to_string()]);
    let cg = agent.target_cgroup("adopted");
    assert_eq!(r["target"]["created"], true, "{r}");
    assert_eq!(r["target"]["cgroup"], cg.path().to_str().unwrap(), "{r}");
    let mut moved: Vec<i32> = r["moved_pids"].as_array().expect("moved_pids").iter().map(|v| v.as_i64().unwrap() as i32).collect();
    moved.sort_unstable();
    assert_eq!(moved, all, "{r}");
    assert_eq!(pids(&cg), all, "the shell and both children are in the target");
    for p in &all {
        assert_eq!(cgroup_line(*p), Some(cgroup_rel(cg.path())), "pid {p}");
    }
    let row = target_row(&agent, "adopted").expect("listed");
    assert_eq!((row["level"].as_str(), row["tasks"].as_u64()), (Some("normal"), Some(3)), "{row}");

    let r = stop(&agent, "adopted");
    assert_eq!(r["tasks_at_start"], 3, "{r}");
    assert_stopped(&agent, "adopted", &cg, &r, &all);
}

#[test]
fn targets_adopt_existing_cgroup() {
    let Some(agent) = Agent::start() else { return };
    // Two cgroups killpath did not make, one named relative to the cgroup2
    // mount, one absolute.
    let ext_rel = make_cgroup(agent.cgroup_parent.join("external"));
    let ext_abs = make_cgroup(agent.cgroup_parent.join("external2"));
    let p1 = spawn_outside(&["sleep", "1000"]);
    let p2 = spawn_outside(&["sleep", "1000"]);
    move_into(&ext_rel, p1.pid());
    move_into(&ext_abs, p2.pid());
    let rel = cgroup_rel(ext_rel.path());
    let rel = rel.trim_start_matches('/');
    let abs = ext_abs.path().to_str().unwrap();

    for (name, path, cg, pid) in [("ext-rel", rel, &ext_rel, p1.pid()), ("ext-abs", abs, &ext_abs, p2.pid())] {
        let r = agent.json(&["adopt", name, "--cgroup", path]);
        assert_eq!(r["target"]["created"], false, "{r}");
        assert_eq!(r["target"]["cgroup"], cg.path().to_str().unwrap(), "--cgroup {path}: {r}");
        assert!(r.get("moved_pids").is_none(), "adopting a cgroup moves nothing: {r}");
        let row = target_row(&agent, name).expect("listed");
        assert_eq!((row["level"].as_str(), row["tasks"].as_u64()), (Some("normal"), Some(1)), "{row}");
        assert_eq!(pids(cg), vec![pid]);

        let r = stop(&agent, name);
        assert_eq!(r["tasks_at_start"], 1, "{r}");
        assert_stopped(&agent, name, cg, &r, &[pid]);

        // Release: enforcement lifted, but the cgroup is not killpath's to remove.
        let r = agent.json(&["release", name]);
        assert_eq!(r["cgroup_removed"], false, "{r}");
        assert!(cg.exists(), "release removed {}, which killpath did not create", cg.path().display());
        assert!(!listed(&agent, name));
        assert_thawed(cg);
        assert_not_enforced(&agent, cg);
    }
}

#[test]
fn targets_names_are_validated() {
    let Some(agent) = Agent::start() else { return };
    let mount = killpath::kernel::cgroup::cgroup2_mount().unwrap();
    let long = "x".repeat(65);
    let bad = ["../x", "a/b", long.as_str(), "", ".", "..", " ", "a b", "a..b", ".hidden", "tab\there", "é"];
    let parent_before = subdirs(&agent.cgroup_parent);
    // `../x` would land at the cgroup2 root (the parent sits right below it).
    // Other tests may create cgroups there concurrently, so watch just that one.
    let escaped = mount.join("x");
    let escaped_before = escaped.exists();
    for name in bad {
        let marker = agent.dir.path().join("ran");
        let out = agent.kp(&["run", name, "--", "touch", marker.to_str().unwrap()]);
        assert!(!out.status.success(), "run {name:?} must fail: {}", show(&out));
        let err = text(&out.stderr);
        assert!(
            err.contains("invalid target name") && err.contains(&format!("{name:?}")),
            "run {name:?}: the error names the problem: {}",
            show(&out)
        );
        assert!(!marker.exists(), "run {name:?} executed its command");
        assert_eq!(subdirs(&agent.cgroup_parent), parent_before, "run {name:?} created something under the cgroup parent");
        assert_eq!(escaped.exists(), escaped_before, "run {name:?} created {}", escaped.display());
        let out = agent.kp(&["adopt", name, "--cgroup", "whatever"]);
        assert!(!out.status.success() && text(&out.stderr).contains("invalid target name"), "adopt {name:?}: {}", show(&out));
    }
    assert_eq!(agent.json(&["status"])["targets"], serde_json::json!([]));
    // The boundary: 64 bytes of allowed characters is fine.
    let ok = format!("{}-_.9", "a".repeat(60));
    assert_eq!(ok.len(), 64);
    let _run = run_bg(&agent, &ok, &["sleep", "1000"], 1);
    assert!(listed(&agent, &ok));
}

#[test]
fn targets_duplicate_name_is_refused() {
    let Some(agent) = Agent::start() else { return };
    let first = run_bg(&agent, "dup", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("dup");
    let marker = agent.dir.path().join("second-ran");
    let out = agent.kp(&["run", "dup", "--", "touch", marker.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(text(&out.stderr).contains("target-exists"), "{}", show(&out));
    assert!(!marker.exists(), "the second command must not run");
    assert_eq!(pids(&cg), vec![first.pid()], "the first target is untouched");
    // adopt under the same name is refused too.
    let other = spawn_outside(&["sleep", "1000"]);
    let out = agent.kp(&["adopt", "dup", "--pid", &other.pid().to_string()]);
    assert!(!out.status.success() && text(&out.stderr).contains("target-exists"), "{}", show(&out));
    assert_eq!(cgroup_line(other.pid()), cgroup_line(std::process::id() as i32), "the pid was not moved");
    let row = target_row(&agent, "dup").expect("listed");
    assert_eq!((row["level"].as_str(), row["tasks"].as_u64()), (Some("normal"), Some(1)), "{row}");
}

#[test]
fn targets_adopt_refusals() {
    let Some(agent) = Agent::start() else { return };
    let p = spawn_outside(&["sleep", "1000"]);
    let pid = p.pid().to_string();
    let ext = make_cgroup(agent.cgroup_parent.join("ext"));
    let ext_path = ext.path().to_str().unwrap().to_owned();
    let parent_before = subdirs(&agent.cgroup_parent);

    // Both, or neither: rejected by the CLI before the agent is asked.
    let both = agent.kp(&["adopt", "a", "--cgroup", &ext_path, "--pid", &pid]);
    assert_eq!(both.status.code(), Some(2), "{}", show(&both));
    assert!(text(&both.stderr).contains("cannot be used with"), "{}", show(&both));
    let neither = agent.kp(&["adopt", "a"]);
    assert_eq!(neither.status.code(), Some(2), "{}", show(&neither));
    assert!(text(&neither.stderr).contains("required"), "{}", show(&neither));

    // A pid that does not exist.
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let ghost = (2..pid_max).rev().find(|n| !Path::new(&format!("/proc/{n}")).exists()).expect("a free pid");
    let out = agent.kp(&["adopt", "a", "--pid", &ghost.to_string()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(text(&out.stderr).contains(&format!("process {ghost} does not exist")), "{}", show(&out));

    // pid 1, the agent, and an ancestor of the agent (this test process):
    // moving them would take the host or the agent into a target.
    let me = std::process::id().to_string();
    for (what, victim) in [("init", "1"), ("the agent", &agent.pid().to_string()), ("an ancestor of the agent", &me)] {
        let before = cgroup_line(victim.parse().unwrap());
        let out = agent.kp(&["adopt", "a", "--pid", victim]);
        assert!(!out.status.success(), "adopting {what} must be refused: {}", show(&out));
        assert!(text(&out.stderr).contains("refusing to adopt"), "{what}: {}", show(&out));
        assert_eq!(cgroup_line(victim.parse().unwrap()), before, "{what} was moved");
    }

    // The root cgroup (which also holds the agent here), and a missing cgroup.
    let mount = killpath::kernel::cgroup::cgroup2_mount().unwrap();
    for (what, path, needle) in [
        ("the root", "/".to_owned(), "root cgroup"),
        ("the mount", mount.to_str().unwrap().to_owned(), "root cgroup"),
        ("a missing cgroup", agent.cgroup_parent.join("missing").to_str().unwrap().to_owned(), "not a cgroup2 directory"),
    ] {
        let out = agent.kp(&["adopt", "a", "--cgroup", &path]);
        assert!(!out.status.success(), "adopting {what} must be refused: {}", show(&out));
        assert!(text(&out.stderr).contains(needle), "{what}: {}", show(&out));
    }

    assert_eq!(subdirs(&agent.cgroup_parent), parent_before, "a refused adopt left a cgroup behind");
    assert_eq!(agent.json(&["status"])["targets"], serde_json::json!([]), "a refused adopt left a target");
    assert!(alive(p.pid()));
}

/// A cgroup that already is a target cannot be adopted again under another
/// name: the second adopt would reset the kernel map entry (keyed by cgroup
/// id) to `normal`, silently disarming the guard of a stopped target, and
/// releasing either name would delete the entry of both.
#[test]
fn targets_adopt_of_a_managed_cgroup_is_refused() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "first", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("first");
    let r = stop(&agent, "first");
    assert_stopped(&agent, "first", &cg, &r, &[run.pid()]);

    let rel = cgroup_rel(cg.path());
    let out = agent.kp(&["--json", "adopt", "alias", "--cgroup", &rel]);
    let accepted = out.status.success();
    let row = target_row(&agent, "first").expect("first still listed");
    if accepted {
        // Undo before asserting (this also deletes the shared map entry).
        let _ = agent.kp(&["release", "alias"]);
    }
    assert_eq!(
        row["kernel_level"],
        "stopped",
        "adopting the cgroup of stopped target `first` again disarmed its guard: {row}\nadopt: {}",
        show(&out)
    );
    assert!(!accepted, "adopt of a cgroup that already is target `first` must be refused: {}", show(&out));
    // Still guarded: a process moved in dies.
    let p = spawn_outside(&["sleep", "1000"]);
    move_into(&cg, p.pid());
    assert!(wait_until(Duration::from_secs(2), || !alive(p.pid())).is_some(), "guard of `first` no longer kills");
}

/// `adopt --cgroup` must judge the directory, not its spelling: a path with
/// `..` that names the root cgroup is refused like the root itself.
/// Stopping the root would SIGKILL every process on the host through the
/// per-pid path (the root cgroup has no cgroup.kill or cgroup.freeze).
#[test]
fn targets_adopt_refuses_root_cgroup_spelled_with_dotdot() {
    let Some(agent) = Agent::start() else { return };
    let mount = killpath::kernel::cgroup::cgroup2_mount().unwrap();
    let parent_rel = cgroup_rel(&agent.cgroup_parent);
    // The harness puts the cgroup parent directly below the root.
    let root_alias = format!("{}/..", parent_rel.trim_start_matches('/'));
    assert_eq!(std::fs::canonicalize(mount.join(&root_alias)).unwrap(), std::fs::canonicalize(&mount).unwrap());
    let out = agent.kp(&["--json", "adopt", "rootalias", "--cgroup", &root_alias]);
    if out.status.success() {
        // Undo at once (never stop it), then fail.
        let _ = agent.kp(&["release", "rootalias"]);
    }
    assert!(!out.status.success(), "adopt --cgroup {root_alias} (the root cgroup) must be refused: {}", show(&out));
    assert!(text(&out.stderr).contains("root cgroup"), "{}", show(&out));
}

/// An ordinary cgroup spelled with `..` is refused, or adopted with its real
/// depth: the guard matches a target by its ancestor at that depth, so a
/// depth computed from the spelling leaves the stopped target unguarded.
#[test]
fn targets_adopt_cgroup_path_with_dotdot_keeps_the_guard() {
    let Some(agent) = Agent::start() else { return };
    let mount = killpath::kernel::cgroup::cgroup2_mount().unwrap();
    let parent_rel = cgroup_rel(&agent.cgroup_parent);
    let ext = make_cgroup(agent.cgroup_parent.join("ext"));
    let spelled = format!("{}/ext/../ext", parent_rel.trim_start_matches('/'));
    let out = agent.kp(&["--json", "adopt", "ext", "--cgroup", &spelled]);
    if !out.status.success() {
        assert!(text(&out.stderr).contains(".."), "a refusal should say why: {}", show(&out));
        return;
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("adopt JSON");
    let r = stop(&agent, "ext").to_string() + &r.to_string();
    let p = spawn_outside(&["sleep", "1000"]);
    move_into(&ext, p.pid());
    assert!(
        wait_until(Duration::from_secs(2), || !alive(p.pid())).is_some(),
        "guard does not cover stopped target adopted as {spelled} (real depth {}): {r}",
        ext.depth(&mount).unwrap()
    );
}
