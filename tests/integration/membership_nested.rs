//! Tests: membership across nested targets. A process that moves into a
//! target nested in its own is the inner target's, threads and children
//! included; releasing the inner target hands its tasks back to the outer
//! one. Judged from outside: the journal file, /proc/PID/cgroup and /proc.
use std::time::Duration;

use killpath::kernel::cgroup::Cgroup;

use crate::{
    harness::{wait_until, Agent},
    membership::{escape_records, inside, root_procs, Escapees},
    membership_threads::{escape_record, task_gone, task_ids},
    support::{
        cgroup::{cgroup_line, cgroup_rel},
        process::{run_bg, Reaped},
        status::stop,
    },
};

/// Target `name` running a `sleep`, its cgroup, and a new sub-cgroup `in`
/// of it (not a target yet).
fn sleep_with_sub_cgroup(agent: &Agent, name: &str) -> (Reaped, Cgroup, std::path::PathBuf) {
    let run = run_bg(agent, name, &["sleep", "1000"], 1);
    let outer = agent.target_cgroup(name);
    let sub = outer.path().join("in");
    std::fs::create_dir(&sub).expect("mkdir in");
    (run, outer, sub)
}

/// A sleep of target `o` moved (by the test, not the agent) into `o/in`,
/// which is then adopted as target `in` (its tasks become `in`'s), and `in`
/// released: the sleep is `o`'s again, so moving it out of `o` is an
/// escape (journaled, moved back) and `o`'s stop kills it. Dropping the
/// marks at the release let it leave `o` unseen, and the stop report 0
/// survivors while it ran.
#[test]
fn released_nested_target_hands_its_tasks_to_the_outer_one() {
    let Some(agent) = Agent::start() else { return };
    let (run, outer, sub) = sleep_with_sub_cgroup(&agent, "o");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    std::fs::write(sub.join("cgroup.procs"), pid.to_string()).expect("move into o/in");
    agent.json(&["adopt", "in", "--cgroup", sub.to_str().expect("utf-8 path")]);
    agent.json(&["release", "in"]);
    std::fs::write(root_procs(), pid.to_string()).expect("move out to the root");
    let rec = escape_record(&agent, pid);
    assert_eq!(rec["target"], "o", "an escape from the outer target: {rec}");
    let rel = cgroup_rel(outer.path());
    wait_until(Duration::from_secs(2), || inside(pid, &rel)).unwrap_or_else(|| panic!("{pid} is at {:?}, not back in {rel}", cgroup_line(pid)));
    let r = stop(&agent, "o");
    assert_eq!(r["survivors"], 0, "{r}");
    assert!(wait_until(Duration::from_secs(2), || task_gone(pid, pid)).is_some(), "{pid} survived the outer target's stop: {r}");
    assert!(escape_records(&agent, pid).iter().all(|r| r["target"] == "o"), "no escape charged to the released target");
}

/// A process of target `outer` moves itself into `inner`, a target nested
/// in `outer`'s cgroup: the kernel re-marks it under its tgid, while its
/// other thread keeps `outer`'s mark from its fork. A child that thread
/// forks is `inner`'s (the deeper mark wins), so when the child moves
/// itself back out into `outer`'s own cgroup, that is an escape from
/// `inner`: journaled, moved back, and `inner`'s stop kills it. Judged
/// from outside: the journal file, /proc/PID/cgroup and /proc.
#[test]
fn child_of_a_thread_of_a_process_that_entered_a_nested_target_is_the_inner_ones() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let (go_in, go_fork, child_file) = (dir.join("in"), dir.join("fork"), dir.join("child"));
    let outer = agent.target_cgroup("outer");
    let sub = outer.path().join("sub");
    let script = format!(
        "import os, subprocess, threading, time\n\
         def wait(p):\n    while not os.path.exists(p): time.sleep(0.02)\n\
         def t():\n    wait('{go_fork}')\n    c = subprocess.Popen(['/bin/sh', '-c', 'echo $$ > {outer}/cgroup.procs; exec sleep 1000'])\n    open('{child}', 'w').write(str(c.pid))\n    time.sleep(1000)\n\
         threading.Thread(target=t).start()\n\
         wait('{go_in}')\n\
         open('{sub}/cgroup.procs', 'w').write(str(os.getpid()))\n\
         time.sleep(1000)\n",
        go_fork = go_fork.display(),
        go_in = go_in.display(),
        child = child_file.display(),
        outer = outer.path().display(),
        sub = sub.display(),
    );
    let run = run_bg(&agent, "outer", &["/usr/bin/python3", "-c", &script], 1);
    let pid = run.pid();
    let mut guard = Escapees(vec![pid]);
    wait_until(Duration::from_secs(10), || task_ids(pid).len() == 2).unwrap_or_else(|| panic!("no second thread: {:?}", task_ids(pid)));
    std::fs::create_dir(&sub).expect("mkdir sub");
    agent.json(&["adopt", "inner", "--cgroup", sub.to_str().expect("utf-8 path")]);
    std::fs::write(&go_in, "").expect("go in");
    let inner_rel = cgroup_rel(&sub);
    wait_until(Duration::from_secs(5), || inside(pid, &inner_rel)).unwrap_or_else(|| panic!("{pid} never entered {inner_rel}"));
    std::fs::write(&go_fork, "").expect("go fork");
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&child_file).is_ok_and(|s| !s.trim().is_empty())).expect("the child's pid");
    let child: i32 = std::fs::read_to_string(&child_file).expect("child").trim().parse().expect("a pid");
    guard.0.push(child);
    let rec = escape_record(&agent, child);
    assert_eq!(rec["target"], "inner", "an escape from the inner target: {rec}");
    assert!(rec["outcome"].as_str().unwrap_or("").starts_with("moved back"), "{rec}");
    wait_until(Duration::from_secs(2), || inside(child, &inner_rel))
        .unwrap_or_else(|| panic!("{child} is at {:?}, not back in {inner_rel}", cgroup_line(child)));
    let r = stop(&agent, "inner");
    assert_eq!(r["survivors"], 0, "{r}");
    for p in [pid, child] {
        assert!(wait_until(Duration::from_secs(2), || task_gone(p, p)).is_some(), "{p} survived the inner target's stop: {r}");
    }
}

/// A mark of a released nested target that the hand-over missed (a hook
/// set it while the release ran, made certain here by writing it through
/// the pinned map after `release in`) is the outer target's: moving the
/// task out of `o` is an escape of `o`, journaled and moved back, not a
/// stale mark silently dropped.
#[test]
fn mark_of_a_released_nested_target_is_the_outer_ones() {
    let Some(agent) = Agent::start() else { return };
    let (run, outer, sub) = sleep_with_sub_cgroup(&agent, "o2");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let r = agent.json(&["adopt", "in2", "--cgroup", sub.to_str().expect("utf-8 path")]);
    let inner_id = r["target"]["cgroup_id"].as_u64().unwrap_or_else(|| panic!("adopt: {r}"));
    agent.json(&["release", "in2"]);
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let path = killpath::kernel::pins::map_pin(&gen, killpath_common::maps::MEMBERS);
    let data = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut marks: aya::maps::HashMap<_, u32, killpath_common::Member> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
    marks.insert(pid as u32, killpath_common::Member { target: inner_id, tgid: pid as u32, escapes: 0 }, 0).expect("the missed mark");
    std::fs::write(root_procs(), pid.to_string()).expect("move out to the root");
    let rec = escape_record(&agent, pid);
    assert_eq!(rec["target"], "o2", "an escape from the outer target: {rec}");
    let rel = cgroup_rel(outer.path());
    wait_until(Duration::from_secs(2), || inside(pid, &rel)).unwrap_or_else(|| panic!("{pid} is at {:?}, not back in {rel}", cgroup_line(pid)));
}

/// A member of target `x` starts a child straight into `x/n`, a target
/// nested in `x` (clone3 with CLONE_INTO_CGROUP): the child is `n`'s, as a
/// move there would make it, so its move back into `x`'s own cgroup is an
/// escape from `n`, journaled and moved back.
#[test]
fn child_born_into_a_nested_target_by_a_member_is_the_inner_ones() {
    let Some(agent) = Agent::start() else { return };
    let outer = agent.target_cgroup("x");
    let sub = outer.path().join("n");
    let (flag, out) = (agent.dir.path().join("go"), agent.dir.path().join("child-pid"));
    let (flag_s, dst_s, out_s) = (flag.display().to_string(), sub.display().to_string(), out.display().to_string());
    let run = run_bg(&agent, "x", &[crate::support::process::py(), "-c", crate::membership::CLONE_INTO, &flag_s, &dst_s, &out_s], 1);
    let mut guard = Escapees(vec![run.pid()]);
    std::fs::create_dir(&sub).expect("mkdir n");
    agent.json(&["adopt", "n", "--cgroup", sub.to_str().expect("utf-8 path")]);
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || out.exists()).expect("clone3 result");
    let text = std::fs::read_to_string(&out).expect("child pid");
    let child: i32 = text.trim().parse().unwrap_or_else(|_| panic!("clone3 failed: {text}"));
    guard.0.push(child);
    let inner_rel = cgroup_rel(&sub);
    assert!(inside(child, &inner_rel), "born in n: {:?}", cgroup_line(child));
    std::fs::write(outer.path().join("cgroup.procs"), child.to_string()).expect("move into x itself");
    let rec = escape_record(&agent, child);
    assert_eq!(rec["target"], "n", "an escape from the nested target: {rec}");
    wait_until(Duration::from_secs(2), || inside(child, &inner_rel))
        .unwrap_or_else(|| panic!("{child} is at {:?}, not back in {inner_rel}", cgroup_line(child)));
}
