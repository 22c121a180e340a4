//! A target's marks as read once, with the kernel's counters of mark
//! writes read just before (`KP_MARK_SEQ`, see
//! `killpath_common::maps::MARK_SEQ`): while a target's counter has not
//! moved, no mark of it was written since, so its marks now are among
//! those read, and looking each up again tells which are still there.
//! Two readers use it instead of reading every mark on the host (~0.3 µs
//! a mark, a batch read: at a thousand targets of a task each, most of a
//! stop of one and of `status NAME`):
//! - the stop's check after the cgroup empties (`stop::marks`), on marks
//!   read beside the stop while its intent was written;
//! - `status NAME`'s member count, on the target's marks as last read
//!   ([`MarkCache`]). Mark writes from user space (the agent's, or
//!   anything writing the pinned map through `MemberMaps`) move the
//!   counter too, with a read and a write (see `MemberMaps::put`), and
//!   forget what this process kept of the target.
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
    time::Instant,
};

use killpath_common::Member;

use super::members::MemberMaps;

/// The marks of a set of targets as read once, and their counters read
/// just before.
#[derive(Debug)]
pub struct MarkSnapshot {
    targets: Vec<u64>,
    seqs: Vec<u64>,
    marks: Vec<(u32, Member)>,
    /// Every mark on the host at the read.
    total: usize,
    /// When the read began and ended (None: made up).
    read: Option<(Instant, Instant)>,
}

impl MarkSnapshot {
    /// Reads `targets`' counters, then every mark, keeping theirs. None
    /// without the counters.
    pub fn take(m: &MemberMaps, targets: &[u64]) -> Option<Self> {
        Self::take_then(m, targets, &mut |_| {})
    }

    /// [`MarkSnapshot::take`], calling `after_chunk` with the marks read so
    /// far after each batch of the read.
    pub fn take_then(m: &MemberMaps, targets: &[u64], after_chunk: &mut dyn FnMut(usize)) -> Option<Self> {
        let began = Instant::now();
        let seqs = m.mark_seqs(targets)?;
        let all = m.all_then(after_chunk);
        let total = all.len();
        let marks = all.into_iter().filter(|(_, mk)| targets.contains(&mk.target)).collect();
        Some(Self { targets: targets.to_vec(), seqs, marks, total, read: Some((began, Instant::now())) })
    }

    /// The snapshot's marks that are still there, if no mark of `targets`
    /// (the snapshot's own) was written since it was read; None when one
    /// was, or a lookup failed. Each mark is looked up first and the
    /// counters read after (a seqlock's order): a mark moved between the
    /// two (a thread's exec moves its mark to the tgid: a write, then the
    /// old key's removal) shows in the counters. A mark removed (its task
    /// exited) or now another process's (its id reused) is not there. Its
    /// escape count may have grown in place: not a new mark.
    pub fn still_there(&self, m: &MemberMaps, targets: &[u64]) -> Option<Vec<(u32, Member)>> {
        if targets != self.targets.as_slice() {
            return None;
        }
        let mut there = Vec::new();
        for (tid, mk) in &self.marks {
            if m.still_marked(*tid, mk.tgid, targets)? {
                there.push((*tid, *mk));
            }
        }
        (m.mark_seqs(targets)? == self.seqs).then_some(there)
    }

    /// Whether looking the snapshot's marks up one by one (a syscall each)
    /// costs less than reading every mark again (a batch read: a fixed
    /// walk of the map's buckets, then ~0.3 µs a mark).
    pub fn cheaper_than_all(&self) -> bool {
        self.marks.len() <= 16 + self.total / 4
    }

    /// The marks read.
    pub fn marks(&self) -> &[(u32, Member)] {
        &self.marks
    }

    /// When the read began and ended, if it was made here.
    pub fn read_span(&self) -> Option<(Instant, Instant)> {
        self.read
    }

    /// A snapshot made up (tests).
    pub fn from_parts(targets: Vec<u64>, seqs: Vec<u64>, marks: Vec<(u32, Member)>, total: usize) -> Self {
        Self { targets, seqs, marks, total, read: None }
    }
}

/// Per target: its marks as last read (for `status NAME`).
#[derive(Default)]
pub struct MarkCache(Mutex<HashMap<u64, MarkSnapshot>>);

impl MarkCache {
    /// Forgets `target`'s marks (the agent wrote a mark of it).
    pub fn forget(&self, target: u64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&target);
    }
}

impl MemberMaps {
    /// Distinct processes marked as each target's: of target `only` alone
    /// when it is given (from its marks as last read while they are
    /// current, else from a new read, kept), else of every target from
    /// every mark.
    pub fn processes_by_target(&self, only: Option<u64>) -> HashMap<u64, BTreeSet<u32>> {
        let Some(t) = only else {
            let mut by: HashMap<u64, BTreeSet<u32>> = HashMap::new();
            for (_, mk) in self.all() {
                by.entry(mk.target).or_default().insert(mk.tgid);
            }
            return by;
        };
        let tgids = |marks: &[(u32, Member)]| marks.iter().map(|(_, mk)| mk.tgid).collect::<BTreeSet<u32>>();
        let mut kept = self.cache.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(there) = kept.get(&t).filter(|s| s.cheaper_than_all()).and_then(|s| s.still_there(self, &[t])) {
            return HashMap::from([(t, tgids(&there))]);
        }
        match MarkSnapshot::take(self, &[t]) {
            Some(snap) => {
                let processes = tgids(snap.marks());
                kept.insert(t, snap);
                HashMap::from([(t, processes)])
            }
            None => HashMap::from([(t, self.processes_of(&[t]))]),
        }
    }
}
