//! Tests: membership follows the task. A root task inside a target that
//! moves itself out (a write to the cgroup2 root's `cgroup.procs`), forks
//! after moving out, or is born outside (clone3 with CLONE_INTO_CGROUP)
//! stays the target's: the escape is detected, journaled and reverted
//! (moved back, or killed for an isolated target), and `stop` kills it
//! wherever it is and counts it. Judged from outside: /proc/PID, its
//! /proc/PID/cgroup, and the journal file.
use std::{path::Path, time::Duration};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{cgroup_line, cgroup_rel, make_cgroup},
        process::{children, py, run_bg, show, spawn_outside, Reaped},
        status::{stop, target_row},
    },
};

/// SIGKILLs the pids a test let out of every target, whatever happens.
pub(crate) struct Escapees(pub(crate) Vec<i32>);

impl Drop for Escapees {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
}

/// The cgroup2 root's cgroup.procs.
pub(crate) fn root_procs() -> String {
    killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount").join("cgroup.procs").display().to_string()
}

/// Starts target `name` running `sh`: it waits for `flag`, moves itself
/// to the cgroup2 root, then runs `after` (in the same shell).
fn escaping_target(agent: &Agent, name: &str, flag: &Path, after: &str) -> Reaped {
    let script = format!(r#"while [ ! -e "{}" ]; do sleep 0.02; done; echo 0 > "{}"; {after}"#, flag.display(), root_procs());
    run_bg(agent, name, &["sh", "-c", &script], 1)
}

/// Whether `pid` sits in the cgroup `rel` or below it.
pub(crate) fn inside(pid: i32, rel: &str) -> bool {
    cgroup_line(pid).is_some_and(|l| l == rel || l.starts_with(&format!("{rel}/")))
}

/// The high-priority escape records of the journal about `pid`.
pub(crate) fn escape_records(agent: &Agent, pid: i32) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == "escape" && r["params"]["tgid"] == pid).collect()
}

/// `killpath --json stop NAME` while the agent is dead: the CLI's direct stop.
pub(crate) fn direct_stop(agent: &Agent, name: &str) -> Value {
    let out = agent.kp(&["--json", "stop", name, "--agent-timeout", "1"]);
    assert!(out.status.success(), "direct stop failed: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(&out)))
}

pub(crate) fn assert_gone(pids: &[i32], report: &Value) {
    for p in pids {
        assert!(wait_until(Duration::from_secs(2), || !alive(*p)).is_some(), "pid {p} survived the stop: {report}");
    }
    assert_eq!(report["survivors"], 0, "{report}");
    assert!(report["escape_attempts"].as_u64().unwrap_or(0) >= 1, "stop must count the escape: {report}");
}

/// (a) An escape with the agent up: counted, reverted, and the stop kills
/// the escaped task and reports it.
#[test]
fn escape_to_root_then_stop() {
    let Some(agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    let run = escaping_target(&agent, "esc-a", &flag, "exec sleep 1000");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || !escape_records(&agent, pid).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {pid}; journal: {:?}\nlog:\n{}", agent.journal(), agent.log_text()));
    let r = stop(&agent, "esc-a");
    assert_gone(&[pid], &r);
}

/// (a) with the agent dead: nothing moves the task back, so it is outside
/// the target when `killpath stop` (the CLI's direct stop, from the pinned
/// maps) runs, and must still die and be counted.
#[test]
fn escape_to_root_agent_dead_direct_stop() {
    let Some(mut agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    let run = escaping_target(&agent, "esc-dead", &flag, "exec sleep 1000");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    agent.kill9();
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || cgroup_line(pid).as_deref() == Some("/")).unwrap_or_else(|| panic!("{pid} never reached the root cgroup"));
    assert!(alive(pid));
    let r = direct_stop(&agent, "esc-dead");
    assert_eq!(r["fallback"], true, "{r}");
    assert!(r["marked_outside"].as_u64().unwrap_or(0) >= 1, "the escaped task was outside the cgroup at stop: {r}");
    assert_gone(&[pid], &r);
}

/// (b) A grandchild forked after the escape inherits the mark: the direct
/// stop (agent dead, so nothing was moved back) kills the whole tree.
#[test]
fn escape_then_fork_grandchild_direct_stop() {
    let Some(mut agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    let run = escaping_target(&agent, "esc-b", &flag, "sh -c 'sleep 1000 & wait' & wait");
    let pid = run.pid();
    let mut guard = Escapees(vec![pid]);
    agent.kill9();
    std::fs::write(&flag, "").expect("flag");
    let mut tree = Vec::new();
    wait_until(Duration::from_secs(5), || {
        tree = children(pid).into_iter().flat_map(|c| std::iter::once(c).chain(children(c))).collect();
        tree.len() == 2
    })
    .unwrap_or_else(|| panic!("no child and grandchild of {pid}"));
    guard.0.extend(&tree);
    for p in std::iter::once(pid).chain(tree.iter().copied()) {
        assert_eq!(cgroup_line(p).as_deref(), Some("/"), "{p} runs in the root cgroup, outside the target");
    }
    let r = direct_stop(&agent, "esc-b");
    assert!(r["marked_outside"].as_u64().unwrap_or(0) >= 3, "shell, child and grandchild were outside: {r}");
    let all: Vec<i32> = std::iter::once(pid).chain(tree.iter().copied()).collect();
    assert_gone(&all, &r);
}

/// (c) An escape before isolate: the agent moves the task back into the
/// target at once, journals a high-priority escape record, and status
/// counts it.
#[test]
fn escape_is_moved_back() {
    let Some(agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    let run = escaping_target(&agent, "esc-c", &flag, "exec sleep 1000");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let rel = cgroup_rel(agent.target_cgroup("esc-c").path());
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || !escape_records(&agent, pid).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {pid}\nlog:\n{}", agent.log_text()));
    let rec = &escape_records(&agent, pid)[0];
    assert_eq!(rec["high_priority"], true, "{rec}");
    assert!(rec["outcome"].as_str().unwrap_or("").starts_with("moved back"), "{rec}");
    wait_until(Duration::from_secs(1), || inside(pid, &rel)).unwrap_or_else(|| panic!("{pid} is at {:?}, not back in {rel}", cgroup_line(pid)));
    assert!(alive(pid), "a target below isolate is moved back, not killed");
    let row = target_row(&agent, "esc-c").expect("row");
    assert!(row["escape_attempts"].as_u64().unwrap_or(0) >= 1, "{row}");
}

/// An escape from an isolated target: the task moved itself, so the
/// kernel kills it as it moves.
#[test]
fn escape_from_isolated_target_is_killed() {
    let Some(agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    let run = escaping_target(&agent, "esc-iso", &flag, "exec sleep 1000");
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    agent.json(&["isolate", "esc-iso"]);
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(2), || !alive(pid)).unwrap_or_else(|| panic!("{pid} of an isolated target escaped and lives at {:?}", cgroup_line(pid)));
    wait_until(Duration::from_secs(5), || !escape_records(&agent, pid).is_empty()).expect("escape journaled");
    let rec = &escape_records(&agent, pid)[0];
    assert!(rec["outcome"].as_str().unwrap_or("").contains("killed"), "{rec}");
}

/// A task of an isolated target moved out by another task of the target
/// (not by itself, so the kernel cannot signal it as it moves): the agent
/// kills it through a pidfd.
#[test]
fn escape_of_another_task_from_isolated_target_is_killed() {
    let Some(agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("go");
    // The shell moves its child out, not itself.
    let script = format!(r#"while [ ! -e "{}" ]; do sleep 0.02; done; sleep 1000 & echo $! > "{}"; wait; exec sleep 1000"#, flag.display(), root_procs());
    let run = run_bg(&agent, "esc-other", &["sh", "-c", &script], 1);
    let mut guard = Escapees(vec![run.pid()]);
    agent.json(&["isolate", "esc-other"]);
    std::fs::write(&flag, "").expect("flag");
    let find = || agent.journal().into_iter().find(|r| r["action"] == "escape");
    wait_until(Duration::from_secs(5), || find().is_some()).unwrap_or_else(|| panic!("no escape record\nlog:\n{}", agent.log_text()));
    let rec = find().expect("record");
    let moved = rec["params"]["tgid"].as_i64().expect("tgid") as i32;
    guard.0.push(moved);
    assert_ne!(moved, run.pid(), "the shell moved its child, not itself: {rec}");
    assert_eq!(rec["params"]["by_pid"], run.pid(), "{rec}");
    wait_until(Duration::from_secs(2), || !alive(moved)).unwrap_or_else(|| panic!("{moved} escaped an isolated target and lives at {:?}", cgroup_line(moved)));
    assert!(rec["outcome"].as_str().unwrap_or("").contains("killed"), "{rec}");
    assert!(alive(run.pid()), "the shell that stayed inside is not killed for it");
}

/// Python: wait for argv[1], clone3(CLONE_INTO_CGROUP) into the cgroup
/// directory argv[2] (opened read-only), write the child's pid to argv[3];
/// the child execs `sleep 1000`.
pub(crate) const CLONE_INTO: &str = r#"
import ctypes, os, sys, time
flag, dst, out = sys.argv[1], sys.argv[2], sys.argv[3]
while not os.path.exists(flag):
    time.sleep(0.02)
fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
names = ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")
class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in names]
args = CloneArgs(flags=0x200000000, exit_signal=17, cgroup=fd)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = libc.syscall(435, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
if pid == 0:
    os.execv("/bin/sleep", ["sleep", "1000"])
if pid < 0:
    open(out, "w").write("error %d" % ctypes.get_errno())
    sys.exit(1)
open(out + ".tmp", "w").write(str(pid))
os.rename(out + ".tmp", out)
time.sleep(1000)
"#;

/// (d) clone3(CLONE_INTO_CGROUP) into a cgroup outside the target: the
/// child is a member from birth, its escape is counted, and stop kills it.
fn clone_into_case(agent_dead: bool) {
    let Some(mut agent) = Agent::start() else { return };
    let name = if agent_dead { "clone-dead" } else { "clone-live" };
    let flag = agent.dir.path().join("go");
    let out = agent.dir.path().join("child-pid");
    let outside = make_cgroup(agent.cgroup_parent.join(format!("outside-{name}")));
    let (flag_s, dst_s, out_s) = (flag.display().to_string(), outside.path().display().to_string(), out.display().to_string());
    let run = run_bg(&agent, name, &[py(), "-c", CLONE_INTO, &flag_s, &dst_s, &out_s], 1);
    let mut guard = Escapees(vec![run.pid()]);
    if agent_dead {
        agent.kill9();
    }
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || out.exists()).expect("clone3 result");
    let text = std::fs::read_to_string(&out).expect("child pid");
    let child: i32 = text.trim().parse().unwrap_or_else(|_| panic!("clone3 failed: {text}"));
    guard.0.push(child);
    assert!(alive(child));
    let r = if agent_dead {
        assert_eq!(cgroup_line(child), Some(cgroup_rel(outside.path())), "the child was born outside the target");
        let r = direct_stop(&agent, name);
        assert!(r["marked_outside"].as_u64().unwrap_or(0) >= 1, "{r}");
        r
    } else {
        wait_until(Duration::from_secs(5), || !escape_records(&agent, child).is_empty())
            .unwrap_or_else(|| panic!("no escape record\nlog:\n{}", agent.log_text()));
        stop(&agent, name)
    };
    assert_gone(&[run.pid(), child], &r);
}

#[test]
fn clone_into_outside_cgroup_then_stop() {
    clone_into_case(false);
}

#[test]
fn clone_into_outside_cgroup_agent_dead_direct_stop() {
    clone_into_case(true);
}

/// A process outside every target starts a child into a target's cgroup
/// with clone3(CLONE_INTO_CGROUP), as systemd does for a unit's ExecReload:
/// the child never passes cgroup_attach_task, and its parent has no mark to
/// inherit, yet it is the target's from birth. Its move out (by the test,
/// not the agent) is an escape, journaled and moved back, and the stop
/// kills it.
#[test]
fn child_born_into_a_target_by_an_outside_parent_is_a_member() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "born-in", &["sleep", "1000"], 1);
    let mut guard = Escapees(vec![run.pid()]);
    let (flag, out) = (agent.dir.path().join("go"), agent.dir.path().join("child-pid"));
    let dst = agent.target_cgroup("born-in");
    let (flag_s, dst_s, out_s) = (flag.display().to_string(), dst.path().display().to_string(), out.display().to_string());
    let _parent = spawn_outside(&[py(), "-c", CLONE_INTO, &flag_s, &dst_s, &out_s]);
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(5), || out.exists()).expect("clone3 result");
    let text = std::fs::read_to_string(&out).expect("child pid");
    let child: i32 = text.trim().parse().unwrap_or_else(|_| panic!("clone3 failed: {text}"));
    guard.0.push(child);
    let rel = cgroup_rel(dst.path());
    assert!(inside(child, &rel), "the child was born in the target: {:?}", cgroup_line(child));
    std::fs::write(root_procs(), child.to_string()).expect("move the child out");
    wait_until(Duration::from_secs(5), || !escape_records(&agent, child).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {child}\nlog:\n{}", agent.log_text()));
    let rec = &escape_records(&agent, child)[0];
    assert!(rec["outcome"].as_str().unwrap_or("").starts_with("moved back"), "{rec}");
    let r = stop(&agent, "born-in");
    assert_gone(&[run.pid(), child], &r);
}

/// The agent's scan racing a move out: a task read in a target's cgroup
/// that leaves before its mark is written passed cgroup_attach_task
/// unmarked (no escape counted by the kernel) and carries the mark outside.
/// The scan counts that escape itself, so that the stop signals the marks
/// before its kill instead of leaving the task running until the walk after
/// the cgroup empties. The race is made certain here by marking, through
/// the pinned maps, a task the test holds outside every target. Judged from
/// outside: /proc/PID, status of one target and of all.
#[test]
fn mark_written_after_the_task_left_counts_an_escape_and_the_stop_kills_it() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "scan-race", &["sleep", "1000"], 1);
    let inside_pid = run.pid();
    let mut outside = std::process::Command::new("sleep").arg("1000").spawn().expect("sleep outside");
    let outside_pid = outside.id() as i32;
    let _guard = Escapees(vec![outside_pid]);
    let row = target_row(&agent, "scan-race").expect("scan-race listed");
    let id = row["cgroup_id"].as_u64().expect("cgroup_id");
    let rel = cgroup_rel(agent.target_cgroup("scan-race").path());
    assert!(!inside(outside_pid, &rel), "the test's sleep is outside the target");
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let mut maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the agent's pinned maps");
    let members = maps.members.as_mut().expect("the membership maps are pinned");
    assert_eq!(members.escapes(id), 0, "no escape yet");
    // As if it was listed in cgroup.threads a moment ago and left since.
    let added = members.mark_tasks(&agent.target_cgroup("scan-race"), &[outside_pid as u32], id, &[]);
    assert_eq!(added, 1, "the mark is written");
    assert_eq!(members.get(outside_pid as u32).map(|m| m.target), Some(id), "marked as the target's");
    assert!(members.escapes(id) >= 1, "the mark outside counts an escape");
    // The mark outside counts as a member in status, one row or all.
    let one = agent.json(&["status", "scan-race"]);
    assert_eq!(one["targets"][0]["members"], 2, "status of one: {one}");
    assert_eq!(target_row(&agent, "scan-race").expect("listed")["members"], 2);
    let r = stop(&agent, "scan-race");
    // `alive` counts a zombie (the test's unreaped child) as dead.
    assert_gone(&[inside_pid, outside_pid], &r);
    let _ = outside.wait();
}

/// The agent's pin: the tgid the attach hook takes for the agent's own
/// moves (`KP_MEMBER_AGENT`).
fn member_agent(agent: &Agent) -> u32 {
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let path = killpath::kernel::pins::map_pin(&gen, killpath_common::maps::MEMBER_AGENT);
    let data = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let a: aya::maps::Array<_, u32> = aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array");
    a.get(&0, 0).expect("slot 0")
}

/// Runs `sh -c SCRIPT` as pid `want`, steering the kernel's next pid with
/// /proc/sys/kernel/ns_last_pid (another fork on the host may take it
/// first: retried). The script sees its pid as `$$`. Returns how it ended.
pub(crate) fn run_as_pid(want: i32, script: &str) -> std::process::ExitStatus {
    let body = format!("[ $$ = {want} ] || exit 3; {script}");
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string()).expect("ns_last_pid");
        let st = std::process::Command::new("/bin/sh").args(["-c", &body]).status().expect("sh");
        if st.code() != Some(3) {
            return st;
        }
    }
    panic!("could not get pid {want} in 200 tries");
}

/// A workload that gets a dead agent's pid cannot pass its moves off as the
/// agent's: when the agent's process dies, the exit hook stops naming it
/// (`KP_MEMBER_AGENT` back to 0), so a member moved out of its target by a
/// process that reused the pid is an escape, counted in the kernel. Judged
/// from the kernel: the pinned maps, and /proc.
#[test]
fn a_process_with_a_dead_agents_pid_moves_a_member_out_as_an_escape() {
    let Some(mut agent) = Agent::start() else { return };
    let run = run_bg(&agent, "agent-pid", &["sleep", "1000"], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let id = target_row(&agent, "agent-pid").expect("listed")["cgroup_id"].as_u64().expect("cgroup_id");
    let agent_pid = agent.pid();
    assert_eq!(member_agent(&agent), agent_pid as u32, "the live agent is named");
    agent.kill9();
    assert!(!alive(agent_pid), "the agent is dead");
    assert_eq!(member_agent(&agent), 0, "a dead agent's pid names no agent");
    let st = run_as_pid(agent_pid, &format!("echo {pid} > {}", root_procs()));
    assert!(st.success(), "the move as the dead agent's pid failed: {st}");
    let rel = cgroup_rel(agent.target_cgroup("agent-pid").path());
    assert!(!inside(pid, &rel), "the member was moved out: {:?}", cgroup_line(pid));
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_ref().expect("the membership maps are pinned");
    assert!(members.escapes(id) >= 1, "the move by the dead agent's pid is counted as an escape");
    let r = direct_stop(&agent, "agent-pid");
    assert_gone(&[pid], &r);
}
