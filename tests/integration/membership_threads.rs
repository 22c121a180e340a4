//! Tests: membership of a process whose threads outlive or replace its
//! leader. A leader that calls exit alone stays a zombie while its threads
//! run on; a thread other than the leader that execs takes the leader's
//! pid. Either way the process stays its target's member: moving it out is
//! an escape (journaled, moved back), and the stop kills it. Judged from
//! outside: /proc, the journal file, and the pinned membership map.
use std::time::Duration;

use crate::{
    harness::{wait_until, Agent},
    membership::{escape_records, inside, root_procs, Escapees},
    support::{
        cgroup::{cgroup_line, cgroup_rel},
        process::run_bg,
        status::{stop, target_row},
    },
};

/// Whether `/proc/PID/task/TID` is gone or a zombie.
pub(crate) fn task_gone(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
}

/// Waits for the first escape record about `pid`, and returns it.
pub(crate) fn escape_record(agent: &Agent, pid: i32) -> serde_json::Value {
    wait_until(Duration::from_secs(10), || !escape_records(agent, pid).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {pid}\nlog:\n{}", agent.log_text()));
    escape_records(agent, pid).remove(0)
}

/// A process whose leader has exited (the leader thread alone calls
/// SYS_exit) leaves the target: another thread writes the tgid to the
/// cgroup2 root's cgroup.procs. The kernel skips the exiting leader and
/// moves the live thread, so the attach hook is handed the leader, which
/// stayed behind: the move is still one on the cgroup2 hierarchy, and the
/// process's mark, kept while a thread lives, makes it an escape. Below
/// isolate the agent moves it back; the stop then kills the thread.
#[test]
fn thread_moved_out_after_its_leader_exited_is_an_escape() {
    let Some(agent) = Agent::start() else { return };
    let flag = agent.dir.path().join("moved");
    let script = format!(
        "import ctypes, os, threading, time\n\
         def mover():\n    time.sleep(0.3)\n    open('{flag}', 'w').write(str(threading.get_native_id()))\n    open('{root}', 'w').write(str(os.getpid()))\n    time.sleep(1000)\n\
         threading.Thread(target=mover).start()\n\
         time.sleep(0.05)\n\
         ctypes.CDLL(None).syscall(60, 0)\n",
        root = root_procs(),
        flag = flag.display()
    );
    let run = run_bg(&agent, "leader-gone", &["/usr/bin/python3", "-c", &script], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let rec = escape_record(&agent, pid);
    assert_eq!(rec["high_priority"], true, "{rec}");
    assert!(rec["outcome"].as_str().unwrap_or("").starts_with("moved back"), "{rec}");
    let tid: i32 = std::fs::read_to_string(&flag).expect("the mover's id").trim().parse().expect("a tid");
    let rel = cgroup_rel(agent.target_cgroup("leader-gone").path());
    let at = |t: i32| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/cgroup")).unwrap_or_default();
    wait_until(Duration::from_secs(2), || at(tid).lines().any(|l| l == format!("0::{rel}")))
        .unwrap_or_else(|| panic!("the thread {tid} is not back in {rel}: {}", at(tid)));
    assert!(!task_gone(pid, tid), "below isolate the thread is moved back, not killed");
    let row = target_row(&agent, "leader-gone").expect("row");
    assert!(row["escape_attempts"].as_u64().unwrap_or(0) >= 1, "{row}");
    let r = stop(&agent, "leader-gone");
    assert!(wait_until(Duration::from_secs(2), || task_gone(pid, tid)).is_some(), "the thread {tid} survived the stop: {r}");
    assert_eq!(r["survivors"], 0, "{r}");
}

/// A thread other than the leader execs: de_thread gives it the leader's
/// pid and frees its own. The mark must follow to the pid (or the process
/// would be unmarked, free to leave, and its old id, reused by any later
/// task, would carry the mark). Then the new program moves itself out: an
/// escape, moved back, and the stop kills it.
#[test]
fn process_whose_thread_execd_stays_a_member() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let (tid_file, go) = (dir.join("tid"), dir.join("go"));
    let sh = format!(r#"while [ ! -e "{}" ]; do sleep 0.02; done; echo $$ > "{}"; exec sleep 1000"#, go.display(), root_procs());
    let script = format!(
        "import os, threading, time\n\
         def t():\n    open('{tid}', 'w').write(str(threading.get_native_id()))\n    os.execv('/bin/sh', ['sh', '-c', '''{sh}'''])\n\
         threading.Thread(target=t).start()\n\
         time.sleep(1000)\n",
        tid = tid_file.display()
    );
    let run = run_bg(&agent, "exec-thread", &["/usr/bin/python3", "-c", &script], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    wait_until(Duration::from_secs(10), || comm().trim() == "sh").unwrap_or_else(|| panic!("no exec: comm {:?}", comm()));
    let tid: i32 = std::fs::read_to_string(&tid_file).expect("the thread's id").trim().parse().expect("a tid");
    assert_ne!(tid, pid, "the exec came from a thread other than the leader");
    let id = target_row(&agent, "exec-thread").expect("listed")["cgroup_id"].as_u64().expect("cgroup_id");
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_ref().expect("the membership maps are pinned");
    assert_eq!(members.get(pid as u32).map(|m| m.target), Some(id), "the process is marked under its pid after the exec");
    assert_eq!(members.get(tid as u32), None, "no mark is left under the thread's freed id");
    std::fs::write(&go, "").expect("go");
    let rec = escape_record(&agent, pid);
    assert!(rec["outcome"].as_str().unwrap_or("").starts_with("moved back"), "{rec}");
    let rel = cgroup_rel(agent.target_cgroup("exec-thread").path());
    wait_until(Duration::from_secs(2), || inside(pid, &rel)).unwrap_or_else(|| panic!("{pid} is at {:?}, not back in {rel}", cgroup_line(pid)));
    let r = stop(&agent, "exec-thread");
    assert!(wait_until(Duration::from_secs(2), || task_gone(pid, pid)).is_some(), "{pid} survived the stop: {r}");
    assert_eq!(r["survivors"], 0, "{r}");
}

/// The ids of every task of process `pid` (/proc/PID/task).
pub(crate) fn task_ids(pid: i32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or_else(|_| Vec::new(), |d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

/// A two-thread process of target `first` is adopted into a new target
/// (`adopt second --pid`): every task of it is `second`'s now. The kernel
/// re-marks only the leader it is handed; the agent re-marks the other
/// threads, or `first`'s stop would find them outside `first` by their old
/// mark and kill a process that is `second`'s. Judged from outside: /proc
/// after each stop, and the pinned membership map.
#[test]
fn process_adopted_into_another_target_is_that_targets_alone() {
    let Some(agent) = Agent::start() else { return };
    let script = "import threading, time\nthreading.Thread(target=time.sleep, args=(1000,)).start()\ntime.sleep(1000)\n";
    let run = run_bg(&agent, "first", &["/usr/bin/python3", "-c", script], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    wait_until(Duration::from_secs(10), || task_ids(pid).len() == 2).unwrap_or_else(|| panic!("no second thread: {:?}", task_ids(pid)));
    let r = agent.json(&["adopt", "second", "--pid", &pid.to_string()]);
    let second = r["target"]["cgroup_id"].as_u64().unwrap_or_else(|| panic!("adopt: {r}"));
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_ref().expect("the membership maps are pinned");
    for tid in task_ids(pid) {
        assert_eq!(members.get(tid).map(|m| m.target), Some(second), "task {tid} of the adopted process is the new target's");
    }
    let r = stop(&agent, "first");
    assert_eq!(r["survivors"], 0, "{r}");
    assert_eq!(task_ids(pid).len(), 2, "the first target's stop left the adopted process alone: {r}");
    assert!(task_ids(pid).iter().all(|&t| !task_gone(pid, t as i32)), "the adopted process runs on: {r}");
    let r = stop(&agent, "second");
    assert!(wait_until(Duration::from_secs(2), || task_gone(pid, pid)).is_some(), "{pid} survived its own target's stop: {r}");
}

/// `adopt --pid` re-marks every thread of the processes it moved, and
/// nothing else: a task of another target that sits in the new cgroup when
/// the agent marks it (there by its own move, say a member of that target
/// born into the cgroup the moment it was made) stays that target's.
/// Driven through the marking itself (`mark_moved`, on the pinned maps,
/// with the agent dead so that nothing moves the task back meanwhile);
/// judged from the map.
#[test]
fn marking_a_moved_process_leaves_another_targets_task_alone() {
    let Some(mut agent) = Agent::start() else { return };
    let a = run_bg(&agent, "a", &["sleep", "1000"], 1);
    let b = run_bg(&agent, "b", &["sleep", "1000"], 1);
    let (pa, pb) = (a.pid(), b.pid());
    let _guard = Escapees(vec![pa, pb]);
    let ida = target_row(&agent, "a").expect("a")["cgroup_id"].as_u64().expect("id");
    let idb = target_row(&agent, "b").expect("b")["cgroup_id"].as_u64().expect("id");
    agent.kill9();
    let cg_b = agent.target_cgroup("b");
    std::fs::write(cg_b.path().join("cgroup.procs"), pa.to_string()).expect("a's task into b's cgroup");
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let mut maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_mut().expect("the membership maps are pinned");
    assert_eq!(members.get(pa as u32).map(|m| m.target), Some(ida), "a's task is a's (its move out was an escape)");
    members.mark_moved(&cg_b, idb, &[pb as u32], &[]);
    assert_eq!(members.get(pa as u32).map(|m| m.target), Some(ida), "b's marking took a's task over");
    assert_eq!(members.get(pb as u32).map(|m| m.target), Some(idb));
}
