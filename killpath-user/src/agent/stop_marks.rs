//! The stop's helper threads, both at work while a stop writes its intent
//! to disk: `kp-stop-prep` opens the target's cgroup and makes what a
//! small target's kill needs (`stop::prepared`); `kp-stop-marks` reads the
//! target's marks, so that the check after the cgroup empties does not
//! read every mark on the host (see `stop::marks`).
//!
//! The marks thread waits in real time (SCHED_FIFO 1, as the preparation),
//! so that a stop's request wakes it at once, and is asked first; each read
//! goes back to the ordinary class (nice -20) after `RT_MARKS_READ` marks
//! or `RT_READ_TIME`: a long real-time read would keep a CPU from the
//! killed tasks of a fork bomb, which die in the ordinary class on a
//! two-core host. A snapshot it has not started by the time the stop needs
//! it is not waited for, one it is taking for at most 1 ms in all: then the
//! stop reads every mark itself. The preparation thread is real-time below
//! the stop thread; what it made is taken only if it is there when the
//! intent is durable. A request whose stop is over already is skipped.
use std::{
    path::PathBuf,
    sync::{mpsc, Mutex},
    time::Instant,
};

use serde_json::Value;

use super::{caller::Caller, State};
use crate::{
    error::Result,
    kernel::{
        mark_index::{self, MarkIndex, SharedIndex},
        members::MemberMaps,
        priority,
    },
    stop::{
        marks::{Pending, Reply},
        StopOrder,
    },
};

/// The most marks the marks thread reads in real time (~0.4 µs a mark,
/// plus the walk of the map's empty buckets: ~1.6 ms of one CPU), and the
/// longest it stays real-time in one read (the check is made between two
/// batches of 64 marks, ~25 µs each).
const RT_MARKS_READ: usize = 4096;
const RT_READ_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether a read that began at `began` and has read `read` marks (None:
/// it is over) has had its real-time share.
fn rt_part_over(read: Option<usize>, began: Instant) -> bool {
    read.is_none_or(|n| n >= RT_MARKS_READ || began.elapsed() >= RT_READ_TIME)
}

/// What the kill's preparation needs: the cgroup2 mount, the stopped
/// target's cgroup path and id, and its escape count read before the
/// request (see `stop::prepared::Prepared::escapes_before`).
struct Prep {
    mount: PathBuf,
    path: PathBuf,
    id: u64,
    escapes_before: u64,
    reply: Reply,
}

/// The two threads' queues: `kp-stop-prep` makes the kill ready
/// (`stop::prepared`), `kp-stop-marks` reads the marks of the targets (the
/// stopped one's and those nested in it). Two threads, so that neither
/// waits for the other: the marks read takes ~0.4 ms at a thousand marks,
/// and behind the preparation it ended after the cgroup emptied, where the
/// stop waited for it (stop at 1,000 targets 1.52× one target, in the bench
/// run of 77bdca0).
pub struct MarkReader {
    marks: mpsc::Sender<(Vec<u64>, Reply)>,
    prep: Option<mpsc::Sender<Prep>>,
    /// Every mark, kept by the marks thread (`kernel::mark_index`).
    index: SharedIndex,
}

/// How long the marks thread waits between two builds of the index (each
/// reads every mark).
const REBUILD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the index is missing, not whole or oversized, and the last
/// build is [`REBUILD_EVERY`] old.
fn needs_build(index: &Mutex<Option<MarkIndex>>, m: &MemberMaps, last_build: Option<Instant>) -> bool {
    let stale = mark_index::lock(index).as_ref().is_none_or(|ix| !ix.whole(m) || ix.oversized());
    stale && last_build.is_none_or(|t| t.elapsed() >= REBUILD_EVERY)
}

/// Builds the index again. Holds the lock throughout: a drain or a check
/// beside a build would take from the log what the build does not see.
fn build_index(index: &Mutex<Option<MarkIndex>>, m: &MemberMaps, last_build: &mut Option<Instant>) {
    let mut held = mark_index::lock(index);
    *held = MarkIndex::build(m);
    *last_build = Some(Instant::now());
    match held.as_ref() {
        Some(ix) => tracing::debug!(pairs = ix.pairs(), "stop: mark index built"),
        None => tracing::debug!("stop: no mark index (no log of mark writes in these pins, or a read failed)"),
    }
}

/// Drains the log into the index.
fn drain_index(index: &Mutex<Option<MarkIndex>>, m: &MemberMaps) {
    if let Some(ix) = mark_index::lock(index).as_mut() {
        if ix.drain(m).is_none() {
            tracing::warn!("stop: the log of mark writes could not be read; the mark index is built again");
        }
    }
}

impl MarkReader {
    /// Starts the threads, the marks reader on a second handle of `maps`;
    /// None without the kernel's mark counters or when the marks thread
    /// cannot start (every stop then reads every mark itself, and makes its
    /// kill ready itself).
    pub fn start(maps: &MemberMaps) -> Option<Self> {
        let reader = maps.reader()?;
        let (marks, rx) = mpsc::channel::<(Vec<u64>, Reply)>();
        let index: SharedIndex = std::sync::Arc::default();
        let kept = index.clone();
        let started = std::thread::Builder::new().name("kp-stop-marks".into()).spawn(move || {
            if !priority::raise_nice_for_stop(0) {
                tracing::debug!("stop: the marks thread stays at the agent's priority (nice refused)");
            }
            // The index first, in the ordinary class (a build reads every
            // mark: tens of ms at tens of thousands).
            let mut last_build = None;
            build_index(&kept, &reader, &mut last_build);
            // Real-time (SCHED_FIFO 1, as the preparation) while it waits
            // and for the start of each read. Ordinary at nice -20 it waited
            // ~0.2 ms for a CPU and was preempted on the way, and at a
            // thousand marks ended after the cgroup emptied, where the stop
            // waited for it; made real-time only once woken, it still
            // started ~0.1 ms after the request, behind the preparation
            // (bench of 2026-12-04, `--only scale`: the read began 314 µs
            // after receipt; waiting real-time and asked before the
            // preparation, 111 µs). Waiting costs no CPU in any class.
            // Bounded inside the read, whatever the map holds now: after
            // RT_MARKS_READ marks or RT_READ_TIME, whichever comes first,
            // the thread goes back to the ordinary class between two
            // batches (a long real-time read would hold a CPU from the
            // killed tasks of a fork bomb, which die in the ordinary class,
            // and from the kernel threads a stop's fdatasync waits for).
            // A thread that could not be put back is never raised again.
            let mut may_raise = true;
            let mut raised = priority::fifo(0, 1).is_ok();
            loop {
                let (ids, reply) = match rx.recv_timeout(mark_index::DRAIN_EVERY) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !needs_build(&kept, &reader, last_build) {
                            drain_index(&kept, &reader);
                            continue;
                        }
                        // A build reads every mark (tens of ms at tens of
                        // thousands): never in real time. A thread that
                        // cannot leave it builds no index (the stops read
                        // the marks instead).
                        if raised {
                            if !priority::normal(0, priority::STOP_NICE) {
                                if std::mem::replace(&mut may_raise, false) {
                                    tracing::warn!("stop: the marks thread could not leave the real-time class; no mark index is built");
                                }
                                continue;
                            }
                            raised = false;
                        }
                        build_index(&kept, &reader, &mut last_build);
                        if may_raise {
                            raised = priority::fifo(0, 1).is_ok();
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                // With the index whole, the stop checks its marks there
                // (`stop::marks::alive`): nothing to read beside it.
                if mark_index::whole_shared(&kept, &reader) {
                    reply.skip();
                    continue;
                }
                let began = Instant::now();
                if !raised && may_raise {
                    raised = priority::fifo(0, 1).is_ok();
                }
                reply.take(&reader, &ids, &mut |read| {
                    if raised && rt_part_over(read, began) {
                        raised = false;
                        if !priority::normal(0, priority::STOP_NICE) {
                            may_raise = false;
                            tracing::warn!("stop: the marks thread could not leave the real-time class; it reads in the ordinary class from now on");
                        }
                    }
                });
                // Real-time again for the wait.
                if !raised && may_raise {
                    raised = priority::fifo(0, 1).is_ok();
                }
            }
        });
        if let Err(e) = started {
            tracing::warn!("stop: the marks thread did not start, each stop reads every mark itself: {e}");
            return None;
        }
        let (prep, rx) = mpsc::channel::<Prep>();
        let started = std::thread::Builder::new().name("kp-stop-prep".into()).spawn(move || {
            // Real-time below the stop thread (SCHED_FIFO 1 against its 2):
            // the kill must be ready before the intent's fdatasync returns,
            // flood or not; the stop thread made the same calls real-time
            // before. Nice -20 first, kept if real-time is refused.
            priority::raise_nice_for_stop(0);
            if let Err(e) = priority::fifo(0, 1) {
                tracing::debug!("stop: the kill's preparation stays in the ordinary class: {e}");
            }
            for p in rx {
                p.reply.prepare((&p.mount, &p.path, p.id), p.escapes_before);
            }
        });
        let prep = match started {
            Ok(_) => Some(prep),
            Err(e) => {
                tracing::warn!("stop: the preparation thread did not start, each stop makes its kill ready itself: {e}");
                None
            }
        };
        Some(Self { marks, prep, index })
    }

    fn request(&self, ids: Vec<u64>, prep: impl FnOnce(Reply) -> Prep) -> Option<Pending> {
        let (reply, pending) = Pending::channel();
        let pending = pending.with_index(self.index.clone());
        // The marks first: the read is the longer job (~0.4 ms at a
        // thousand marks), the preparation (~0.1 ms) fits before the
        // intent's fdatasync returns even when it waits for a CPU.
        let asked = self.marks.send((ids, reply.clone())).is_ok();
        if let Some(tx) = &self.prep {
            let _ = tx.send(prep(reply));
        }
        asked.then_some(pending)
    }
}

impl State {
    /// Journals and runs a stop of target `name` as `action` (`stop`, or an
    /// `escalate` to it), its marks read on the marks thread meanwhile.
    pub(super) fn execute_stop(&mut self, caller: Caller, action: &str, name: &str, params: Value, order: StopOrder, received: Instant) -> Result<Value> {
        let early = self.read_marks_early(name);
        self.execute(caller, action, Some(name), params, |s| s.stop(name, order, early.as_ref(), received))
    }

    /// Has target `name`'s cgroup opened and its small-target kill made
    /// ready (preparation thread), and the marks of the target and of the
    /// targets nested in it read (marks thread), for the stop about to run (before its
    /// intent is journaled); None when unknown or unavailable.
    fn read_marks_early(&self, name: &str) -> Option<Pending> {
        let t = self.registry.targets.get(name)?;
        let ids = self.nested_ids(t);
        // Before the listing: a listed process moved out after it counts
        // as escaped during the halt (`stop::prepared`).
        let escapes_before = self.enforcer.maps.members.as_ref().map_or(0, |m| m.escapes_of(&ids));
        let (mount, path, id) = (self.cgroup_mount.clone(), t.cgroup.clone(), t.cgroup_id);
        self.stop_marks.as_ref()?.request(ids, |reply| Prep { mount, path, id, escapes_before, reply })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read leaves the real-time class once over, after RT_MARKS_READ
    /// marks, or after RT_READ_TIME, whichever comes first.
    #[test]
    fn a_real_time_read_is_bounded_by_marks_and_time() {
        let now = Instant::now();
        assert!(rt_part_over(None, now), "over: back");
        assert!(!rt_part_over(Some(64), now), "a small read so far stays real-time");
        assert!(rt_part_over(Some(RT_MARKS_READ), now), "a long read goes back by its size");
        let long_ago = now.checked_sub(RT_READ_TIME * 2).expect("an earlier instant");
        assert!(rt_part_over(Some(64), long_ago), "a slow read goes back by its time");
    }
}
