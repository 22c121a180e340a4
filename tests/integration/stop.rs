//! Tests: stop. `killpath stop NAME` (level 4) leaves no survivors, whatever
//! the workload does: process trees, SIGTERM-ignoring loops, nested
//! sub-cgroups, fork bombs; and the kernel guard kills what is moved into a
//! stopped target afterwards.
//!
//! The small helpers at the top are shared with `targets.rs` and
//! `fallback.rs`.
use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use killpath::cgroup::Cgroup;
use nix::{
    sys::signal::{kill, killpg, Signal},
    unistd::Pid,
};
use serde_json::Value;

use crate::harness::{alive, wait_until, Agent};

// ---------------------------------------------------------------- helpers

/// A process the test spawned outside any target, in its own process group.
/// Dropping it SIGKILLs the whole group and reaps the leader, so nothing the
/// test started outside the agent's cgroup parent outlives the test.
pub(crate) struct Outside {
    child: Child,
}

impl Outside {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` outside any target (in the test's own cgroup), as the
/// leader of a new process group.
pub(crate) fn spawn_outside(cmd: &[&str]) -> Outside {
    let child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Outside { child }
}

/// A `killpath run` child (the command exec'd in place): SIGKILLed and
/// reaped on drop, so it never stays a zombie of the test process.
pub(crate) struct Reaped(pub(crate) Child);

impl Reaped {
    pub(crate) fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agent.run_bg`, wrapped so the child is reaped.
pub(crate) fn run_bg(agent: &Agent, name: &str, cmd: &[&str], min_tasks: usize) -> Reaped {
    Reaped(agent.run_bg(name, cmd, min_tasks))
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One-line description of a finished `killpath` command, for messages.
pub(crate) fn show(out: &Output) -> String {
    format!("exit {}\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Sorted pids (processes) in a cgroup and every cgroup below it.
pub(crate) fn pids(cg: &Cgroup) -> Vec<i32> {
    let mut v = cg.procs_recursive();
    v.sort_unstable();
    v
}

/// The pids of `pids` that are still alive (not gone, not zombies).
pub(crate) fn living(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

/// Parent pid from /proc, if the process exists.
pub(crate) fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Live direct children of `pid`.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| ppid(*p) == Some(pid) && alive(*p))
        .collect();
    out.sort_unstable();
    out
}

/// The row for `name` in `status --json`, if listed.
pub(crate) fn target_row(agent: &Agent, name: &str) -> Option<Value> {
    let st = agent.json(&["status"]);
    st["targets"].as_array().expect("status has a targets array").iter().find(|t| t["name"] == name).cloned()
}

pub(crate) fn guard_kills(agent: &Agent) -> u64 {
    agent.json(&["status"])["guard_kills"].as_u64().expect("status has guard_kills")
}

/// The cgroup2 path of `pid` (the `0::` line of /proc/PID/cgroup).
pub(crate) fn cgroup_line(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// `path` relative to the cgroup2 mount, with a leading `/` (as in /proc/PID/cgroup).
pub(crate) fn cgroup_rel(path: &std::path::Path) -> String {
    let mount = killpath::cgroup::cgroup2_mount().expect("cgroup2 mount");
    format!("/{}", path.strip_prefix(&mount).expect("path below the cgroup2 mount").display())
}

/// Creates a cgroup directory (and parents) for the test.
pub(crate) fn make_cgroup(path: PathBuf) -> Cgroup {
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    let cg = Cgroup::new(path);
    assert!(cg.exists(), "{} is not a cgroup", cg.path().display());
    cg
}

/// Moves `pid` into `cg` (the write to cgroup.procs must succeed; the
/// caller checks where it landed: a stopped target may kill it at once).
pub(crate) fn move_into(cg: &Cgroup, pid: i32) {
    cg.move_pid(pid).unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", cg.path().display()));
}

/// Waits up to 2 s for every pid to be dead (the kill is asynchronous only
/// for the last few microseconds of exit; the stop already waited for
/// `populated 0`, so this is normally immediate).
pub(crate) fn assert_all_dead(agent: &Agent, what: &str, pids: &[i32]) {
    if wait_until(Duration::from_secs(2), || living(pids).is_empty()).is_none() {
        panic!("{what}: still alive: {:?} (of {pids:?})\nagent log:\n{}", living(pids), agent.log_text());
    }
}

/// `killpath --json stop NAME`, asserting success.
pub(crate) fn stop(agent: &Agent, name: &str) -> Value {
    agent.json(&["stop", name])
}

/// Everything a completed hard stop must show: the report says 0 survivors
/// and a time, every pid recorded before is dead, the cgroup (checked in
/// cgroup.events and cgroup.procs, recursively) is empty, and status says
/// the target is stopped, in the registry and in the kernel map.
pub(crate) fn assert_stopped(agent: &Agent, name: &str, cg: &Cgroup, report: &Value, before: &[i32]) {
    assert_eq!(report["survivors"], 0, "stop left survivors: {report}\nagent log:\n{}", agent.log_text());
    assert_eq!(report["level"], "stopped", "{report}");
    let tte = report["time_to_empty_us"].as_u64().unwrap_or_else(|| panic!("no time_to_empty_us: {report}"));
    assert!(tte > 0, "time_to_empty_us must be a measured time: {report}");
    let tth = report["time_to_halt_us"].as_u64().unwrap_or_else(|| panic!("no time_to_halt_us: {report}"));
    assert!(tth > 0 && tth <= tte, "halt ({tth} µs) must come before empty ({tte} µs): {report}");
    assert_all_dead(agent, &format!("after stop {name}"), before);
    for sub in cg.subtree() {
        assert_eq!(sub.populated().ok(), Some(false), "{} still populated after stop: {report}", sub.path().display());
        assert!(sub.procs().is_empty(), "{} still lists {:?}", sub.path().display(), sub.procs());
    }
    let row = target_row(agent, name).unwrap_or_else(|| panic!("status no longer lists {name}"));
    assert_eq!(row["level"], "stopped", "{row}");
    assert_eq!(row["kernel_level"], "stopped", "the guard must be armed in the kernel map: {row}");
    assert_eq!(row["tasks"], 0, "{row}");
    assert_eq!(row["last_stop"]["survivors"], 0, "{row}");
}

// ---------------------------------------------------------------- tests

#[test]
fn stop_single_process() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "single", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("single");
    let before = pids(&cg);
    assert_eq!(before, vec![run.pid()], "`run` execs in place: the one task is the run process");

    let r = stop(&agent, "single");
    assert_eq!(r["tasks_at_start"], 1, "{r}");
    assert_stopped(&agent, "single", &cg, &r, &before);
}

#[test]
fn stop_three_level_tree() {
    let Some(agent) = Agent::start() else { return };
    // outer sh -> inner sh -> 2 x sleep: 4 processes on 3 levels.
    let run = run_bg(&agent, "tree", &["sh", "-c", "sh -c 'sleep 1000 & sleep 1000; wait' & wait"], 4);
    let cg = agent.target_cgroup("tree");
    let before = pids(&cg);
    assert_eq!(before.len(), 4, "expected sh, sh, sleep, sleep: {before:?}");
    let outer = run.pid();
    let inner = children(outer);
    assert_eq!(inner.len(), 1, "outer sh has one child (the inner sh): {inner:?}");
    let leaves = children(inner[0]);
    assert_eq!(leaves.len(), 2, "inner sh has two sleeps: {leaves:?}");
    let mut tree: Vec<i32> = [outer, inner[0]].into_iter().chain(leaves).collect();
    tree.sort_unstable();
    assert_eq!(tree, before, "the whole tree, and only it, is in the target");

    let r = stop(&agent, "tree");
    assert_eq!(r["tasks_at_start"], 4, "{r}");
    assert_stopped(&agent, "tree", &cg, &r, &before);
}

#[test]
fn stop_kills_sigterm_ignoring_process() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "stubborn", &["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], 1);
    let cg = agent.target_cgroup("stubborn");
    let sh = run.pid();
    // Let the trap be installed (the first sleep child appears after it).
    wait_until(Duration::from_secs(5), || !children(sh).is_empty()).expect("the loop never forked its first sleep");
    kill(Pid::from_raw(sh), Signal::SIGTERM).expect("send SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(sh), "the workload ignores SIGTERM, so it must survive it (otherwise this test proves nothing)");
    assert!(cg.procs().contains(&sh));

    let before = pids(&cg);
    let r = stop(&agent, "stubborn");
    // sh, plus the current `sleep 0.05` when one is in flight.
    let n = r["tasks_at_start"].as_u64().unwrap_or(0);
    assert!((1..=2).contains(&n), "tasks_at_start should be sh (+ a sleep): {r}");
    assert_stopped(&agent, "stubborn", &cg, &r, &before);
    assert!(!alive(sh), "stop must kill what SIGTERM did not");
}

#[test]
fn stop_reaches_nested_sub_cgroups() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "nest", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("nest");
    let deeper = make_cgroup(cg.path().join("inner").join("deeper"));
    let escapee = spawn_outside(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    wait_until(Duration::from_secs(5), || children(escapee.pid()).len() == 2).expect("two sleeps");
    let mut moved = vec![escapee.pid()];
    moved.extend(children(escapee.pid()));
    for p in &moved {
        move_into(&deeper, *p);
    }
    let before = pids(&cg);
    let mut want: Vec<i32> = moved.iter().copied().chain([run.pid()]).collect();
    want.sort_unstable();
    assert_eq!(before, want, "target subtree holds the run process and the nested tree");
    assert_eq!(cgroup_line(moved[0]), Some(cgroup_rel(deeper.path())));

    let r = stop(&agent, "nest");
    assert_eq!(r["tasks_at_start"], 4, "tasks in nested cgroups count too: {r}");
    assert_stopped(&agent, "nest", &cg, &r, &before);
}

#[test]
fn stop_fork_bomb() {
    let Some(agent) = Agent::start() else { return };
    // Four loops forking `sleep` as fast as they can (~1000 new tasks/s
    // here): grows fast, but linearly, so the host's pid space is safe.
    let bomb = "for i in 1 2 3 4; do (while :; do sleep 1000 & done) & done; wait";
    let _run = run_bg(&agent, "bomb", &["sh", "-c", bomb], 200);
    let cg = agent.target_cgroup("bomb");
    let before = pids(&cg);
    assert!(before.len() >= 200, "{}", before.len());

    let r = stop(&agent, "bomb");
    eprintln!(
        "fork bomb stop: tasks_at_start={} time_to_halt_us={} time_to_empty_us={} guard_kills={}",
        r["tasks_at_start"], r["time_to_halt_us"], r["time_to_empty_us"], r["guard_kills"]
    );
    let n = r["tasks_at_start"].as_u64().unwrap_or(0);
    assert!(n >= before.len() as u64, "the bomb kept growing until the stop, so tasks_at_start ({n}) >= {}: {r}", before.len());
    assert_stopped(&agent, "bomb", &cg, &r, &before);
    // Nothing comes back: no fork was in flight that escaped the kill.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        let left = pids(&cg);
        assert!(left.is_empty() && cg.populated().ok() == Some(false), "tasks reappeared {:?} after the stop", left);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a stop, anything moved into the target (a sleeper, a pure CPU
/// spinner that makes no syscalls) is SIGKILLed by the eBPF guard.
#[test]
fn stop_guard_kills_tasks_moved_in_later() {
    let Some(agent) = Agent::start() else { return };
    let _run = run_bg(&agent, "guarded", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("guarded");
    let before = pids(&cg);
    let r = stop(&agent, "guarded");
    assert_stopped(&agent, "guarded", &cg, &r, &before);

    for (what, cmd) in [("sleeper", &["sleep", "1000"][..]), ("spinner", &["python3", "-c", "while True: pass"][..])] {
        let p = spawn_outside(cmd);
        std::thread::sleep(Duration::from_millis(100));
        assert!(alive(p.pid()), "{what} runs outside the target");
        let kills = guard_kills(&agent);
        move_into(&cg, p.pid());
        let t0 = Instant::now();
        let died = wait_until(Duration::from_secs(2), || !alive(p.pid()));
        assert!(
            died.is_some(),
            "{what} moved into stopped target survives (state {:?}; cgroup.events: {:?})\nagent log:\n{}",
            std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).ok(),
            std::fs::read_to_string(cg.path().join("cgroup.events")).ok(),
            agent.log_text()
        );
        eprintln!("guard killed the {what} {} µs after the move", t0.elapsed().as_micros());
        let after = guard_kills(&agent);
        assert!(after > kills, "{what}: guard_kills did not increase ({kills} -> {after}): someone else killed it");
        assert!(wait_until(Duration::from_secs(2), || cg.populated().ok() == Some(false)).is_some(), "target repopulated");
    }
    let row = target_row(&agent, "guarded").expect("still listed");
    assert_eq!(row["level"], "stopped", "{row}");
}

#[test]
fn stop_unknown_target_fails_and_agent_keeps_serving() {
    let Some(agent) = Agent::start() else { return };
    let out = agent.kp(&["stop", "no-such-target"]);
    assert!(!out.status.success(), "stop of an unknown target must fail: {}", show(&out));
    let err = text(&out.stderr);
    assert!(err.contains("no-such-target") && err.contains("unknown"), "error names the target: {}", show(&out));
    assert!(!text(&out.stdout).contains("stopped"), "{}", show(&out));
    // Not a fallback: the agent answered, so the CLI must not bypass it.
    assert!(!err.contains("directly"), "{}", show(&out));
    let st = agent.json(&["status"]);
    assert_eq!(st["targets"], serde_json::json!([]), "{st}");
}
