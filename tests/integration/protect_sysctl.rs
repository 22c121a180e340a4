//! Tests: protection `protect.sysctl` (a cgroup sysctl program on each
//! target's cgroup, no BPF LSM needed, so on this host too). The agent
//! sizes the membership map from `kernel.pid_max` and
//! `kernel.threads-max`, and the kernel runs `kernel.core_pattern`'s
//! helper (and modprobe's) as root outside every target: a root target
//! must write none of them. Judged from outside the target: the sysctls as
//! /proc/sys shows them to the test, which also writes them itself to show
//! the refusal is killpath's (a read-only sysctl would refuse the test too).
use crate::{
    harness::{root, Agent},
    marks_capacity::{PidMax, PID_MAX},
    support::status::target_row,
};

const THREADS_MAX: &str = "/proc/sys/kernel/threads-max";
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// Which number the pid namespace hands out next (the last one given).
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
/// A sysctl the guard leaves alone: written back with its own value.
const OTHER: &str = "/proc/sys/kernel/printk_ratelimit";

/// Writes a sysctl's value back on drop (a failed run may have let the
/// target, or this test, change it).
struct Restore(&'static str, String);

impl Restore {
    fn keep(path: &'static str) -> Self {
        Self(path, read(path))
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}")).trim().to_owned()
}

fn number(path: &str) -> u64 {
    read(path).parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Root in a target tries to raise both task limits (lowered from outside
/// first, so that raising them is always a valid value: `pid_max` may sit
/// at its ceiling), to point `core_pattern` at a helper and to set
/// `ns_last_pid`, and writes another sysctl; the first three stay as they
/// were, the `ns_last_pid` write fails, the other write goes through, the
/// refusals are counted for the target, and the same writes from outside
/// every target succeed.
#[test]
fn a_target_cannot_write_the_task_limits_or_the_core_pattern() {
    if !root() {
        return;
    }
    let Some(agent) = Agent::start() else { return };
    let (_pid_max, _threads_max, _core) = (PidMax::keep(), Restore::keep(THREADS_MAX), Restore::keep(CORE_PATTERN));
    let (pid_max, threads_max) = (number(PID_MAX) - 1000, number(THREADS_MAX) - 1000);
    std::fs::write(PID_MAX, pid_max.to_string()).expect("lowering pid_max from outside");
    std::fs::write(THREADS_MAX, threads_max.to_string()).expect("lowering threads-max from outside");
    let core = read(CORE_PATTERN);
    let out = agent.dir.path().join("sysctl-attempts");
    // Each write in its own subshell: the refused write(2) fails echo, and
    // $? keeps its status.
    let script = format!(
        "(echo {} > {PID_MAX}); a=$?; (echo {} > {THREADS_MAX}); b=$?; (echo '|/bin/true %p' > {CORE_PATTERN}); c=$?; \
         (v=$(cat {OTHER}); echo $v > {OTHER}); d=$?; (v=$(cat {NS_LAST_PID}); echo $v > {NS_LAST_PID}); e=$?; \
         echo $a $b $c $d $e > {}",
        pid_max + 500,
        threads_max + 500,
        out.display()
    );
    let run = agent.kp(&["run", "climber", "--", "sh", "-c", &script]);
    assert!(run.status.success(), "run: {}", String::from_utf8_lossy(&run.stderr));
    assert_eq!((number(PID_MAX), number(THREADS_MAX)), (pid_max, threads_max), "a target raised a task limit");
    assert_eq!(read(CORE_PATTERN), core, "a target set the core pattern");
    let codes = std::fs::read_to_string(&out).expect("the attempts' exit codes");
    let codes: Vec<&str> = codes.split_whitespace().collect();
    assert_eq!(codes, ["1", "1", "1", "0", "1"], "exit codes of the pid_max, threads-max, core_pattern, other and ns_last_pid writes");

    let row = target_row(&agent, "climber").expect("status row");
    assert!(row["protections_refused"]["protect.sysctl"].as_u64() >= Some(4), "{}", row["protections_refused"]);
    let probe = agent.json(&["probe"]);
    let guard = probe["protections"].as_array().into_iter().flatten().find(|p| p["name"] == "protect.sysctl");
    assert!(guard.is_some_and(|p| p["on"] == true), "probe: {}", probe["protections"]);

    // Outside every target the same writes take effect (undone on drop).
    std::fs::write(PID_MAX, (pid_max + 500).to_string()).expect("the test raises pid_max itself");
    std::fs::write(THREADS_MAX, (threads_max + 500).to_string()).expect("the test raises threads-max itself");
    assert_eq!((number(PID_MAX), number(THREADS_MAX)), (pid_max + 500, threads_max + 500), "the writes from outside did not take");
    std::fs::write(NS_LAST_PID, read(NS_LAST_PID)).expect("the test writes ns_last_pid itself");
}
