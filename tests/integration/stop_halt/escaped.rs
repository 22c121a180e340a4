//! A task moved out of a frozen target through `cgroup.procs` (by a writer
//! outside the target) thaws where it lands and runs user code until its
//! own SIGKILL: the kill write misses it, and `frozen 1`, read before or
//! after the move, does not cover it. The stop compares the kernel's escape
//! count before the halt and after the kill, and reports the halt no
//! earlier than the escaped task's SIGKILL. Judged from outside: a canary
//! in the target stamps the monotonic clock; an accomplice outside moves it
//! out and back in, over and over, from the moment the stop writes
//! `cgroup.freeze`, and sees it stamp while it is out (it ran after the
//! freeze write): the stop must not then report a `frozen` halt, and none
//! of the canary's stamps may be later than the reported halt.
//!
//! The race does not depend on how fast the stop is: the accomplice runs
//! real-time above the stop thread (SCHED_FIFO 2), and makes the canary
//! real-time above itself as it moves it out (a root workload can do
//! both), so the canary runs the moment it is thawed outside, whatever
//! the stop thread is doing; and its stamps need no syscall (see
//! `canary`), so the stop guard, armed once the target is frozen, kills
//! it at its next syscall or switch but cannot hide that it ran.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use killpath::kernel::cgroup::Cgroup;

use super::{canary, check_canary, mono_us, stamp, timed_stop};
use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::make_cgroup,
        process::{pids, run_bg, spawn_outside},
    },
};

/// Sleepers beside the canary: more than a small target, so the stop
/// freezes first.
const SLEEPERS: usize = killpath::stop::SMALL_TARGET * 4;

/// At most this many stops, each of a fresh target.
const ROUNDS: usize = 8;

/// The canary's pid: the python process in `cg`.
fn canary_pid(cg: &Cgroup) -> i32 {
    let found = pids(cg).into_iter().find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim().starts_with("python")));
    found.unwrap_or_else(|| panic!("no canary in {}", cg.path().display()))
}

/// What the accomplice saw: moves out, and whether the canary stamped
/// after a move out (it ran user code outside the cgroup, after the
/// stop's freeze write).
#[derive(Default)]
struct Seen {
    moves: AtomicU64,
    ran_outside: AtomicBool,
}

/// The accomplice's real-time priority: above the stop thread's.
const ACCOMPLICE_RT: i32 = killpath::kernel::priority::STOP_RT_PRIORITY + 40;
/// The canary's once moved out: above the accomplice's, so it preempts it
/// on a shared CPU.
const CANARY_RT: i32 = ACCOMPLICE_RT + 10;

/// Waits for the stop's freeze write, then moves `pid` out to `outside`
/// and back into `target` until `done` (or the canary is gone), watching
/// the canary's stamps in `file` while it is out.
///
/// While it waits, it moves a bystander (`warm`: a process and two
/// cgroups outside) back and forth: a cgroup.procs write is fast only
/// while the kernel's `cgroup_threadgroup_rwsem` is held in its writer
/// mode (percpu rwsem, rcu_sync); the first write after a quiet spell
/// waits for an RCU grace period (milliseconds), long enough for the stop
/// to freeze, arm and kill before the canary is out.
fn accomplice(target: Cgroup, outside: Cgroup, warm: (i32, [Cgroup; 2]), pid: i32, file: PathBuf, done: Arc<AtomicBool>, seen: Arc<Seen>) {
    killpath::kernel::priority::fifo(0, ACCOMPLICE_RT).expect("the accomplice goes real-time (the test runs as root)");
    let mut side = 0;
    while !done.load(Ordering::Relaxed) && !target.freeze_requested().unwrap_or(false) {
        let _ = warm.1[side].move_pid(warm.0);
        side ^= 1;
    }
    while !done.load(Ordering::Relaxed) && alive(pid) {
        if outside.move_pid(pid).is_ok() {
            let moved = mono_us();
            // Thawed outside: it runs at once, ahead of the stop thread.
            let _ = killpath::kernel::priority::fifo(pid, CANARY_RT);
            seen.moves.fetch_add(1, Ordering::Relaxed);
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(2) {
                if stamp(&file).is_some_and(|s| s > moved) {
                    seen.ran_outside.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = target.move_pid(pid);
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn stop_halt_escape_through_cgroup_procs_is_not_reported_halted() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = make_cgroup(agent.cgroup_parent.join("accomplice-dst"));
    // The bystander the accomplice moves while it waits.
    let warm = [make_cgroup(agent.cgroup_parent.join("accomplice-warm-a")), make_cgroup(agent.cgroup_parent.join("accomplice-warm-b"))];
    let bystander = spawn_outside(&["sleep", "1000"]);
    let bystander_pid = bystander.pid();
    let mut hit = 0;
    let mut reports = Vec::new();
    // Rounds until the canary was seen running outside during a stop.
    for round in 0..ROUNDS {
        let name = format!("escapee{round}");
        let file = dir.path().join(format!("canary{round}"));
        let script = format!("{} i=0; while [ $i -lt {SLEEPERS} ]; do sleep 1000 & i=$((i+1)); done; wait", canary(&file));
        let _run = run_bg(&agent, &name, &["sh", "-c", &script], SLEEPERS + 2);
        let first = wait_until(Duration::from_secs(10), || stamp(&file).is_some()).and_then(|()| stamp(&file)).expect("the canary never stamped");
        wait_until(Duration::from_secs(10), || stamp(&file).is_some_and(|s| s > first)).expect("the canary's stamp does not move");
        let cg = agent.target_cgroup(&name);
        let pid = canary_pid(&cg);
        let (done, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Seen::default()));
        let mover = {
            let (t, o, f, d, m) = (agent.target_cgroup(&name), Cgroup::new(outside.path()), file.clone(), done.clone(), seen.clone());
            let w = (bystander_pid, [Cgroup::new(warm[0].path()), Cgroup::new(warm[1].path())]);
            std::thread::spawn(move || accomplice(t, o, w, pid, f, d, m))
        };
        // The freeze order (the agent's own when its stop thread is not
        // real-time): the escape is about `frozen 1` missing a task.
        let (r, answered) = timed_stop(&agent, &name, Some("freeze-wait-kill"));
        done.store(true, Ordering::Relaxed);
        mover.join().expect("accomplice");
        let ran_outside = seen.ran_outside.load(Ordering::Relaxed);
        eprintln!("round {round}: {} moves out, ran outside: {ran_outside}; stop: {r}", seen.moves.load(Ordering::Relaxed));
        assert_eq!(r["survivors"], 0, "{r}");
        assert!(wait_until(Duration::from_secs(2), || !alive(pid)).is_some(), "the canary {pid} survived the stop: {r}");
        assert!(r["used_freeze"] == true && r["tasks_at_start"].as_u64().unwrap_or(0) as usize > killpath::stop::SMALL_TARGET, "the freeze path: {r}");
        // From outside: no stamp of the canary after the reported halt.
        check_canary(&file, &r, answered);
        // The canary ran outside the cgroup after the freeze write (its
        // stamp, read from outside, moved after the move): `frozen 1` did
        // not halt it, and the halt waited for its kill.
        if ran_outside {
            hit += 1;
            assert_ne!(r["halt"], "frozen", "frozen 1 did not halt a task moved out of the cgroup: {r}");
            assert_eq!(r["halt_waited_for_marked"], true, "the halt waits for the escaped task's kill: {r}");
            assert!(r["escapes_during_halt"].as_u64().unwrap_or(0) > 0, "the escape is counted: {r}");
        }
        reports.push(r);
        if hit > 0 {
            break;
        }
    }
    drop(bystander);
    assert!(hit > 0, "the canary never ran outside during a stop (the test proved nothing): {reports:?}");
}
