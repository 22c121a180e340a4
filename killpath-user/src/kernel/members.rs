//! Membership marks as user space sees them (`KP_MEMBERS`, see
//! `killpath-ebpf/src/members.rs`): which tasks belong to which target
//! wherever they sit, the escape counts, and the marks the agent adds
//! itself for tasks that were inside a target before the kernel hooks saw
//! them enter (adopted cgroups, targets found at agent start).
//!
//! Killing a marked task goes through a pidfd, and the mark is re-checked
//! after the pidfd is open: the kernel drops a mark when its task exits,
//! so a mark still present then names the process the pidfd holds, never
//! a reused pid.
use std::{
    collections::BTreeSet,
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use killpath_common::Member;

use super::{cgroup::Cgroup, procfs::TaskState};

/// `BPF_NOEXIST`: insert only where no mark exists (the kernel's own marks,
/// inherited or nested, win over the agent's scan).
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only a mark that is still there.
const BPF_EXIST: u64 = 2;

/// The membership maps.
pub struct MemberMaps {
    pub(crate) members: HashMap<MapData, u32, Member>,
    pub(crate) escapes: Option<PerCpuHashMap<MapData, u64, u64>>,
    pub(crate) lost: Option<PerCpuArray<MapData, u64>>,
    /// The agent's tgid, whose own moves are not escapes (agent only).
    pub(crate) agent: Option<Array<MapData, u32>>,
    /// Released nested targets → their heirs (`KP_RELEASED`; agent only).
    pub(crate) released: Option<HashMap<MapData, u64, u64>>,
    /// The kernel's mark-write counters (`KP_MARK_SEQ`); None in an older
    /// build's pins.
    pub(crate) seq: Option<Array<MapData, u64>>,
    /// When the guard last killed a marked task outside its target's
    /// cgroup, per target and CPU (`KP_GUARD_OUTSIDE_KILLED_AT`); None in
    /// an older build's pins.
    pub(crate) outside_killed_at: Option<PerCpuHashMap<MapData, u64, u64>>,
    /// Each target's marks as last read (`mark_snapshot`), for `status`.
    pub(crate) cache: super::mark_snapshot::MarkCache,
    /// The log of mark writes and its loss count (`KP_MARKS_RECENT`,
    /// `KP_MARKS_RECENT_LOST`, see `mark_index`); None in an older build's
    /// pins.
    pub(crate) recent: Option<super::mark_index::RecentMaps>,
}

/// Thread group id of task `tid`: itself when it is listed in the
/// cgroup's `cgroup.procs` (`leaders`, read from the kernel's cgroup files,
/// not from /proc), else /proc/TID/status from the real procfs. None when
/// it is gone or cannot be read there: a thread whose status is hidden is
/// then covered by its process's mark, which its leader gets.
fn tgid_of(tid: u32, leaders: &BTreeSet<u32>) -> Option<u32> {
    if leaders.contains(&tid) {
        return Some(tid);
    }
    super::procfs::tgid_of(tid)
}

/// Thread-group leaders (process ids) in `cg`'s subtree.
fn leaders_of(cg: &Cgroup) -> BTreeSet<u32> {
    cg.procs_recursive().into_iter().filter_map(|p| u32::try_from(p).ok()).collect()
}

/// Whether task `tid` of process `tgid` is gone for membership: no such
/// task, or exiting (a zombie or dead state, PF_EXITING): its exit hook may
/// have run already, so a mark written now would outlive it and name
/// whatever process later gets the id. A zombie leader whose threads still
/// run is not gone (the process's mark stays while the group lives, as in
/// the kernel's exit hook). Read from the real procfs (`procfs`): a task
/// whose stat cannot be read there is not gone.
pub fn task_gone(tgid: u32, tid: u32) -> bool {
    match super::procfs::task_state(tgid, tid) {
        TaskState::Gone => true,
        TaskState::Exiting => tid != tgid || !super::procfs::group_has_live_thread(tgid),
        TaskState::Live | TaskState::Unknown => false,
    }
}

/// Every task id (threads included) in `cg` and its nested cgroups.
fn threads_recursive(cg: &Cgroup) -> Vec<u32> {
    cg.subtree()
        .iter()
        .flat_map(|c| {
            fs::read_to_string(c.path().join("cgroup.threads")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether task `tid` now lives outside `cg`'s subtree (false when it is
/// gone or its cgroup cannot be read).
fn left_subtree(mount: &std::path::Path, cg: &Cgroup, tid: u32) -> bool {
    let Ok(rel) = super::cgroup::cgroup_of(tid as i32) else { return false };
    !super::cgroup::is_within(&mount.join(rel.trim_start_matches('/')), cg.path())
}

/// A second handle on map `m` (its fd duplicated), for another thread.
pub(crate) fn dup_data(m: &MapData) -> Option<MapData> {
    MapData::from_fd(m.fd().as_fd().try_clone_to_owned().ok()?).ok()
}

impl MemberMaps {
    /// The mark of task `tid`, if it has one.
    pub fn get(&self, tid: u32) -> Option<Member> {
        self.members.get(&tid, 0).ok()
    }

    /// Every mark: (task id, mark).
    pub fn all(&self) -> Vec<(u32, Member)> {
        self.all_then(&mut |_| {})
    }

    /// [`MemberMaps::all`], calling `after_chunk` with the marks read so
    /// far after each batch (see `batch::lookup_all_then`).
    pub fn all_then(&self, after_chunk: &mut dyn FnMut(usize)) -> Vec<(u32, Member)> {
        // One task per target makes a thousand marks with a thousand
        // targets: read in batches (a syscall per 64 marks), not two
        // syscalls per mark, on the stop's path. The plain walk stays for
        // kernels without batch lookups (before 5.6).
        super::batch::lookup_all_then(&self.members, after_chunk).unwrap_or_else(|| self.members.iter().filter_map(|r| r.ok()).collect())
    }

    /// Writes mark `m` of task `tid` from user space (`flags`: BPF_ANY,
    /// BPF_NOEXIST, BPF_EXIST), then adds one to its target's `KP_MARK_SEQ`
    /// counter and forgets what `status` kept of the target
    /// (`mark_snapshot`). User space cannot add atomically beside the
    /// kernel's BPF_XADD: the counter is read and written, and a kernel
    /// bump of the same slot in between is lost. The agent writes marks
    /// under its state lock, which a stop holds, so no stop sees such a
    /// loss; the counter still moves for this write, so a reader that kept
    /// the target's marks (`status NAME`, in this or another process)
    /// reads them again.
    ///
    /// Then the write is logged in `KP_MARKS_RECENT`, as the kernel logs
    /// its own (`mark_index`).
    fn put(&mut self, tid: u32, m: Member, flags: u64) -> Result<(), aya::maps::MapError> {
        self.members.insert(tid, m, flags)?;
        if let Some(seq) = self.seq.as_mut() {
            let slot = killpath_common::mark_seq_slot(m.target);
            let now = seq.get(&slot, 0).unwrap_or(0);
            let _ = seq.set(slot, now.wrapping_add(1), 0);
        }
        if let Some(r) = self.recent.as_mut() {
            r.log(tid, &m);
        }
        self.cache.forget(m.target);
        Ok(())
    }

    /// Whether task `tid` still carries a mark of process `tgid` naming one
    /// of `targets`; None when the lookup failed for another reason than
    /// the mark being gone (the caller then does not conclude it is gone).
    pub fn still_marked(&self, tid: u32, tgid: u32, targets: &[u64]) -> Option<bool> {
        match self.members.get(&tid, 0) {
            Ok(now) => Some(now.tgid == tgid && targets.contains(&now.target)),
            Err(aya::maps::MapError::KeyNotFound) => Some(false),
            Err(e) => {
                tracing::debug!(tid, "membership: mark lookup failed: {e}");
                None
            }
        }
    }

    /// The `KP_MARK_SEQ` counters of `targets`, in order (see
    /// `killpath_common::maps::MARK_SEQ`); None without the map, or when
    /// one cannot be read.
    pub fn mark_seqs(&self, targets: &[u64]) -> Option<Vec<u64>> {
        let seq = self.seq.as_ref()?;
        targets.iter().map(|t| seq.get(&killpath_common::mark_seq_slot(*t), 0).ok()).collect()
    }

    /// A second handle on the marks and their counters (the same kernel
    /// maps, through duplicated fds), for a thread that reads them while
    /// this handle's owner holds it; None without the counters.
    pub fn reader(&self) -> Option<MemberMaps> {
        fn dup<K: aya::Pod, V: aya::Pod>(m: &impl IterableMap<K, V>) -> Option<MapData> {
            dup_data(m.map())
        }
        let seq = self.seq.as_ref()?;
        Some(MemberMaps {
            members: HashMap::try_from(Map::HashMap(dup(&self.members)?)).ok()?,
            escapes: None,
            lost: None,
            agent: None,
            released: None,
            seq: Some(Array::try_from(Map::Array(dup(seq)?)).ok()?),
            outside_killed_at: None,
            cache: Default::default(),
            recent: self.recent.as_ref().and_then(super::mark_index::RecentMaps::dup),
        })
    }

    /// Marks of tasks belonging to any of `targets`.
    pub fn of_targets(&self, targets: &[u64]) -> Vec<(u32, Member)> {
        self.all().into_iter().filter(|(_, m)| targets.contains(&m.target)).collect()
    }

    /// Distinct processes with a mark of any of `targets`.
    pub fn processes_of(&self, targets: &[u64]) -> BTreeSet<u32> {
        self.of_targets(targets).into_iter().map(|(_, m)| m.tgid).collect()
    }

    /// Marks every task now in `cg`'s subtree as a member of `target`,
    /// leaving marks the kernel already set, except those of `outer`
    /// targets that enclose this one (the innermost target wins, as in the
    /// kernel). Returns the number of marks added.
    pub fn mark_cgroup(&mut self, cg: &Cgroup, target: u64, outer: &[u64]) -> usize {
        self.mark_tasks(cg, &threads_recursive(cg), target, outer)
    }

    /// Marks every task now in `cg`'s subtree as `target`'s, whatever mark
    /// it had: for a cgroup the agent itself just moved a process tree into
    /// (`run`, `adopt --pid`). The kernel re-marked only the thread-group
    /// leaders (cgroup_attach_task is handed the leader of a procs write);
    /// the other threads of a process that belonged to another target kept
    /// that target's mark, so its stop would have killed them here.
    ///
    /// Only the tasks of the processes the agent moved (`moved`, by tgid):
    /// any other task in the cgroup got there on its own (a member of
    /// another target born into it with CLONE_INTO_CGROUP the moment it
    /// was created, say) and keeps its mark, like in [`Self::mark_cgroup`].
    pub fn mark_moved(&mut self, cg: &Cgroup, target: u64, moved: &[u32], outer: &[u64]) -> usize {
        let tids = threads_recursive(cg);
        let leaders = leaders_of(cg);
        let (ours, others): (Vec<u32>, Vec<u32>) = tids.into_iter().partition(|t| tgid_of(*t, &leaders).is_some_and(|g| moved.contains(&g)));
        self.mark_tids(cg, &ours, target, &|cur| cur != target) + self.mark_tasks(cg, &others, target, outer)
    }

    /// Marks every task of process `tgid` as `target`'s, whatever target it
    /// had: after the agent moved the process back into `target` (an
    /// escape below isolate), where the kernel re-marked only the leader.
    pub fn mark_process(&mut self, tgid: u32, target: u64) {
        let Some(tids) = super::procfs::task_ids(tgid) else { return };
        for tid in tids {
            // Only this process's own marks: an id reused meanwhile by
            // another process's task keeps that task's mark.
            let Ok(cur) = self.members.get(&tid, 0) else { continue };
            if cur.tgid != tgid || cur.target == target {
                continue;
            }
            let m = Member { target, tgid, escapes: cur.escapes };
            // Exited meanwhile (its exit hook may have run, or the id gone
            // to another task): the mark as it was, unless another hook
            // wrote over it since.
            if self.put(tid, m, BPF_EXIST).is_ok() && task_gone(tgid, tid) && self.members.get(&tid, 0).is_ok_and(|now| now == m) {
                let _ = self.put(tid, cur, BPF_EXIST);
            }
        }
    }

    /// [`MemberMaps::mark_cgroup`] for the tasks `tids` read from `cg`'s
    /// subtree a moment ago (any of them may have left it since).
    pub fn mark_tasks(&mut self, cg: &Cgroup, tids: &[u32], target: u64, outer: &[u64]) -> usize {
        self.mark_tids(cg, tids, target, &|cur| outer.contains(&cur))
    }

    /// Marks `tids` as `target`'s: unmarked ones, and those whose current
    /// target `take` says to replace.
    fn mark_tids(&mut self, cg: &Cgroup, tids: &[u32], target: u64, take: &dyn Fn(u64) -> bool) -> usize {
        let mut added = 0;
        let leaders = leaders_of(cg);
        // Read once, and only when a mark was written (the mount table).
        let mut mount: Option<Option<std::path::PathBuf>> = None;
        for &tid in tids {
            let Some(tgid) = tgid_of(tid, &leaders) else { continue };
            let m = Member { target, tgid, escapes: 0 };
            let ok = match self.members.get(&tid, 0) {
                // A mark of another process is stale (its id was reused).
                Ok(cur) if cur.tgid != tgid || take(cur.target) => self.put(tid, m, 0).is_ok(),
                Ok(_) => false,
                Err(_) => self.put(tid, m, BPF_NOEXIST).is_ok(),
            };
            if ok {
                added += 1;
                // The task may have exited (or begun to) between the read
                // of cgroup.threads and the insert: then no exit hook will
                // ever drop this mark, so drop it here.
                if task_gone(tgid, tid) {
                    let _ = self.members.remove(&tid);
                    added -= 1;
                } else if mount.get_or_insert_with(|| super::cgroup::cgroup2_mount().ok()).as_deref().is_some_and(|mnt| left_subtree(mnt, cg, tid)) {
                    // It left the subtree between that read and the
                    // insert: it passed cgroup_attach_task unmarked, so
                    // the kernel counted no escape, and it now carries the
                    // mark outside. Counted here: a stop signals the marks
                    // before its kill only when an escape was counted
                    // (`stop::escaped`); uncounted, this one would run
                    // until the walk after the cgroup empties.
                    tracing::warn!(tid, tgid, target, "membership: a task left its target while the agent marked it; counted as an escape");
                    self.count_escape(target, 1);
                }
            }
        }
        added
    }

    /// Adds `n` to the kernel's escape count of `target` (`KP_ESCAPES`,
    /// per CPU: the agent's share goes to CPU 0's slot). A kernel increment
    /// between the read and the write here may be overwritten; the count
    /// still grows, which is what the stop reads it for (no stop runs
    /// meanwhile: the scan and the stop both hold the agent's state lock).
    pub fn count_escape(&mut self, target: u64, n: u64) {
        let Some(e) = self.escapes.as_mut() else { return };
        let mut slots: Vec<u64> = e.get(&target, 0).map(|v| v.iter().copied().collect()).unwrap_or_default();
        slots.resize(aya::util::nr_cpus().map_or(1, |c| c.max(1)), 0);
        slots[0] = slots[0].saturating_add(n);
        match aya::maps::PerCpuValues::try_from(slots) {
            Ok(v) => {
                if let Err(err) = e.insert(target, v, 0) {
                    tracing::warn!(target, "membership: cannot count an escape: {err}");
                }
            }
            Err(err) => tracing::warn!(target, "membership: cannot count an escape: {err}"),
        }
    }

    /// Tells the kernel which process is the agent.
    pub fn set_agent(&mut self, tgid: u32) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.set(0, tgid, 0);
        }
    }

    /// Copies another generation's marks that this one lacks, and brings
    /// this one's escape counts up to its (not added: an agent started
    /// again beside the same old generation copies it again): a mark
    /// outside its target's cgroup came with an escape, which the stop
    /// reads to signal the marks before its kill (`stop::escaped`).
    pub fn copy_from(&mut self, other: &MemberMaps) {
        for (tid, m) in other.all() {
            let _ = self.put(tid, m, BPF_NOEXIST);
        }
        let counts: Vec<(u64, u64)> =
            other.escapes.as_ref().map(|e| e.iter().filter_map(|r| r.ok()).map(|(t, v)| (t, v.iter().sum())).collect()).unwrap_or_default();
        for (target, n) in counts {
            let mine = self.escapes(target);
            if n > mine {
                self.count_escape(target, n - mine);
            }
        }
    }

    /// Release of `target`: its marks go to `heir`, the innermost target
    /// enclosing it, if any (its tasks are still that target's: dropping
    /// the marks would let them leave it unseen), else are dropped; its
    /// escape count is dropped.
    ///
    /// With an heir the kernel is told first (`KP_RELEASED`): a mark of
    /// `target` that a hook sets while this runs, or that a move meets
    /// once the kernel no longer lists `target`, is the heir's there too.
    /// Heirs that named `target` now name its own heir (or none). The
    /// escapes counted for `target` are added to the heir's.
    pub fn release_target(&mut self, target: u64, heir: Option<u64>) {
        self.cache.forget(target);
        if let Some(r) = self.released.as_mut() {
            let forwarded: Vec<u64> = r.iter().filter_map(|e| e.ok()).filter(|(_, h)| *h == target).map(|(k, _)| k).collect();
            for k in forwarded {
                let _ = match heir {
                    Some(h) => r.insert(k, h, 0),
                    None => r.remove(&k),
                };
            }
            if let Some(h) = heir {
                if let Err(e) = r.insert(target, h, 0) {
                    tracing::warn!(target, heir = h, "membership: cannot forward a released target's marks in the kernel: {e}");
                }
            }
        }
        if let Some(h) = heir {
            let n = self.escapes(target);
            if n > 0 {
                self.count_escape(h, n);
            }
        }
        for (tid, m) in self.of_targets(&[target]) {
            match heir {
                // BPF_EXIST: a mark dropped meanwhile (its task exited) stays dropped.
                Some(h) => {
                    let _ = self.put(tid, Member { target: h, ..m }, BPF_EXIST);
                }
                None => {
                    let _ = self.members.remove(&tid);
                }
            }
        }
        if let Some(e) = self.escapes.as_mut() {
            let _ = e.remove(&target);
        }
        if let Some(at) = self.outside_killed_at.as_mut() {
            let _ = at.remove(&target);
        }
    }

    /// Escape attempts counted by the kernel for `target`.
    pub fn escapes(&self, target: u64) -> u64 {
        self.escapes.as_ref().and_then(|e| e.get(&target, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// When (CLOCK_MONOTONIC ns) the guard last killed a task of any of
    /// `targets` outside its target's cgroup, on any CPU; None when it never
    /// did (or the map is missing).
    pub fn guard_killed_outside_at(&self, targets: &[u64]) -> Option<u64> {
        let at = self.outside_killed_at.as_ref()?;
        targets.iter().filter_map(|t| at.get(t, 0).ok()).filter_map(|v| v.iter().copied().max()).max().filter(|ns| *ns > 0)
    }

    /// Escape attempts counted by the kernel for all of `targets`.
    pub fn escapes_of(&self, targets: &[u64]) -> u64 {
        targets.iter().map(|t| self.escapes(*t)).sum()
    }

    /// How many marks `KP_MEMBERS` holds (its `max_entries`).
    pub fn capacity(&self) -> Option<u32> {
        self.members.map().info().ok().map(|i| i.max_entries())
    }

    /// Marks the kernel could not record (map full).
    pub fn lost(&self) -> u64 {
        self.lost.as_ref().and_then(|l| l.get(&0, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Drops marks whose task no longer exists (left by a scan race or by
    /// an exit while the hooks were not attached).
    pub fn prune_dead(&mut self) {
        for (tid, m) in self.all() {
            if task_gone(m.tgid, tid) {
                let _ = self.members.remove(&tid);
            }
        }
    }

    /// SIGKILLs every process marked as a member of `targets`, through a
    /// pidfd (no reused pid is ever signalled). Returns the processes
    /// signalled.
    pub fn kill(&self, targets: &[u64]) -> BTreeSet<u32> {
        self.kill_marks(&self.of_targets(targets))
    }

    /// SIGKILLs the process of each mark in `marks` (one signal per
    /// process), re-checking that one mark with the pidfd open: one map
    /// lookup each, so a stop of a large tree stays linear.
    pub fn kill_marks(&self, marks: &[(u32, Member)]) -> BTreeSet<u32> {
        let mut killed = BTreeSet::new();
        for (tid, m) in marks {
            if killed.contains(&m.tgid) {
                continue;
            }
            // With the pidfd open, the mark is still there and its task is
            // still one of that process's: a stale mark (a thread's exec
            // that failed after de_thread left one under a freed id) whose
            // tgid was reused by another process names no task of it.
            let still = || self.still_marked(*tid, m.tgid, &[m.target]) == Some(true) && !task_gone(m.tgid, *tid);
            if kill_if_marked(m.tgid, still) {
                killed.insert(m.tgid);
            }
        }
        killed
    }
}

/// Opens a pidfd on `tgid`, checks `still_marked` with it open, and sends
/// SIGKILL through it.
pub fn kill_if_marked(tgid: u32, still_marked: impl FnOnce() -> bool) -> bool {
    with_pidfd_if_marked(tgid, still_marked, |fd| {
        // SAFETY: pidfd_send_signal(2) on our own pidfd, no siginfo.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) };
        r == 0
    })
    .unwrap_or(false)
}

/// Opens a pidfd on `tgid`, checks `still_marked` with it open, then runs
/// `act`; None when there is no such process or it is no longer marked.
///
/// The pidfd makes `tgid` name the process checked for an act through the
/// fd (a signal reaches it or no one). It does not hold the number: that
/// is freed when the process is reaped. An act by number (a
/// `cgroup.procs` write) relies on the check right before it: the kernel
/// drops a mark in the exit hook (`sched_process_exit`), so a process
/// still marked has not exited, and its number can go to another process
/// only once it exited and was reaped, which leaves microseconds between
/// the check and the act; [`exited`] afterwards tells whether the act
/// could have missed it. Without the check, a number read from an event a
/// while ago may be a bystander's by now: a root workload can leave its
/// cgroup, exit at once and set `kernel.ns_last_pid` so that the host's
/// next task gets its number.
pub fn with_pidfd_if_marked<R>(tgid: u32, still_marked: impl FnOnce() -> bool, act: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R) -> Option<R> {
    // SAFETY: pidfd_open(2) with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just handed us this fd; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    still_marked().then(|| act(fd.as_fd()))
}

/// Whether the process of pidfd `fd` has exited (the whole thread group:
/// a pidfd turns readable then, zombie or reaped). Does not wait.
pub fn exited(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_if_marked_signals_only_while_marked() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id();
        assert!(!kill_if_marked(pid, || false), "no mark: no signal");
        assert!(child.try_wait().unwrap().is_none(), "still running");
        assert!(kill_if_marked(pid, || true));
        let st = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    }
}
