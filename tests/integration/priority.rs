//! The agent runs at a raised priority (nice -10, every thread), so a
//! command's wake-ups do not wait behind busy tasks; what it starts (the
//! alert hook) runs at the default priority.
use std::{fs, time::Duration};

use crate::{
    harness::{wait_until, Agent},
    support::process::run_bg,
};

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat (or a task's).
fn stat_field(stat_path: &str, n: usize) -> i64 {
    crate::support::process::stat_field(stat_path, n).unwrap_or_else(|| panic!("no field {n} in {stat_path}"))
}

/// Field 19: the nice value.
fn nice(stat_path: &str) -> i64 {
    stat_field(stat_path, 19)
}

#[test]
fn agent_threads_run_raised_and_its_hook_does_not() {
    let hook_dir = tempfile::tempdir().expect("tempdir");
    let hook_file = hook_dir.path().join("nice");
    // The hook records its own nice value (field 19 of its stat).
    let hook = format!("cat >/dev/null; cut -d' ' -f19 /proc/$$/stat > '{}'", hook_file.display());
    let Some(agent) = Agent::start_with(&["--alert-hook", &hook]) else { return };
    let tasks: Vec<String> =
        fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(tasks.len() > 1, "{tasks:?}");
    // Every thread at the agent's -10, but the stop threads, which wait
    // for stops at -20 (see agent/stop_thread.rs), and the thread that
    // reads a stop's marks beside it (agent/stop_marks.rs): there must be
    // one real-time stop thread.
    let mut stop_threads = 0;
    for t in &tasks {
        let comm = fs::read_to_string(format!("/proc/{}/task/{t}/comm", agent.pid())).unwrap_or_default();
        let want = if ["kp-stop", "kp-stop-cfs", "kp-stop-marks", "kp-stop-prep"].contains(&comm.trim()) { -20 } else { -10 };
        stop_threads += usize::from(comm.trim() == "kp-stop");
        let stat = format!("/proc/{}/task/{t}/stat", agent.pid());
        assert_eq!(nice(&stat), want, "agent thread {t} ({})", comm.trim());
        // The stop thread is real-time (fields 40 and 41: rt_priority and
        // policy, SCHED_FIFO = 1), so a fork bomb cannot outweigh it.
        if comm.trim() == "kp-stop" {
            assert_eq!((stat_field(&stat, 40), stat_field(&stat, 41)), (2, 1), "kp-stop is SCHED_FIFO 2");
        }
        // The kill's preparation (stop::prepared) and the marks thread
        // are real-time below it (the marks thread waits real-time so that
        // a stop's request wakes it at once; see agent/stop_marks.rs).
        if comm.trim() == "kp-stop-prep" || comm.trim() == "kp-stop-marks" {
            assert_eq!((stat_field(&stat, 40), stat_field(&stat, 41)), (1, 1), "{} is SCHED_FIFO 1", comm.trim());
        }
        // Its backup is ordinary on purpose (see agent/stop_thread.rs).
        if comm.trim() == "kp-stop-cfs" {
            assert_eq!(stat_field(&stat, 41), 0, "{} is SCHED_OTHER", comm.trim());
        }
    }
    assert_eq!(stop_threads, 1, "no kp-stop thread among {tasks:?}");
    // And says so, where an operator looks.
    let st = agent.json(&["status"]);
    assert_eq!(st["stop_thread"], "SCHED_FIFO 2", "status reports the stop thread's class");
    assert_eq!(st["stop_thread_backup"], "nice -20", "and its backup's");
    let probe = agent.json(&["probe"]).to_string();
    assert!(probe.contains("stop thread SCHED_FIFO 2"), "probe reports the stop thread's class: {probe}");
    let _t = run_bg(&agent, "w", &["sleep", "1000"], 1);
    agent.json(&["degrade", "w", "--revoke", "net.connect"]);
    let seen = wait_until(Duration::from_secs(10), || fs::read_to_string(&hook_file).is_ok_and(|s| !s.trim().is_empty()));
    assert!(seen.is_some(), "the alert hook never ran; agent log:\n{}", agent.log_text());
    assert_eq!(fs::read_to_string(&hook_file).unwrap().trim(), "0", "the hook runs at the default priority");

    // After a stop, checked in the index the marks thread keeps, the marks
    // thread waits real-time again (SCHED_FIFO 1, nice -20 kept for the
    // part of a long read or a build of the index it makes in the ordinary
    // class).
    let r = crate::support::status::stop(&agent, "w");
    assert_eq!(r["marks_checked"], "index", "the marks thread keeps the index: {r}");
    let marks = tasks.iter().find(|t| fs::read_to_string(format!("/proc/{}/task/{t}/comm", agent.pid())).is_ok_and(|c| c.trim() == "kp-stop-marks"));
    let stat = format!("/proc/{}/task/{}/stat", agent.pid(), marks.expect("a kp-stop-marks thread"));
    // Polled: the stop may have answered before the read ended.
    let back = wait_until(Duration::from_secs(2), || (stat_field(&stat, 40), stat_field(&stat, 41), nice(&stat)) == (1, 1, -20));
    assert!(back.is_some(), "kp-stop-marks after a stop: (rt priority, policy, nice) = {:?}", (stat_field(&stat, 40), stat_field(&stat, 41), nice(&stat)));
}
