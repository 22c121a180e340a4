//! `adopt --unit` and `--pod` (and `--container` in the kubelet's
//! cgroupfs layout) against real cgroups in the layouts systemd and the
//! kubelet make, with real processes in them. No systemd or kubelet runs
//! here: the cgroups are what those tools would have made, and the
//! resolver reads only the cgroup tree.
use serde_json::Value;

use super::tree::Tree;
use crate::{
    harness::{alive, Agent},
    support::{
        process::{living, show, text},
        status::{assert_stopped, stop, target_row},
    },
};

/// A fresh pod UID (the kernel's random UUID).
fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("random uuid").trim().to_owned()
}

/// A fresh 64-hex container id.
pub(super) fn container_id() -> String {
    format!("{}{}", uuid().replace('-', ""), uuid().replace('-', ""))
}

/// `killpath adopt ARGS` must fail; returns its stderr.
fn adopt_fails(agent: &Agent, args: &[&str]) -> String {
    let mut a = vec!["adopt"];
    a.extend_from_slice(args);
    let out = agent.kp(&a);
    assert!(!out.status.success(), "adopt {args:?} should fail: {}", show(&out));
    text(&out.stderr)
}

/// The adopt intent journaled for target `name`.
fn adopt_intent(agent: &Agent, name: &str) -> Value {
    agent.journal().into_iter().find(|r| r["action"] == "adopt" && r["phase"] == "intent" && r["target"] == name).expect("adopt intent journaled")
}

/// A unit's cgroup (with a sub-cgroup, as a `Delegate=yes` service has) is
/// found by the bare unit name; the stop kills every process in it and
/// none outside it. Two cgroups named the same unit (a system and a user
/// instance) and unknown units are refused, naming what was searched, and
/// the agent keeps serving with nothing adopted.
#[test]
fn adopt_unit_finds_the_units_cgroup() {
    let Some(agent) = Agent::start() else { return };
    let mut tree = Tree::new("unit");
    let unit = format!("kp{}-web.service", std::process::id());
    let web = tree.cgroup(&format!("system.slice/{unit}"));
    let worker = tree.cgroup(&format!("system.slice/{unit}/worker"));
    let mut inside = tree.sleepers(&web, 2);
    inside.extend(tree.sleepers(&worker, 1));
    // A neighbour in the same slice: not the unit, must survive its stop.
    let other = tree.cgroup(&format!("system.slice/kp{}-db.service", std::process::id()));
    let outside = tree.sleepers(&other, 1);

    let stem = unit.trim_end_matches(".service");
    let r = agent.json(&["adopt", "web", "--unit", stem]);
    assert_eq!(r["target"]["cgroup"], web.path().display().to_string(), "{r}");
    assert_eq!(r["resolved"]["canonical"], unit, "a bare name is a .service: {r}");
    assert_eq!(r["resolved"]["found"]["cgroup"], web.path().display().to_string(), "{r}");
    let intent = adopt_intent(&agent, "web");
    assert_eq!(intent["params"]["unit"], stem, "{intent}");
    assert_eq!(intent["params"]["resolved"]["found"]["cgroup"], web.path().display().to_string(), "{intent}");

    let report = stop(&agent, "web");
    assert_stopped(&agent, "web", &web, &report, &inside);
    assert_eq!(living(&outside), outside, "the neighbour unit's process must survive the unit's stop");

    // The same unit name twice: a system and a user instance.
    let api = format!("kp{}-api.service", std::process::id());
    let sys = tree.cgroup(&format!("system.slice/{api}"));
    let user = tree.cgroup(&format!("user.slice/user-1000.slice/user@1000.service/app.slice/{api}"));
    let ambiguous = tree.sleepers(&sys, 1);
    let err = adopt_fails(&agent, &["api", "--unit", &api]);
    for needle in ["ambiguous", &sys.path().display().to_string(), &user.path().display().to_string(), "--cgroup"] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    let nosuch = format!("kp{}-nosuch.service", std::process::id());
    let err = adopt_fails(&agent, &["x", "--unit", &nosuch]);
    assert!(err.contains("no unit") && err.contains("searched") && err.contains(&nosuch), "{err}");
    let err = adopt_fails(&agent, &["x", "--unit", "apt-daily.timer"]);
    assert!(err.contains("has no cgroup"), "{err}");
    let err = adopt_fails(&agent, &["x", "--unit", "web.service", "--pid", "1"]);
    assert!(err.contains("cannot be used with") || err.contains("exactly one"), "{err}");

    assert!(target_row(&agent, "api").is_none() && target_row(&agent, "x").is_none(), "a refused adopt adopts nothing");
    assert!(ambiguous.iter().all(|p| alive(*p)), "a refused adopt touches nothing");
    assert_eq!(agent.json(&["journal", "--verify"])["ok"], true);
}

/// A pod's cgroup in the systemd layout (UID with `_` in the slice name,
/// given with `_` or `-`) and in the cgroupfs layout; a container of a
/// cgroupfs pod by a 12-digit prefix of its id: its stop kills that
/// container and leaves its sibling (the pause container) alive.
#[test]
fn adopt_pod_finds_both_kubelet_layouts() {
    let Some(agent) = Agent::start() else { return };
    let mut tree = Tree::new("pod");
    // systemd driver, Burstable QoS.
    let uid = uuid();
    let slice = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
    let pod = tree.cgroup(&slice);
    let app = tree.cgroup(&format!("{slice}/cri-containerd-{}.scope", container_id()));
    let pause = tree.cgroup(&format!("{slice}/cri-containerd-{}.scope", container_id()));
    let mut inside = tree.sleepers(&app, 2);
    inside.extend(tree.sleepers(&pause, 1));
    let r = agent.json(&["adopt", "pod-a", "--pod", &uid.replace('-', "_")]);
    assert_eq!(r["target"]["cgroup"], pod.path().display().to_string(), "{r}");
    assert_eq!(r["resolved"]["canonical"], uid, "{r}");
    let report = stop(&agent, "pod-a");
    assert_stopped(&agent, "pod-a", &pod, &report, &inside);

    // cgroupfs driver, BestEffort QoS: kubepods/besteffort/pod<UID>/<ID>.
    let uid = uuid();
    let (cid, pause_id) = (container_id(), container_id());
    let pod = tree.cgroup(&format!("kubepods/besteffort/pod{uid}"));
    let ctr = tree.cgroup(&format!("kubepods/besteffort/pod{uid}/{cid}"));
    let sibling = tree.cgroup(&format!("kubepods/besteffort/pod{uid}/{pause_id}"));
    let in_ctr = tree.sleepers(&ctr, 2);
    let in_sibling = tree.sleepers(&sibling, 1);
    let r = agent.json(&["adopt", "ctr-b", "--container", &cid[..12]]);
    assert_eq!(r["target"]["cgroup"], ctr.path().display().to_string(), "{r}");
    assert_eq!(r["resolved"]["canonical"], cid, "{r}");
    let report = stop(&agent, "ctr-b");
    assert_stopped(&agent, "ctr-b", &ctr, &report, &in_ctr);
    assert_eq!(living(&in_sibling), in_sibling, "the pod's other container must survive");
    // The pod itself by UID: its cgroup, not the container's; the human
    // output says what the name resolved to.
    let out = agent.kp(&["adopt", "pod-b", "--pod", &uid]);
    let said = format!("pod {uid}: cgroup {}, found by cgroup layout", pod.path().display());
    assert!(out.status.success() && text(&out.stdout).contains(&said), "expected {said:?}: {}", show(&out));
    assert_eq!(target_row(&agent, "pod-b").expect("pod-b listed")["cgroup"], pod.path().display().to_string());

    let missing = uuid();
    let err = adopt_fails(&agent, &["x", "--pod", &missing]);
    assert!(err.contains("no pod") && err.contains(&format!("pod{}.slice", missing.replace('-', "_"))) && err.contains(&format!("pod{missing}")), "{err}");
    let err = adopt_fails(&agent, &["x", "--pod", "not-a-uid"]);
    assert!(err.contains("not a UID"), "{err}");
    let err = adopt_fails(&agent, &["x", "--container", &cid[..8]]);
    assert!(err.contains("no container") && err.contains("searched"), "an 8-digit prefix is too short to match: {err}");
    assert_eq!(agent.json(&["journal", "--verify"])["ok"], true);
}
