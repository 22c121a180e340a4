//! Tests: the agent's index of every mark (`kernel::mark_index`), kept
//! from the kernel's log of mark writes (`KP_MARKS_RECENT`), which the
//! check that ends a stop looks up instead of reading every mark. A mark
//! the kernel writes after the index was built must be found through the
//! log; a log that overflowed must leave the index unused. Judged from
//! outside: the pinned maps, /proc, and the processes the test starts.
use std::sync::{Arc, Mutex};

use killpath::{
    kernel::mark_index::MarkIndex,
    stop::marks::{alive, Pending, CHECKED_ALL, CHECKED_INDEX},
};

use crate::{
    harness::{wait_until, Agent},
    mark_counters::{pass_through, pinned_maps, sleeps_left_behind, stop_kills_both},
    membership::Escapees,
    membership_threads::task_gone,
    support::{
        process::{run_bg, spawn_outside},
        status::stop,
    },
};

/// With the agent down (nothing drains the log), the index is built from
/// the pinned maps; then a process passes through the target (the kernel
/// marks it on the way in, and it lives outside after). The check finds
/// it through the log, with the target's own task, and not another
/// target's; a stop by that check kills both. Fails if the kernel stops
/// logging its mark writes (the index would not know the escapee, and it
/// would outlive a stop reporting no survivor).
#[test]
fn the_index_finds_a_mark_the_kernel_writes_after_it_was_built() {
    let Some(mut agent) = Agent::start() else { return };
    let (runs, id) = sleeps_left_behind(&mut agent, &["indexed", "other"]);
    let (target, other) = (&runs[0], &runs[1]);
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let index = Arc::new(Mutex::new(Some(MarkIndex::build(m).expect("the log of mark writes is pinned"))));
    let pt = target.pid() as u32;
    let (left, how, _) = alive(m, &[id], None, Some(&index));
    assert_eq!((how, left.iter().copied().collect::<Vec<_>>()), (CHECKED_INDEX, vec![pt]), "the target's task alone");

    let escapee = spawn_outside(&["sleep", "1000"]);
    let pe = escapee.pid();
    let _guard = Escapees(vec![pe]);
    pass_through(&agent, "indexed", pe);
    let (left, how, _) = alive(m, &[id], None, Some(&index));
    assert_eq!(how, CHECKED_INDEX);
    assert!(left.contains(&(pe as u32)) && left.contains(&pt), "the check missed a live member: {left:?}");
    assert!(!left.contains(&(other.pid() as u32)), "another target's task: {left:?}");

    let (_reply, pending) = Pending::channel();
    let pending = pending.with_index(index);
    stop_kills_both(&agent, "indexed", m, id, &pending, CHECKED_INDEX, [pe, target.pid()]);
}

/// A mark the agent writes itself (a process re-marked as another
/// target's, as after it moves an escapee back) is logged like the
/// kernel's: the check of that other target finds the process through the
/// index. Fails if user-space mark writes bypass the log (the index would
/// only know the process as the first target's).
#[test]
fn the_index_finds_a_mark_the_agent_writes_after_it_was_built() {
    let Some(mut agent) = Agent::start() else { return };
    let (_runs, second) = sleeps_left_behind(&mut agent, &["second", "first"]);
    let mut maps = pinned_maps(&agent);
    let m = maps.members.as_mut().expect("the membership maps are pinned");
    let index = Mutex::new(Some(MarkIndex::build(m).expect("the log of mark writes is pinned")));
    let moved = spawn_outside(&["sleep", "1000"]);
    let pm = moved.pid();
    let _guard = Escapees(vec![pm]);
    pass_through(&agent, "first", pm);
    m.mark_process(pm as u32, second);
    assert_eq!(m.get(pm as u32).map(|mk| mk.target), Some(second), "re-marked from user space");
    let (left, how, _) = alive(m, &[second], None, Some(&index));
    assert_eq!(how, CHECKED_INDEX);
    assert!(left.contains(&(pm as u32)), "the check missed a process the agent marked: {left:?}");
}

/// More mark writes than the log holds while nothing drains it (a shell in
/// the target forking 9,000 subshells, each marked): the kernel counts the
/// pairs it could not log, the index is no longer whole, and the check
/// reads every mark instead, finding an escapee marked after the overflow.
/// Fails if a full log goes uncounted (the index would be trusted with
/// pairs missing).
#[test]
fn a_full_log_leaves_the_index_unused() {
    let Some(mut agent) = Agent::start() else { return };
    let (runs, id) = sleeps_left_behind(&mut agent, &["busy"]);
    let target = &runs[0];
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let index = Mutex::new(Some(MarkIndex::build(m).expect("the log of mark writes is pinned")));
    assert!(index.lock().unwrap().as_ref().unwrap().whole(m), "whole once built");

    let forks = killpath_common::MARKS_RECENT_ENTRIES + 800;
    // Moved in during its first 0.2 s, so that its children are born
    // marked (each subshell a mark, each mark a pair logged).
    let script = format!("sleep 0.2; i=0; while [ $i -lt {forks} ]; do (:); i=$((i+1)); done");
    let forker = spawn_outside(&["sh", "-c", &script]);
    move_into(&agent, "busy", forker.pid());
    let _guard = Escapees(vec![forker.pid()]);
    assert!(wait_until(std::time::Duration::from_secs(60), || task_gone(forker.pid(), forker.pid())).is_some(), "the fork loop did not end");
    assert!(!index.lock().unwrap().as_ref().unwrap().whole(m), "{forks} marks written and the log's loss count did not move");

    let escapee = spawn_outside(&["sleep", "1000"]);
    let pe = escapee.pid();
    let _guard2 = Escapees(vec![pe]);
    pass_through(&agent, "busy", pe);
    let (left, how, _) = alive(m, &[id], None, Some(&index));
    assert_eq!(how, CHECKED_ALL, "an index with pairs lost was used");
    assert!(left.contains(&(pe as u32)) && left.contains(&(target.pid() as u32)), "{left:?}");
}

/// Moves process `pid` into target `name`'s cgroup (the kernel marks it).
fn move_into(agent: &Agent, name: &str, pid: i32) {
    std::fs::write(agent.target_cgroup(name).path().join("cgroup.procs"), pid.to_string()).expect("into the target");
}

/// Through the agent: a quiet target's stop checks its marks in the index
/// the marks thread keeps (`marks_checked: index`, no read beside it),
/// another target's task in the map, and leaves nothing of the target
/// alive; a stop of a target a process joined a moment before (its mark
/// only in the log) does too.
#[test]
fn stop_of_a_quiet_target_checks_its_marks_in_the_index() {
    let Some(agent) = Agent::start() else { return };
    let _other = run_bg(&agent, "bystander", &["sleep", "1000"], 1);
    let quiet = run_bg(&agent, "quiet", &["sh", "-c", "sleep 1000 & sleep 1000"], 2);
    let pid = quiet.pid();
    let r = stop(&agent, "quiet");
    assert_eq!(r["survivors"], 0, "{r}");
    assert_eq!(r["marks_checked"], "index", "{r}\nlog:\n{}", agent.log_text());
    // The report's phases, in order: the cgroup was seen empty after the
    // halt, and the stop ended after it; no read of every mark was made.
    let us = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert_eq!(us("marks_read_to_us"), 0, "a read beside the stop with the index whole: {r}");
    assert!(us("time_to_halt_us") <= us("cgroup_empty_us") && us("cgroup_empty_us") <= us("time_to_empty_us"), "{r}");
    assert!(task_gone(pid, pid), "the target's process is alive after the stop: {r}");
    assert!(agent.target_cgroup("quiet").procs_recursive().is_empty(), "{r}");

    let fresh = run_bg(&agent, "fresh", &["sleep", "1000"], 1);
    let joiner = spawn_outside(&["sleep", "1000"]);
    move_into(&agent, "fresh", joiner.pid());
    let r = stop(&agent, "fresh");
    assert_eq!((r["survivors"].as_u64(), r["marks_checked"].as_str()), (Some(0), Some("index")), "{r}");
    for p in [fresh.pid(), joiner.pid()] {
        assert!(wait_until(std::time::Duration::from_secs(2), || task_gone(p, p)).is_some(), "{p} outlived the stop: {r}");
    }
}
