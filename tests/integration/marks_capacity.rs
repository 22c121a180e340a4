//! Tests: `KP_MEMBERS` holds a mark for every task the kernel can run
//! (`kernel::marks_capacity`). With `pid_max` at systemd's usual 4,194,304,
//! a target can hold more tasks than the object's 65,536 marks; a task
//! forked past a full map went unmarked, left the target's cgroup unseen
//! and outlived the stop. Judged from outside: /proc and the cgroup the
//! escapee sits in.
use std::time::Duration;

use killpath::kernel::marks_capacity::{TaskLimit, MIN};

use crate::{
    harness::{alive, wait_until, Agent},
    membership::{root_procs, Escapees},
    support::{
        process::{py, run_bg},
        status::stop,
    },
};

/// Restores `kernel.pid_max` on drop.
struct PidMax(String);

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    /// Raises `kernel.pid_max` to `to` (what systemd sets on most hosts).
    fn raise(to: u32) -> Self {
        let old = std::fs::read_to_string(PID_MAX).expect("read pid_max");
        std::fs::write(PID_MAX, to.to_string()).expect("raise pid_max");
        Self(old.trim().to_owned())
    }
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
/// it. Fails with a fixed 65,536-mark map: the child goes unmarked, stays
/// in the root cgroup and survives a stop that reports 0 survivors.
#[test]
fn a_task_forked_past_65536_marks_is_still_marked_and_killed() {
    let _pid_max = PidMax::raise(killpath::kernel::marks_capacity::PID_MAX_LIMIT);
    let per_worker = MIN / WORKERS + 58;
    let tasks = u64::from(per_worker * WORKERS);
    let limit = TaskLimit::read().expect("the kernel's task limits");
    assert!(limit.threads_max > tasks + 20_000, "this machine's threads-max {} is too low to run {tasks} threads", limit.threads_max);
    let Some(agent) = Agent::start() else { return };
    let marks = &agent.json(&["status"])["membership"]["marks"];
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
