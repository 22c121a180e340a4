//! The agent's index of every mark on the host, kept current from the
//! kernel's log of mark writes (`KP_MARKS_RECENT`, see
//! `killpath_common::maps::MARKS_RECENT`), so that the check that ends a
//! stop looks up only its target's marks instead of reading every mark.
//!
//! Why: reading every mark (`KP_MEMBERS`) is a batch walk of the map's
//! buckets and marks, ~0.45 µs a mark on this host: at a thousand targets
//! of a task each it took ~0.46 ms, begun beside the stop's durable intent
//! and ended ~0.1 ms after the cgroup emptied, which the stop waited for
//! (bench of 2026-12-04, `--only scale`: stop at 1,000 targets / 1 target
//! 1.21×). Looking up one target's marks costs ~1 µs each, and each drain
//! of the log ~10 µs.
//!
//! Why it is whole, with no mark of a target missed:
//! - Built ([`MarkIndex::build`]): the log's loss count is read (the base),
//!   the log drained, then every mark read. A mark written after the walk
//!   passed its bucket was logged after it was written (the kernel's
//!   `mark` in `killpath-ebpf/src/members.rs`, the agent's
//!   `MemberMaps::put`), so it is in the log still or drained since.
//! - Kept: the log is drained (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`: each
//!   entry read is deleted, one written during the read stays for the
//!   next) every [`DRAIN_EVERY`] on the agent's marks thread, and by every
//!   check. The log is keyed by (target, task): two writes of one task's
//!   mark naming two targets are two entries, so no write of a target's
//!   mark is overwritten in the log before it is drained.
//! - A full log loses a pair; the kernel counts it
//!   (`KP_MARKS_RECENT_LOST`, BPF_XADD), the agent counts its own in
//!   process ([`RecentMaps::log`]), and the index is not used while either
//!   count is off its base, until built again.
//! - A check ([`MarkIndex::check`]): drain, look up every task the index
//!   has for the targets (the mark as it is now decides), drain again, and
//!   look up the tasks of the targets that drain brought (a mark written
//!   between the two), up to [`ROUNDS`] times; the loss count, read last,
//!   must still be the base. A mark in place before its task's lookup
//!   whose pair is logged after the last drain would need one run of a
//!   kernel hook, which runs with preemption off, to span the whole check
//!   (the same bound as `mark_snapshot`'s counters); one written after the
//!   check began comes from a move into the stopped cgroup, or a fork of a
//!   marked task the check finds alive, and is seen by the stop's next
//!   pass.
//! - Removals are not logged: a pair whose task's mark is gone, or names
//!   another target now, is not there when looked up. Pairs of gone tasks
//!   pile up; the index is built again when it holds more than twice the
//!   marks of its last build plus [`REBUILD_SLACK`].
use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, TryLockError,
    },
    time::Duration,
};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData};
use killpath_common::{Member, RecentMark};

use super::members::{dup_data, MemberMaps};

/// How often the marks thread drains the log: ~40,000 mark writes a second
/// fit in its [`killpath_common::MARKS_RECENT_ENTRIES`] entries.
pub const DRAIN_EVERY: Duration = Duration::from_millis(200);

/// How many drains a check makes at most, each after looking up what the
/// one before brought; marks of the targets still coming after that (a
/// fork loop of a marked task outside the cgroup) leave the check to the
/// read of every mark.
const ROUNDS: usize = 4;

/// Pairs beyond twice the marks of the last build before it is made again.
const REBUILD_SLACK: usize = 4096;

/// The log of mark writes and its loss counts: the kernel's, and the
/// agent's own (its failed log writes, counted in this process: user space
/// cannot add atomically beside the kernel's adds, and a read and a write
/// of the kernel's count could bring it back onto a base read in between).
pub struct RecentMaps {
    pub(crate) log: HashMap<MapData, RecentMark, u32>,
    pub(crate) lost: Array<MapData, u64>,
    /// Shared by every handle duplicated from this one ([`RecentMaps::dup`]).
    pub(crate) user_lost: Arc<AtomicU64>,
}

impl RecentMaps {
    /// Both maps, from a freshly loaded object's.
    pub fn new(log: HashMap<MapData, RecentMark, u32>, lost: Array<MapData, u64>) -> Self {
        Self { log, lost, user_lost: Arc::default() }
    }

    /// A second handle on both (duplicated fds), for another thread.
    pub fn dup(&self) -> Option<Self> {
        let log = HashMap::try_from(Map::HashMap(dup_data(self.log.map())?)).ok()?;
        let lost = Array::try_from(Map::Array(dup_data(self.lost.map())?)).ok()?;
        Some(Self { log, lost, user_lost: self.user_lost.clone() })
    }

    /// Logs a mark written from user space, as the kernel logs its own; a
    /// full log is counted in this process.
    pub fn log(&mut self, tid: u32, m: &Member) {
        let key = RecentMark { target: m.target, tid, _pad: 0 };
        if self.log.insert(key, m.tgid, 0).is_err() {
            self.user_lost.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Pairs that could not be logged, ever: the kernel's count and this
    /// process's (None: unreadable).
    fn lost(&self) -> Option<(u64, u64)> {
        Some((self.lost.get(&0, 0).ok()?, self.user_lost.load(Ordering::SeqCst)))
    }
}

/// Every (target, task) pair seen, from the last build's read of every
/// mark and the log drained since.
#[derive(Debug, Default)]
pub struct MarkIndex {
    /// Target → tasks.
    by_target: StdHashMap<u64, HashSet<u32>>,
    pairs: usize,
    /// The log's loss counts when the index was built; None once a drain
    /// failed (what it took from the log is gone).
    base_lost: Option<(u64, u64)>,
    /// Marks read by the build.
    built_marks: usize,
}

impl MarkIndex {
    /// Reads the loss count, drains the log, then reads every mark; None
    /// without the log (an older build's pins) or when a read fails.
    pub fn build(m: &MemberMaps) -> Option<Self> {
        let base_lost = m.recent.as_ref()?.lost()?;
        let mut ix = Self { base_lost: Some(base_lost), ..Self::default() };
        ix.drain(m)?;
        let all = m.all();
        for (tid, mk) in &all {
            ix.add(mk.target, *tid);
        }
        ix.built_marks = all.len();
        Some(ix)
    }

    fn add(&mut self, target: u64, tid: u32) {
        if self.by_target.entry(target).or_default().insert(tid) {
            self.pairs += 1;
        }
    }

    /// Drains the log into the index; the pairs it brought (None: the log
    /// could not be read, and the index is no longer whole).
    pub fn drain(&mut self, m: &MemberMaps) -> Option<Vec<RecentMark>> {
        let Some(taken) = m.recent.as_ref().and_then(|r| super::batch::take_all(&r.log)) else {
            // What a failed batch read had deleted is gone from the log:
            // never trusted again until built anew.
            self.base_lost = None;
            return None;
        };
        let mut brought = Vec::with_capacity(taken.len());
        for (k, _tgid) in taken {
            self.add(k.target, k.tid);
            brought.push(k);
        }
        Some(brought)
    }

    /// Whether no pair was lost since the build.
    pub fn whole(&self, m: &MemberMaps) -> bool {
        self.base_lost.is_some() && m.recent.as_ref().and_then(RecentMaps::lost) == self.base_lost
    }

    /// Whether pairs of gone tasks make it worth building again.
    pub fn oversized(&self) -> bool {
        self.pairs > 2 * self.built_marks + REBUILD_SLACK
    }

    /// Pairs held.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Tasks the index has for `targets`.
    fn tasks_of(&self, targets: &[u64]) -> Vec<u32> {
        let mut tids: Vec<u32> = targets.iter().filter_map(|t| self.by_target.get(t)).flat_map(|m| m.iter().copied()).collect();
        tids.sort_unstable();
        tids.dedup();
        tids
    }

    /// The marks of `targets` on the host now (task id, mark), looked up
    /// one by one (see the module's doc); None when the index is not whole,
    /// a read fails, marks of the targets keep coming, or looking them all
    /// up would cost more than reading every mark (a quarter of the pairs,
    /// plus 16).
    pub fn check(&mut self, m: &MemberMaps, targets: &[u64]) -> Option<Vec<(u32, Member)>> {
        if !self.whole(m) {
            return None;
        }
        self.drain(m)?;
        let limit = 16 + self.pairs / 4;
        let mut looked = 0;
        let mut there: BTreeMap<u32, Member> = BTreeMap::new();
        let mut ask = self.tasks_of(targets);
        for _ in 0..ROUNDS {
            if ask.is_empty() {
                return self.whole(m).then(|| there.into_iter().collect());
            }
            looked += ask.len();
            if looked > limit {
                return None;
            }
            for tid in ask {
                match m.members.get(&tid, 0) {
                    Ok(now) if targets.contains(&now.target) => {
                        there.insert(tid, now);
                    }
                    Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {
                        there.remove(&tid);
                    }
                    Err(e) => {
                        tracing::debug!(tid, "mark index: lookup failed: {e}");
                        return None;
                    }
                }
            }
            let mut fresh: Vec<u32> = self.drain(m)?.into_iter().filter(|k| targets.contains(&k.target)).map(|k| k.tid).collect();
            fresh.sort_unstable();
            fresh.dedup();
            ask = fresh;
        }
        None
    }
}

/// The index as the marks thread keeps it, shared with the stops that
/// check against it.
pub type SharedIndex = std::sync::Arc<Mutex<Option<MarkIndex>>>;

/// The index, locked. A lock poisoned by a panic (in a build, say, after
/// its drain took pairs from the log) is not trusted: the index is dropped,
/// and built again by the marks thread.
pub fn lock(index: &Mutex<Option<MarkIndex>>) -> MutexGuard<'_, Option<MarkIndex>> {
    index.lock().unwrap_or_else(|p| forget(index, p.into_inner()))
}

/// Drops the index behind a poisoned lock, and clears the poison.
fn forget<'a>(index: &Mutex<Option<MarkIndex>>, mut held: MutexGuard<'a, Option<MarkIndex>>) -> MutexGuard<'a, Option<MarkIndex>> {
    *held = None;
    index.clear_poison();
    held
}

/// [`MarkIndex::check`] on `index` if it is there, whole, and not being
/// built or drained right now (a stop does not wait for the marks thread:
/// it reads otherwise).
pub fn check_shared(index: &Mutex<Option<MarkIndex>>, m: &MemberMaps, targets: &[u64]) -> Option<Vec<(u32, Member)>> {
    let mut held = match index.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => forget(index, p.into_inner()),
        Err(TryLockError::WouldBlock) => return None,
    };
    held.as_mut()?.check(m, targets)
}

/// Whether `index` is there and whole (the marks thread's question before
/// reading every mark for a stop: not needed then).
pub fn whole_shared(index: &Mutex<Option<MarkIndex>>, m: &MemberMaps) -> bool {
    lock(index).as_ref().is_some_and(|ix| ix.whole(m))
}
