//! Tests: `KP_MEMBERS` holds a mark for every task the kernel can run
//! (`kernel::marks_capacity`). With `pid_max` at systemd's usual 4,194,304,
//! a target can hold more tasks than the object's 65,536 marks; a task
//! forked past a full map went unmarked, left the target's cgroup unseen
//! and outlived the stop. A pinned map keeps its size, so an agent started
//! after a limit was raised moves to a new pin generation with a larger
//! map, marks taken over. Judged from outside: /proc, the journal file,
//! the pin directory.
use std::time::Duration;

use killpath::kernel::marks_capacity::{TaskLimit, MIN};

use crate::{
    harness::{alive, root, wait_until, Agent},
    membership::{escape_records, root_procs, Escapees},
    support::{
        process::{py, run_bg},
        status::stop,
    },
};

/// Restores `kernel.pid_max` on drop.
pub(crate) struct PidMax(String);

pub(crate) const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    /// Sets `kernel.pid_max` to `to` (4,194,304: what systemd sets on most hosts).
    fn set(to: u32) -> Self {
        let kept = Self::keep();
        std::fs::write(PID_MAX, to.to_string()).expect("set pid_max");
        kept
    }

    /// Keeps the value now, to restore on drop.
    pub(crate) fn keep() -> Self {
        Self(std::fs::read_to_string(PID_MAX).expect("read pid_max").trim().to_owned())
    }
}

/// The marks section of `status`.
fn marks(agent: &Agent) -> serde_json::Value {
    agent.json(&["status"])["membership"]["marks"].clone()
}

/// The pin generations under the agent's pin dir.
fn generations(agent: &Agent) -> Vec<std::path::PathBuf> {
    killpath::kernel::pins::generations(&agent.pin_dir)
}

impl Drop for PidMax {
    fn drop(&mut self) {
        let _ = std::fs::write(PID_MAX, &self.0);
    }
}

/// Workers (processes) the threads are spread over: each thread's stack is
/// two mappings, and one process may have 65,530 (`vm.max_map_count`).
const WORKERS: u32 = 8;

/// A target grows past 65,536 tasks (8 processes of 8,250 threads), then
/// forks a process that moves itself to the cgroup2 root. Its mark must be
/// stored like any other: the agent sees the escape, and the stop kills
/// it. Fails with a fixed 65,536-mark map: the child goes unmarked, no
/// escape is seen, and it survives a stop that reports 0 survivors.
#[test]
fn a_task_forked_past_65536_marks_is_still_marked_and_killed() {
    if !root() {
        return;
    }
    let _pid_max = PidMax::set(killpath::kernel::marks_capacity::PID_MAX_LIMIT);
    let per_worker = MIN / WORKERS + 58;
    let tasks = u64::from(per_worker * WORKERS);
    let limit = TaskLimit::read().expect("the kernel's task limits");
    assert!(limit.threads_max > tasks + 20_000, "this machine's threads-max {} is too low to run {tasks} threads", limit.threads_max);
    let Some(agent) = Agent::start() else { return };
    let marks = marks(&agent);
    assert!(marks["capacity"].as_u64().unwrap_or(0) >= limit.tasks(), "the map holds a mark for every task: {marks}");
    assert!(marks["capacity_short"].is_null(), "{marks}");
    let flag = agent.dir.path().join("escapee");
    let script = format!(
        "import os, threading, time\n\
         threading.stack_size(32768)\n\
         r, w = os.pipe()\n\
         for _ in range({WORKERS}):\n    if os.fork() == 0:\n        for _ in range({per_worker}):\n            threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n        os.write(w, b'x')\n        time.sleep(1000)\n\
         got = 0\n\
         while got < {WORKERS}:\n    got += len(os.read(r, {WORKERS}))\n\
         pid = os.fork()\n\
         if pid == 0:\n    open('{root}', 'w').write('0')\n    time.sleep(1000)\n\
         open('{flag}.tmp', 'w').write(str(pid))\n\
         os.rename('{flag}.tmp', '{flag}')\n\
         time.sleep(1000)\n",
        root = root_procs(),
        flag = flag.display()
    );
    let run = run_bg(&agent, "many", &[py(), "-c", &script], 1);
    let mut guard = Escapees(vec![run.pid()]);
    wait_until(Duration::from_secs(120), || flag.exists()).unwrap_or_else(|| panic!("the target never forked its escapee\nlog:\n{}", agent.log_text()));
    let escapee: i32 = std::fs::read_to_string(&flag).expect("the escapee's pid").trim().parse().expect("a pid");
    guard.0.push(escapee);
    // The move out was seen (the mark was stored): journaled as an escape.
    wait_until(Duration::from_secs(10), || !escape_records(&agent, escapee).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {escapee}, forked past 65,536 tasks: was it marked?\nlog:\n{}", agent.log_text()));
    let report = stop(&agent, "many");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(escapee)).is_some(),
        "the escapee forked past 65,536 tasks outlived the stop (cgroup {:?}): {report}",
        std::fs::read_to_string(format!("/proc/{escapee}/cgroup")).unwrap_or_default()
    );
    assert_eq!(report["survivors"], 0, "{report}");
    assert_eq!(report["marks_lost"], 0, "the stop vouches for every mark: {report}");
    assert_eq!(agent.json(&["status"])["membership"]["marks_lost"], 0, "no mark was lost");
}

/// An agent starts under the host's small `pid_max` (a 65,536-mark map),
/// its target's process is moved out to the cgroup2 root while the agent
/// is down, then `pid_max` is raised and the agent started again on the
/// same pins: it must move to a new generation whose map holds a mark for
/// every task (status: no shortfall), retire the old one, and still know
/// the escaped process by the mark it took over: the stop kills it. Fails
/// if the agent reuses the old generation (status names the shortfall) or
/// loses the marks on the way (the escapee outlives the stop).
#[test]
fn an_agent_started_after_pid_max_was_raised_moves_its_marks_to_a_larger_map() {
    if !root() {
        return;
    }
    let pid_max = PidMax::set(32_768);
    let Some(mut agent) = Agent::start() else { return };
    let small = marks(&agent);
    assert_eq!(small["capacity"].as_u64(), Some(u64::from(MIN)), "{small}");
    let run = run_bg(&agent, "grown", &["sleep", "1000"], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let before = generations(&agent);
    assert_eq!(before.len(), 1, "{before:?}");
    agent.kill9();
    std::fs::write(root_procs(), pid.to_string()).expect("out to the root");
    std::fs::write(PID_MAX, killpath::kernel::marks_capacity::PID_MAX_LIMIT.to_string()).expect("raise pid_max");
    agent.spawn();
    let grown = marks(&agent);
    let limit = TaskLimit::read().expect("the kernel's task limits");
    assert!(grown["capacity"].as_u64().unwrap_or(0) >= limit.tasks(), "a map for every task: {grown}");
    assert!(grown["capacity_short"].is_null(), "{grown}");
    wait_until(Duration::from_secs(10), || generations(&agent).len() == 1 && !generations(&agent).contains(&before[0]))
        .unwrap_or_else(|| panic!("the old generation {before:?} was not retired: {:?}\nlog:\n{}", generations(&agent), agent.log_text()));
    let report = stop(&agent, "grown");
    assert!(wait_until(Duration::from_secs(2), || !alive(pid)).is_some(), "the escaped process outlived the stop: {report}");
    assert_eq!(report["survivors"], 0, "{report}");
    drop(pid_max);
}
