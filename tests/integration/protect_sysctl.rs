//! Tests: protection `protect.sysctl` (a cgroup sysctl program on each
//! target's cgroup, no BPF LSM needed, so on this host too). The agent
//! sizes the membership map from `kernel.pid_max` and
//! `kernel.threads-max`; a root target that raised them could outgrow its
//! marks. Judged from outside the target: the sysctls as /proc/sys shows
//! them to the test, which also writes them itself to show the refusal is
//! killpath's (a read-only sysctl would refuse the test too).
use crate::{
    harness::{root, Agent},
    marks_capacity::{PidMax, PID_MAX},
    support::status::target_row,
};

const THREADS_MAX: &str = "/proc/sys/kernel/threads-max";
/// A sysctl the guard leaves alone: written back with its own value.
const OTHER: &str = "/proc/sys/kernel/printk_ratelimit";

/// Writes `kernel.threads-max` back on drop (a failed run may have let
/// the target raise it).
struct ThreadsMax(u64);

impl Drop for ThreadsMax {
    fn drop(&mut self) {
        let _ = std::fs::write(THREADS_MAX, self.0.to_string());
    }
}

fn read(path: &str) -> u64 {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}")).trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Root in a target tries to raise both limits and writes another sysctl;
/// the limits stay where they were, the other write goes through, the
/// refusals are counted for the target, and the same writes from outside
/// every target succeed.
#[test]
fn a_target_cannot_raise_the_task_limits_its_marks_are_sized_from() {
    if !root() {
        return;
    }
    let Some(agent) = Agent::start() else { return };
    let _restore = PidMax::keep();
    let (pid_max, threads_max) = (read(PID_MAX), read(THREADS_MAX));
    let _restore_threads = ThreadsMax(threads_max);
    let out = agent.dir.path().join("sysctl-attempts");
    // Each write in its own subshell: a refused redirection fails the
    // command, and $? keeps its status.
    let script = format!(
        "(echo {} > {PID_MAX}); a=$?; (echo {} > {THREADS_MAX}); b=$?; (v=$(cat {OTHER}); echo $v > {OTHER}); c=$?; echo $a $b $c > {}",
        pid_max + 1,
        threads_max + 1,
        out.display()
    );
    let run = agent.kp(&["run", "climber", "--", "sh", "-c", &script]);
    assert!(run.status.success(), "run: {}", String::from_utf8_lossy(&run.stderr));
    assert_eq!((read(PID_MAX), read(THREADS_MAX)), (pid_max, threads_max), "a target raised a task limit");
    let codes = std::fs::read_to_string(&out).expect("the attempts' exit codes");
    let codes: Vec<&str> = codes.split_whitespace().collect();
    assert_eq!(codes, ["1", "1", "0"], "exit codes of the pid_max write, the threads-max write, the other write");

    let row = target_row(&agent, "climber").expect("status row");
    assert!(row["protections_refused"]["protect.sysctl"].as_u64() >= Some(2), "{}", row["protections_refused"]);
    let probe = agent.json(&["probe"]);
    let guard = probe["protections"].as_array().into_iter().flatten().find(|p| p["name"] == "protect.sysctl");
    assert!(guard.is_some_and(|p| p["on"] == true), "probe: {}", probe["protections"]);

    // Outside every target the same writes succeed (undone on drop).
    std::fs::write(PID_MAX, (pid_max + 1).to_string()).expect("the test raises pid_max itself");
    std::fs::write(THREADS_MAX, (threads_max + 1).to_string()).expect("the test raises threads-max itself");
}
