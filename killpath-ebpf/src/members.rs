//! Membership follows the task: every task that entered a target keeps a
//! mark (`KP_MEMBERS`, keyed by task id) naming that target, wherever it
//! moves afterwards, so the stop guard and `stop` act on it even outside
//! the target's cgroup.
//!
//! - `cgroup_attach_task` (raw tracepoint, fires after every successful
//!   write to a `cgroup.procs`/`cgroup.threads`, with the destination
//!   cgroup and the moved task — the thread-group leader for a procs
//!   write): an unmarked task entering a target's subtree is marked; a
//!   marked task moving out of its target's subtree is an escape attempt.
//! - `sched_process_fork`: the child inherits its parent's mark. A child
//!   born outside the subtree (clone3 with CLONE_INTO_CGROUP, which never
//!   passes cgroup_attach_task) is an escape attempt too; a child of an
//!   unmarked parent born inside one is marked.
//! - `sched_process_exit`: the mark goes with the task, so a reused pid
//!   never inherits a dead task's membership; the process's mark (keyed by
//!   its tgid) stays until the last thread of the group exits.
//! - `sched_process_exec`: a thread that execs takes the leader's pid, and
//!   its mark moves there.
//!
//! An escape is counted per target (`KP_ESCAPES`) and posted to the agent
//! (`KP_ESCAPE_EVENTS`), which journals it, alerts, and moves the task
//! back (or kills it when its target is isolated or stopped). When the
//! escaping task is the one running (it wrote its own pid), an isolated or
//! stopped target's task is killed here at once; otherwise the stop guard
//! (`stop.rs`) kills it at its next context switch or fork.
//!
//! The destination's ancestors are not in the tracepoint's arguments: they
//! are read from `struct cgroup` with offsets from the kernel's BTF
//! (KP_OFFSETS, `members_valid`), like the `signal` capability does.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use killpath_common::{escape, level, EscapeEvent, KernelOffsets, Member, RecentMark, TargetState, MAX_CGROUP_DEPTH};

use crate::{
    kcgroup::{self, read},
    maps::{ESCAPES, ESCAPE_EVENTS, MARKS_RECENT, MARKS_RECENT_LOST, MARK_SEQ, MEMBERS, MEMBER_AGENT, MEMBER_LOST, OFFSETS, RELEASED, TARGETS},
    targets,
};

const SIGKILL: u32 = 9;
/// include/linux/sched.h: getting shut down (set by exit_signals).
const PF_EXITING: u32 = 0x0000_0004;

/// The mark of task `pid` of process `tgid`: its own, or the process's
/// (keyed by the tgid: a procs write moves the whole group and the hook,
/// handed the leader, marks it there).
///
/// When both exist and differ, the deeper target wins: a process moved
/// into a target nested in its own is re-marked under its tgid only, and
/// its other threads keep the outer target's mark from their fork (the
/// hook cannot reach them). A thread moved alone into a nested target
/// (cgroup.threads) is the deeper one itself. Marks of unrelated targets
/// never differ for long: the agent re-marks every thread it moves
/// (`mark_moved`), and any other move out is an escape, which re-marks
/// nothing.
///
/// A mark whose `tgid` is not the task's is another process's, left under
/// an id since freed and now reused (a thread whose exec failed after
/// de_thread gave it the leader's pid: no exec event moved its mark, and
/// its old id was freed): ignored.
#[inline(always)]
pub fn of(pid: u32, tgid: u32) -> Option<Member> {
    // Plain values (target 0: none) rather than Options: with an Option
    // per lookup the compiler spilled a register left unset on the None
    // path, which the verifier refuses (R6 !read_ok).
    let own = mark_of(pid, tgid);
    if pid == tgid {
        return (own.target != 0).then_some(own);
    }
    let pick = deeper(own, mark_of(tgid, tgid));
    (pick.target != 0).then_some(pick)
}

/// Of a thread's own mark and its process's (target 0: none), the one to
/// go by: the process's when the thread has none or when it names a deeper
/// target (see [`of`]); the two map lookups for depths only when both
/// exist and differ.
#[inline(always)]
fn deeper(own: Member, process: Member) -> Member {
    if own.target == 0 || (process.target != 0 && process.target != own.target && depth_of(process.target) > depth_of(own.target)) {
        process
    } else {
        own
    }
}

/// A mark with its target's state: the target it names, or, for a target
/// released after being nested in another, its heir (`KP_RELEASED`), to
/// which the mark now belongs. None when neither is a target any more.
#[inline(always)]
pub fn resolve(m: Member) -> Option<(Member, TargetState)> {
    // SAFETY: values copied out at once.
    if let Some(st) = unsafe { TARGETS.get(m.target) } {
        return Some((m, *st));
    }
    // SAFETY: as above.
    let heir = *unsafe { RELEASED.get(m.target) }?;
    // SAFETY: as above.
    let st = *unsafe { TARGETS.get(heir) }?;
    Some((Member { target: heir, ..m }, st))
}

/// The mark under `key` if it is one of process `tgid`'s, else a zero one.
#[inline(always)]
fn mark_of(key: u32, tgid: u32) -> Member {
    // SAFETY: value copied out at once.
    match unsafe { MEMBERS.get(key) } {
        Some(m) if m.tgid == tgid => *m,
        _ => Member::default(),
    }
}

/// The innermost target whose subtree holds `cgrp` (0: none).
#[inline(always)]
fn innermost(o: &KernelOffsets, mask: u32, cgrp: u64, cgrp_level: i32) -> u64 {
    let mut best = 0u64;
    let depths = crate::targets::depths_up_to(mask, cgrp_level);
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if depths & (1u32 << depth) != 0 {
            let id = kcgroup::ancestor_unchecked(o, cgrp, depth);
            // SAFETY: value read at once.
            if unsafe { TARGETS.get(id) }.is_some_and(|s| s.depth == depth) {
                best = id;
            }
        }
        depth += 1;
    }
    best
}

/// Counts, records and posts one escape attempt; kills the escaping task
/// right here when it is the running one and its target is isolated or
/// stopped (bpf_send_signal acts on the current task's process only).
#[inline(always)]
fn escaped(pid: u32, tgid: u32, m: &Member, st: &TargetState, dst_cgroup: u64, kind: u32) {
    match ESCAPES.get_ptr_mut(m.target) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = ESCAPES.insert(m.target, 1u64, 0);
        }
    }
    if let Some(own) = MEMBERS.get_ptr_mut(pid) {
        // SAFETY: map value valid for this run; a lost increment under a
        // race is harmless (the per-target count above is exact).
        unsafe { (*own).escapes += 1 };
    }
    let by_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut action = escape::ACTION_AGENT;
    if st.level >= level::ISOLATE && kind == escape::ATTACH && by_tgid == tgid {
        // SAFETY: signals the current process only.
        if unsafe { bpf_send_signal(SIGKILL) } == 0 {
            action = escape::ACTION_KILLED;
        }
    }
    // The activity trail (when the target records).
    crate::trail::escape(m.target, st.level, tgid, u32::from(action == escape::ACTION_KILLED));
    if let Some(mut slot) = ESCAPE_EVENTS.reserve::<EscapeEvent>(0) {
        slot.write(EscapeEvent {
            target: m.target,
            dst_cgroup,
            // SAFETY: helper without arguments.
            time_ns: unsafe { bpf_ktime_get_ns() },
            pid,
            tgid,
            by_tgid,
            kind,
            level: st.level,
            action,
        });
        slot.submit(0);
    }
}

/// Marks `pid` as a member of `target`, counting a full map as a lost mark.
///
/// The target's `KP_MARK_SEQ` slot is bumped before the insert and after
/// it. A reader (`kernel::mark_snapshot` in the agent) reads the slot
/// (s1), then every mark, and later looks those marks up again and reads
/// the slot (s2): equal, no mark of the target was written in between. A
/// bump before the insert alone would miss an insert whose bump came
/// before s1 and whose insert came after the walk passed its bucket; a
/// bump after it alone, an insert after the walk whose bump came after s2.
/// With both, a write missed by the walk and by s2 must have bumped before
/// s1 and bump again after s2, spanning the reader's whole walk: a
/// raw tracepoint program runs with preemption off, so only a stalled vCPU
/// could do that. On x86-64 (the only target built and tested) the locked
/// add is a full barrier, so the bumps are ordered with the insert.
///
/// Then the (target, task) pair is logged in `KP_MARKS_RECENT`, after the
/// mark is in place: a reader that drains the log after looking marks up
/// (`kernel::mark_index` in the agent) sees there every mark written
/// before its lookups that it did not know of.
#[inline(always)]
fn mark(pid: u32, m: &Member) {
    bump_seq(m.target);
    let inserted = MEMBERS.insert(pid, m, 0);
    bump_seq(m.target);
    if inserted.is_err() {
        if let Some(lost) = MEMBER_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *lost += 1 };
        }
        return;
    }
    log_recent(pid, m);
}

/// Adds the pair (`m.target`, `pid`) to `KP_MARKS_RECENT`; a full log is
/// counted in `KP_MARKS_RECENT_LOST` (BPF_XADD: the agent only asks whether
/// it moved), and the agent then stops trusting its index.
#[inline(always)]
fn log_recent(pid: u32, m: &Member) {
    let key = RecentMark { target: m.target, tid: pid, _pad: 0 };
    if MARKS_RECENT.insert(key, m.tgid, 0).is_err() {
        if let Some(p) = MARKS_RECENT_LOST.get_ptr_mut(0) {
            // SAFETY: an aligned u64 array slot, valid for this run.
            unsafe { crate::throttle::bucket::xadd(p, 1) };
        }
    }
}

/// Adds one to `target`'s `KP_MARK_SEQ` slot (BPF_XADD: no increment is
/// lost to a hook on another CPU).
#[inline(always)]
fn bump_seq(target: u64) {
    if let Some(p) = MARK_SEQ.get_ptr_mut(killpath_common::mark_seq_slot(target)) {
        // SAFETY: an aligned u64 array slot, valid for this program run.
        unsafe { crate::throttle::bucket::xadd(p, 1) };
    }
}

/// [`mark`] for a task the attach hook was handed, dropped again if its
/// thread group died meanwhile: an exiting leader's last thread may have
/// run the exit hook (which drops the process's mark) between the check of
/// `signal->live` and the insert.
#[inline(always)]
fn mark_live(task: u64, pid: u32, m: &Member) {
    mark(pid, m);
    if group_live(task) == Some(false) {
        let _ = MEMBERS.remove(pid);
    }
}

/// cgroup_attach_task(struct cgroup *dst_cgrp, const char *path,
/// struct task_struct *task, bool threadgroup): fired once per migration,
/// after it succeeded (kernel/cgroup/cgroup.c, cgroup_attach_task).
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn kp_member_attach(ctx: RawTracePointContext) -> i32 {
    try_attach(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_attach(ctx: &RawTracePointContext) -> Option<i32> {
    let o = OFFSETS.get(0)?;
    if o.members_valid == 0 {
        return None;
    }
    let cfg = targets::config()?;
    let dst: u64 = ctx.arg(0);
    let task: u64 = ctx.arg(2);
    let pid = read::<i32>(task, o.task_pid)? as u32;
    let tgid = read::<i32>(task, o.task_tgid)? as u32;
    // An exiting task is not moved (cgroup_migrate_add_task skips
    // PF_EXITING) yet the tracepoint fires: a zombie's pid written to a
    // cgroup.procs must not plant a mark that outlives it (its exit hook
    // has run, and a task reusing the pid would be the target's). No task
    // can start exiting meanwhile: exit_signals takes
    // cgroup_threadgroup_rwsem, which the migration holds. An exiting
    // leader whose group still has a live thread stands for its threads,
    // which did move.
    if read::<u32>(task, o.task_flags)? & PF_EXITING != 0 && (pid != tgid || group_live(task) != Some(true)) {
        return Some(0);
    }
    // The tracepoint fires for cgroup v1 hierarchies too (the throttle's
    // v1 pids cgroup): only moves on the default (v2) hierarchy count.
    // Told by the destination's hierarchy, not by where `task` is now: for
    // a procs write the migration skips a leader that is exiting
    // (cgroup_migrate_add_task, PF_EXITING), so a process whose leader
    // called exit alone moves its live threads while `task`, the leader,
    // stays behind; its mark is kept while the group lives (exit hook).
    let now_in = kcgroup::of_task(o, task)?;
    if now_in != dst && !kcgroup::same_hierarchy(o, now_in, dst) {
        return Some(0);
    }
    let dst_level = read::<i32>(dst, o.cgroup_level)?;
    let by_agent = MEMBER_AGENT.get(0).is_some_and(|a| *a != 0 && *a == (bpf_get_current_pid_tgid() >> 32) as u32);
    if by_agent {
        // The agent's own move (run, adopt): the task is the destination
        // target's now, never an escape.
        let target = innermost(o, cfg.depth_mask, dst, dst_level);
        if target != 0 {
            mark_live(task, pid, &Member { target, tgid, escapes: 0 });
        }
        return Some(0);
    }
    let Some(m) = of(pid, tgid) else {
        // Not a member yet: entering a target's subtree makes it one.
        let target = innermost(o, cfg.depth_mask, dst, dst_level);
        if target != 0 {
            mark_live(task, pid, &Member { target, tgid, escapes: 0 });
        }
        return Some(0);
    };
    let named = m.target;
    let Some((m, st)) = resolve(m) else {
        // The target was released (and had no heir): its marks are stale.
        let _ = MEMBERS.remove(pid);
        return Some(0);
    };
    if m.target != named {
        // A released nested target's mark: its heir's from now on.
        mark_live(task, pid, &m);
    }
    if kcgroup::ancestor(o, dst, dst_level, st.depth) == m.target {
        // A move inside its own subtree; entering a target nested in it
        // makes the task that (stricter or equal) target's.
        let inner = innermost(o, cfg.depth_mask, dst, dst_level);
        if inner != 0 && inner != m.target {
            mark_live(task, pid, &Member { target: inner, tgid, escapes: m.escapes });
        }
        return Some(0);
    }
    let dst_id = kcgroup::id(o, dst);
    escaped(pid, tgid, &m, &st, dst_id, escape::ATTACH);
    Some(0)
}

/// sched_process_fork(struct task_struct *parent, struct task_struct
/// *child): fired in the parent after copy_process, so the child's
/// cgroup (CLONE_INTO_CGROUP included) is already set.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn kp_member_fork(ctx: RawTracePointContext) -> i32 {
    // Level 1: the `fork` class is charged here, not at sys_exit.
    crate::throttle::classes::on_fork();
    try_fork(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Option<i32> {
    // Every fork on the host passes here: one or two hash lookups, then,
    // for a task of no target, the birth check (`born_into_target`).
    // Both task pointers first: read later on one path only, the compiler
    // left the context register unset on the other (verifier: R6 !read_ok).
    let (parent, child): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let cur = bpf_get_current_pid_tgid();
    let Some(m) = of(cur as u32, (cur >> 32) as u32) else {
        return born_into_target(parent, child);
    };
    crate::tripwire::fork(m.target);
    let o = OFFSETS.get(0)?;
    if o.members_valid == 0 {
        return None;
    }
    // A mark of a target gone (and with no heir) is not passed on: the
    // child is judged as an unmarked parent's.
    let Some((m, st)) = resolve(m) else {
        return born_into_target(parent, child);
    };
    let pid = read::<i32>(child, o.task_pid)? as u32;
    let tgid = read::<i32>(child, o.task_tgid)? as u32;
    let cgrp = kcgroup::of_task(o, child)?;
    let lvl = read::<i32>(cgrp, o.cgroup_level)?;
    let inside = kcgroup::ancestor(o, cgrp, lvl, st.depth) == m.target;
    let mut target = m.target;
    if inside && kcgroup::of_task(o, parent) != Some(cgrp) {
        // Born (CLONE_INTO_CGROUP) into a target nested in the parent's:
        // that stricter target's, as a move there would make it.
        let inner = targets::config().map_or(0, |cfg| innermost(o, cfg.depth_mask, cgrp, lvl));
        if inner != 0 {
            target = inner;
        }
    }
    let child_member = Member { target, tgid, escapes: 0 };
    mark(pid, &child_member);
    if !inside {
        let dst_id = kcgroup::id(o, cgrp);
        escaped(pid, tgid, &child_member, &st, dst_id, escape::BORN_OUTSIDE);
    }
    Some(0)
}

/// A child of an unmarked parent born into a target's subtree: clone3 with
/// CLONE_INTO_CGROUP into another cgroup than the parent's (systemd starts
/// a unit's ExecReload and the like this way), which never passes
/// cgroup_attach_task. It is a member from birth, like a task that moved
/// in. A child born in its parent's cgroup is left alone: one config read
/// and four pointer reads per fork of an unmarked task on the host.
#[inline(always)]
fn born_into_target(parent: u64, child: u64) -> Option<i32> {
    let cfg = targets::config()?;
    if cfg.depth_mask == 0 {
        return None;
    }
    let o = OFFSETS.get(0)?;
    if o.members_valid == 0 {
        return None;
    }
    let cgrp = kcgroup::of_task(o, child)?;
    if kcgroup::of_task(o, parent)? == cgrp {
        return None;
    }
    let target = innermost(o, cfg.depth_mask, cgrp, kcgroup::level(o, cgrp));
    if target != 0 {
        let pid = read::<i32>(child, o.task_pid)? as u32;
        let tgid = read::<i32>(child, o.task_tgid)? as u32;
        mark(pid, &Member { target, tgid, escapes: 0 });
    }
    Some(0)
}

/// sched_process_exit(struct task_struct *p, ...): runs in the exiting
/// task itself (do_exit), once per thread, after do_exit decremented
/// `signal->live`.
///
/// A thread's own mark goes with it. The process's mark (keyed by the
/// tgid, the leader's) stays while the group still has a live thread: a
/// leader that calls exit alone stays a zombie holding its pid, and its
/// threads are still the target's (found through `of`), so a later move of
/// the process (the tgid written to some cgroup.procs) is still judged
/// against the target. The last thread out drops it.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn kp_member_exit(ctx: RawTracePointContext) -> i32 {
    let cur = bpf_get_current_pid_tgid();
    let (pid, tgid) = (cur as u32, (cur >> 32) as u32);
    // Unreadable: the mark goes with the task, as before the group check.
    let group_alive = group_live(ctx.arg(0)) == Some(true);
    if pid != tgid || !group_alive {
        let _ = MEMBERS.remove(pid);
    }
    if !group_alive {
        if pid != tgid {
            let _ = MEMBERS.remove(tgid);
        }
        forget_agent(tgid);
    }
    0
}

/// Whether the thread group of `task` still has a live thread
/// (`signal->live`, decremented in do_exit before sched_process_exit);
/// None when unreadable.
#[inline(always)]
fn group_live(task: u64) -> Option<bool> {
    let o = OFFSETS.get(0)?;
    if o.members_valid == 0 {
        return None;
    }
    read::<u64>(task, o.task_signal).and_then(|sig| read::<i32>(sig, o.signal_live)).map(|live| live > 0)
}

/// The agent's process died: its tgid stops naming the agent before the
/// pid can be reused (it is freed only when the group is reaped, after
/// this), so a workload that gets the dead agent's pid cannot pass its
/// moves off as the agent's. A new agent writes its own at start.
#[inline(always)]
fn forget_agent(tgid: u32) {
    if let Some(a) = MEMBER_AGENT.get_ptr_mut(0) {
        // SAFETY: array slot valid for this run; the agent writes it only
        // at start, while its tgid is alive.
        unsafe {
            if *a == tgid {
                *a = 0;
            }
        }
    }
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, ...): called
/// from the exec raw tracepoint (`tripwire/exec.rs`), in the task that
/// exec'd. When a thread other than the leader execs, de_thread gives it
/// the leader's pid (the tgid) and frees its old one: its mark moves to
/// the tgid, or the process would be left marked under a freed id (free
/// to leave, and a later task reusing the id would inherit the mark).
#[inline(always)]
pub fn on_exec(ctx: &RawTracePointContext) {
    let cur = bpf_get_current_pid_tgid();
    let (pid, tgid) = (cur as u32, (cur >> 32) as u32);
    let old = ctx.arg::<u64>(1) as u32;
    if old == pid {
        return;
    }
    // SAFETY: value copied out at once.
    let Some(own) = (unsafe { MEMBERS.get(old) }).copied() else { return };
    // Only the exec'ing thread's own mark: a task of another process that
    // got the freed id in the meantime keeps its mark.
    if own.tgid != tgid {
        return;
    }
    // The process's mark (kept through the old leader's exit) names the
    // innermost target when the process moved into a nested one after this
    // thread was marked: the deeper of the two wins, as in `of`.
    let m = deeper(own, mark_of(tgid, tgid));
    // A released nested target's mark is its heir's (as the attach and fork
    // hooks resolve it), so its heir's counter is the one bumped.
    let target = resolve(m).map_or(m.target, |(r, _)| r.target);
    mark(pid, &Member { target, tgid, escapes: own.escapes.max(m.escapes) });
    let _ = MEMBERS.remove(old);
}

/// The depth of `target`'s cgroup, -1 when it is no longer a target.
#[inline(always)]
fn depth_of(target: u64) -> i64 {
    // SAFETY: value read at once.
    unsafe { TARGETS.get(target) }.map_or(-1, |s| i64::from(s.depth))
}
