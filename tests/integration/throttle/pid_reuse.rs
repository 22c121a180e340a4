//! Tests: the pacer resumes the process the kernel paused, never whoever
//! holds its number by then. The kernel's pause event names the process by
//! number; the agent may read it a while later (busy, or held), and a root
//! workload whose paused process exits can have the host's next task get
//! that number (`kernel.ns_last_pid`). Judged from outside: the bystander's
//! state in /proc/PID/stat.
use std::time::Duration;

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::{throttle, throttle_row};
use crate::{
    harness::{wait_until, Agent},
    support::process::{bystander_with_pid, proc_state, py, run_bg, spawn_outside, Resume},
};

/// Waits for argv[1] to exist, then writes one byte to /dev/null in a loop
/// (class fs-write), until the kernel pauses it.
const PACED_WRITER: &str = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.02)\n\
                            fd = os.open('/dev/null', os.O_WRONLY)\nwhile True:\n    os.write(fd, b'x')\n";

/// With the agent held (SIGSTOP), the kernel pauses a target's writer at its
/// fs-write ceiling and posts the event; the writer is killed and reaped,
/// and a bystander outside every target, stopped by "an operator", gets
/// its number. Resumed, the agent paces the target and lets it go; the
/// bystander must stay stopped: a SIGCONT through a pidfd opened on the
/// event's number would have resumed it.
#[test]
fn the_pacer_does_not_resume_a_process_that_reused_the_paused_ones_number() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let go = dir.join("go");
    let _run = run_bg(&agent, "reuse", &["sleep", "1000"], 1);
    // The writer is the test's child, moved into the target: the test reaps
    // it, freeing its number, with nothing of the target's doing it (a
    // parent in the target would be paused with it).
    let reaper = spawn_outside(&[py(), "-c", PACED_WRITER, &go.to_string_lossy()]);
    let writer = reaper.pid();
    std::fs::write(agent.target_cgroup("reuse").path().join("cgroup.procs"), writer.to_string()).expect("moving the writer into the target");
    throttle(&agent, &["reuse", "--syscall-class", "fs-write=10/s"]);
    kill(Pid::from_raw(agent.pid()), Signal::SIGSTOP).expect("SIGSTOP agent");
    let resume = Resume(agent.pid());
    std::fs::write(&go, "").expect("go");
    wait_until(Duration::from_secs(10), || proc_state(writer) == Some('T'))
        .unwrap_or_else(|| panic!("the kernel never paused the writer {writer} (state {:?})", proc_state(writer)));
    kill(Pid::from_raw(writer), Signal::SIGKILL).expect("SIGKILL the writer");
    drop(reaper);
    let bystander = bystander_with_pid(writer);
    kill(Pid::from_raw(writer), Signal::SIGSTOP).expect("SIGSTOP the bystander");
    wait_until(Duration::from_secs(5), || proc_state(writer) == Some('T')).expect("the bystander never stopped");
    drop(resume);
    // The pacer reads the event, holds the target for its debt (0.1 s at
    // 10/s) and lets it go, resuming what it saw paused: done once it has
    // frozen the target and holds it no more.
    let mut row = serde_json::Value::Null;
    let handled = wait_until(Duration::from_secs(30), || {
        row = throttle_row(&agent, "reuse");
        row["freezes"].as_u64().is_some_and(|n| n >= 1) && row["frozen_for_debt"] == false
    });
    // A SIGCONT comes after the thaw: give a wrong one time to land.
    std::thread::sleep(Duration::from_millis(500));
    let state = proc_state(writer);
    assert!(handled.is_some(), "the pacer never held and released the target: {row}\nlog:\n{}", agent.log_text());
    assert_eq!(state, Some('T'), "the bystander {writer} was resumed by the pacer\nthrottle: {row}\nlog:\n{}", agent.log_text());
    assert_eq!(row["paused_not_resumed"], 1, "the refusal is counted: {row}");
    drop(bystander);
}
