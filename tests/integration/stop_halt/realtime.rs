//! A workload running as root makes itself real-time above the stop
//! thread on every CPU (a SCHED_FIFO 99 busy loop pinned to each CPU): the
//! real-time stop thread (SCHED_FIFO 2) then gets no CPU at all, and the
//! backup stop thread (ordinary class, nice -20) must stop it with the
//! share the kernel keeps for ordinary tasks. Judged from outside: nothing
//! of the target alive in /proc, and the stop answered long before the
//! loops would have ended on their own.
use std::time::{Duration, Instant};

use super::{living_in, rel_of};
use crate::{
    harness::{wait_until, Agent},
    support::{
        process::{pids, py, run_bg, stat_field},
        status::stop,
    },
};

/// Each loop ends on its own after this long: a stop that fails must not
/// leave the machine to real-time loops.
const HOG_SECONDS: u64 = 30;

#[test]
fn stop_halt_realtime_loops_on_every_cpu_cannot_hold_the_stop() {
    let Some(agent) = Agent::start() else { return };
    // Ordinary tasks keep a share only while the kernel throttles
    // real-time ones (-1 would hand the machine to the loops).
    let rt = std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us").expect("sched_rt_runtime_us");
    assert_ne!(rt.trim(), "-1", "this host does not throttle real-time tasks: the test would stall it");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let code = format!(
        "import os,sys,time\nos.sched_setaffinity(0,{{int(sys.argv[1])}})\nos.sched_setscheduler(0,os.SCHED_FIFO,os.sched_param(99))\nend=time.monotonic()+{HOG_SECONDS}\nwhile time.monotonic()<end: pass"
    );
    let script = format!("for c in $(seq 0 {}); do {} -c \"{code}\" $c & done; wait", cpus - 1, py());
    let _run = run_bg(&agent, "rthogs", &["sh", "-c", &script], cpus + 1);
    let cg = agent.target_cgroup("rthogs");
    // Every loop is SCHED_FIFO 99 (fields 40 and 41) before the stop.
    let hogs = || pids(&cg).into_iter().filter(|p| { let f = |n| stat_field(&format!("/proc/{p}/stat"), n); f(41) == Some(1) && f(40) == Some(99) }).count();
    wait_until(Duration::from_secs(20), || hogs() == cpus).unwrap_or_else(|| panic!("{} of {cpus} real-time loops running", hogs()));
    let t0 = Instant::now();
    let r = stop(&agent, "rthogs");
    let took = t0.elapsed();
    eprintln!("stop beside {cpus} real-time loops, in {took:?}: {r}");
    assert_eq!(r["survivors"], 0, "{r}");
    let left = living_in(&rel_of(&agent, "rthogs"));
    assert!(left.is_empty(), "processes of the target alive (from /proc): {left:?}: {r}");
    assert!(took < Duration::from_secs(HOG_SECONDS / 2), "the stop took {took:?}: it waited for the loops to end: {r}");
    // The agent's backup thread ran it (the real-time one could not), or
    // the CLI's own stop did when the agent did not answer in time.
    if r["fallback"] != true {
        assert_eq!(r["thread"], "kp-stop-cfs", "the backup thread ran the stop: {r}");
    }
}
