//! Tests: the kernel's counters of mark writes (`KP_MARK_SEQ`), and what
//! trusts them. The check after a stopped target's cgroup empties looks up
//! again only the marks read while the intent was written (`stop::marks`),
//! and `status NAME` counts members from the target's marks as last read
//! (`kernel::mark_snapshot`), each as long as the target's counter did
//! not move; a mark the kernel writes for the target after that read makes
//! them read every mark. Judged from outside: the pinned maps, /proc, the
//! stop report, and the processes a test starts and ends itself.
use std::time::{Duration, Instant};

use killpath::{
    kernel::{maps::Maps, mark_snapshot::MarkSnapshot, members::MemberMaps},
    stop::{
        self,
        marks::{alive, Pending, CHECKED_ALL, CHECKED_EARLY},
    },
};

use crate::{
    harness::{wait_until, Agent},
    membership::{root_procs, Escapees},
    membership_threads::task_gone,
    support::{
        process::{run_bg, spawn_outside, Reaped},
        status::target_row,
    },
};

/// The pinned maps of the (dead) agent's generation.
pub(crate) fn pinned_maps(agent: &Agent) -> Maps {
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    Maps::open_pinned(&gen).expect("the pinned maps")
}

/// Starts a `sleep` in each target of `names`, then SIGKILLs the agent
/// (its pins stay; nothing drains the log of mark writes or moves a task
/// back): the sleeps, and the cgroup id of the first target.
pub(crate) fn sleeps_left_behind(agent: &mut Agent, names: &[&str]) -> (Vec<Reaped>, u64) {
    let runs = names.iter().map(|n| run_bg(agent, n, &["sleep", "1000"], 1)).collect();
    let id = target_row(agent, names[0]).expect("the first target")["cgroup_id"].as_u64().expect("id");
    agent.kill9();
    (runs, id)
}

/// Moves process `pid` into target `name`'s cgroup and out to the cgroup2
/// root: the kernel marks it as the target's on the way in, and with the
/// agent down nothing moves it back.
pub(crate) fn pass_through(agent: &Agent, name: &str, pid: i32) {
    std::fs::write(agent.target_cgroup(name).path().join("cgroup.procs"), pid.to_string()).expect("into the target");
    std::fs::write(root_procs(), pid.to_string()).expect("out to the root");
}

/// Stops target `name` (cgroup id `id`) directly, as the agent would, with
/// the marks read beside it in `pending`: no survivor, the marks checked
/// as `checked` says, and both processes (`pids`: an escapee and the
/// target's own task) dead in /proc within 2 s.
pub(crate) fn stop_kills_both(agent: &Agent, name: &str, m: &MemberMaps, id: u64, pending: &Pending, checked: &str, pids: [i32; 2]) {
    let cg = agent.target_cgroup(name);
    let ids = [id];
    let report = stop::hard_stop_guarded(&cg, Some((m, &ids)), Some(pending), stop::StopOrder::Auto, &mut || Ok(()), Instant::now(), Duration::from_secs(10))
        .expect("the stop");
    assert_eq!((report.survivors, report.marks_checked.as_str()), (0, checked), "{report:?}");
    // The stop counts a process that is exiting (PF_EXITING: it runs no
    // user code again) as gone; /proc shows it a zombie a moment later.
    for p in pids {
        assert!(wait_until(Duration::from_secs(2), || task_gone(p, p)).is_some(), "{p} outlived the stop: {report:?}");
    }
}

/// The snapshot stays current while nothing is marked, and its marks are
/// the target's; a task the kernel marks for the target afterwards (a move
/// in, then out) makes it stale, and the check then reads every mark and
/// finds that task. Fails if the kernel stops bumping the counter when it
/// marks (the check would go by the stale snapshot and miss the task).
#[test]
fn a_mark_the_kernel_writes_after_the_read_makes_the_check_read_every_mark() {
    let Some(mut agent) = Agent::start() else { return };
    let (runs, id) = sleeps_left_behind(&mut agent, &["quiet", "other"]);
    let (pq, other) = (runs[0].pid() as u32, &runs[1]);
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let snap = MarkSnapshot::take(m, &[id]).expect("the mark counters are pinned");
    let tgids: Vec<u32> = snap.marks().iter().map(|(_, mk)| mk.tgid).collect();
    assert!(tgids.contains(&pq), "the target's task is in the snapshot: {tgids:?}");
    assert!(!tgids.contains(&(other.pid() as u32)), "another target's task is not: {tgids:?}");
    assert!(snap.still_there(m, &[id]).is_some(), "nothing was marked since the read");
    let (left, how, _) = alive(m, &[id], Some(&snap), None);
    assert_eq!((how, left.into_iter().collect::<Vec<_>>()), (CHECKED_EARLY, vec![pq]));

    let late = spawn_outside(&["sleep", "1000"]);
    let pl = late.pid();
    let _guard = Escapees(vec![pl]);
    pass_through(&agent, "quiet", pl);
    assert_eq!(m.get(pl as u32).map(|mk| mk.target), Some(id), "the kernel marked the passing task as the target's");
    assert!(snap.still_there(m, &[id]).is_none(), "a mark written after the read left the counter unchanged");
    let (left, how, _) = alive(m, &[id], Some(&snap), None);
    assert_eq!(how, CHECKED_ALL);
    assert!(left.contains(&(pl as u32)) && left.contains(&pq), "the check missed a live member: {left:?}");
}

/// The stop's own use of a stale snapshot: read before a task of the
/// target escaped, it is not taken for the target's marks; the stop reads
/// every mark, kills the escapee and counts no survivor. Fails if the
/// check trusts a snapshot the kernel's counter says is stale.
#[test]
fn stop_with_marks_read_before_an_escape_kills_the_escapee() {
    let Some(mut agent) = Agent::start() else { return };
    let (runs, id) = sleeps_left_behind(&mut agent, &["late"]);
    let target = &runs[0];
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let (reply, pending) = Pending::channel();
    reply.take(m, &[id], &mut |_| {});
    let escapee = spawn_outside(&["sleep", "1000"]);
    let pe = escapee.pid();
    let _guard = Escapees(vec![pe]);
    pass_through(&agent, "late", pe);
    stop_kills_both(&agent, "late", m, id, &pending, CHECKED_ALL, [pe, target.pid()]);
}

/// `status NAME` counts a member the kernel marked after the previous
/// `status NAME` (kept marks go stale with the counter) and stops counting
/// one that exited (each kept mark is looked up again). Fails if the count
/// comes from marks kept past a kernel mark write.
#[test]
fn status_of_one_target_counts_members_marked_or_gone_since_the_last() {
    let Some(agent) = Agent::start() else { return };
    let _t = run_bg(&agent, "counted", &["sleep", "1000"], 1);
    let members = |agent: &Agent| {
        let st = agent.json(&["status", "counted"]);
        st["targets"][0]["members"].as_u64().unwrap_or_else(|| panic!("no members count: {st}"))
    };
    assert_eq!(members(&agent), 1);
    assert_eq!(members(&agent), 1, "the second status, from the kept marks");
    let joiner = spawn_outside(&["sleep", "1000"]);
    std::fs::write(agent.target_cgroup("counted").path().join("cgroup.procs"), joiner.pid().to_string()).expect("into the target");
    assert_eq!(members(&agent), 2, "a process the kernel marked since the last status is not counted");
    drop(joiner);
    assert_eq!(members(&agent), 1, "a member that exited is still counted");
}

/// An escapee read into the snapshot, with no mark written since: the
/// check goes by the snapshot (`early`), finds it alive outside the
/// cgroup, and the stop kills it and counts no survivor.
#[test]
fn stop_with_marks_read_after_an_escape_kills_the_escapee_by_them() {
    let Some(mut agent) = Agent::start() else { return };
    let (runs, id) = sleeps_left_behind(&mut agent, &["known"]);
    let target = &runs[0];
    let escapee = spawn_outside(&["sleep", "1000"]);
    let pe = escapee.pid();
    let _guard = Escapees(vec![pe]);
    pass_through(&agent, "known", pe);
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let (reply, pending) = Pending::channel();
    reply.take(m, &[id], &mut |_| {});
    stop_kills_both(&agent, "known", m, id, &pending, CHECKED_EARLY, [pe, target.pid()]);
}

/// `status o` counts the tasks a released nested target hands over to
/// `o`: the agent rewrites their marks (no kernel hook runs), so what
/// `status o` kept of `o` must go stale. Fails if a user-space mark write
/// neither moves the counter nor forgets the kept marks.
#[test]
fn status_of_the_heir_counts_the_tasks_a_released_nested_target_handed_it() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "o", &["sleep", "1000"], 1);
    let sub = agent.target_cgroup("o").path().join("in");
    std::fs::create_dir(&sub).expect("mkdir o/in");
    std::fs::write(sub.join("cgroup.procs"), run.pid().to_string()).expect("move into o/in");
    agent.json(&["adopt", "in", "--cgroup", sub.to_str().expect("utf-8 path")]);
    let members = |agent: &Agent, name: &str| {
        let st = agent.json(&["status", name]);
        st["targets"][0]["members"].as_u64().unwrap_or_else(|| panic!("no members count: {st}"))
    };
    assert_eq!(members(&agent, "o"), 0, "the sleep is in's once in is adopted");
    assert_eq!(members(&agent, "o"), 0);
    agent.json(&["release", "in"]);
    assert_eq!(members(&agent, "o"), 1, "the handed-over sleep is not counted as o's");
}

/// A small target's kill is made ready while the intent is written
/// (`stop::prepared`): its process is listed, then moves out to the cgroup2
/// root before the kill write. The escape count taken before the listing
/// makes that an escape during the halt (the listing is still fresh, made
/// less than `prepared::FRESH` before the kill): the report does not end the halt
/// at the kill write (the process ran user code outside until its own
/// SIGKILL), and the process dies. Fails if the count is read after the
/// listing (the report would say the halt ended at the write).
#[test]
fn a_process_listed_early_then_moved_out_is_an_escape_during_the_halt() {
    let Some(mut agent) = Agent::start() else { return };
    let run = run_bg(&agent, "listed", &["sleep", "1000"], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let id = target_row(&agent, "listed").expect("listed")["cgroup_id"].as_u64().expect("id");
    agent.kill9();
    let maps = pinned_maps(&agent);
    let m = maps.members.as_ref().expect("the membership maps are pinned");
    let cg = agent.target_cgroup("listed");
    let mount = killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let (reply, pending) = Pending::channel();
    // The snapshot is never sent (its taker never starts): the stop reads
    // every mark.
    reply.clone().prepare((&mount, cg.path(), id), m.escapes(id));
    std::fs::write(root_procs(), pid.to_string()).expect("out to the root");
    let ids = [id];
    let report = stop::hard_stop_guarded(&cg, Some((m, &ids)), Some(&pending), stop::StopOrder::Auto, &mut || Ok(()), Instant::now(), Duration::from_secs(10))
        .expect("the stop");
    assert_eq!(report.order, "kill", "the prepared small-target kill ran: {report:?}");
    assert!(report.escapes_during_halt >= 1 && report.halt_waited_for_marked, "the move after the listing is an escape during the halt: {report:?}");
    assert_eq!(report.survivors, 0, "{report:?}");
    assert!(wait_until(Duration::from_secs(2), || task_gone(pid, pid)).is_some(), "{pid} outlived the stop: {report:?}");
}
