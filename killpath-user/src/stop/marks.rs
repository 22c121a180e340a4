//! Which marked processes of a stopped target are still alive, once its
//! cgroup is empty: the check that ends every stop (and its survivors
//! count), without reading every mark on the host on the stop's path.
//!
//! Reading every mark (`KP_MEMBERS`, one task a mark, one target a
//! thousand tasks or a thousand targets a task each) is a batch read whose
//! cost follows the number of marks: ~0.3–0.45 ms at a thousand (this
//! host, 6.18), which was a stop's whole difference between one target and
//! a thousand. So the marks are read earlier, off the stop's path (on the
//! agent's `kp-stop-marks` thread, while the stop's intent is written to
//! disk), with the kernel's mark-write counters of the targets read first
//! (`kernel::mark_snapshot`). Once the cgroup is empty each mark read is
//! looked up again, then the counters are read again: unchanged, no mark
//! of the targets was written since (the kernel bumps a target's counter
//! before and after every mark it writes, and removals only shrink the
//! set), so the targets' marks now are among those looked up. Changed (a
//! fork, a move, a mark of another target that shares the counter slot),
//! not ready, more marks than reading them all would cost, or no counters
//! (pins of an older build, the CLI's stop with the agent down): every
//! mark is read as before.
//!
//! The agent's own mark writes (`run`, `adopt`, moving an escapee back,
//! `release`) move the counter with a read and a write, not atomically
//! beside the kernel's adds (`MemberMaps::put`); they are made under the
//! state lock, which a stop holds from before the counters are read until
//! it reports, so none runs during a stop.
use std::{collections::BTreeSet, sync::mpsc, time::Duration};

use crate::kernel::{
    mark_snapshot::MarkSnapshot,
    members::{task_gone, MemberMaps},
};

/// What the thread taking a snapshot sends.
enum Msg {
    Started,
    Done(Option<MarkSnapshot>),
}

/// How long a stop waits for a snapshot whose taker has started: a
/// thousand marks take ~0.4 ms to read. At most this much more than the
/// stop reading every mark itself, when the taker is slower (a map of tens
/// of thousands of marks, or a taker starved of CPU).
const WAIT_STARTED: Duration = Duration::from_millis(1);

/// A snapshot being taken on another thread; see [`MarkSnapshot`].
pub struct Pending(mpsc::Receiver<Msg>);

/// Where the thread taking a snapshot answers.
pub struct Reply(mpsc::SyncSender<Msg>);

impl Reply {
    /// Takes the snapshot of `targets` and sends it, saying first that it
    /// started.
    /// Nothing is read when the stop is over already (it dropped its end).
    pub fn take(self, m: &MemberMaps, targets: &[u64]) {
        if self.0.send(Msg::Started).is_ok() {
            let _ = self.0.send(Msg::Done(MarkSnapshot::take(m, targets)));
        }
    }
}

impl Pending {
    /// A pending snapshot and where its taker answers.
    pub fn channel() -> (Reply, Self) {
        let (tx, rx) = mpsc::sync_channel(2);
        (Reply(tx), Self(rx))
    }

    /// The snapshot, if it is ready or being taken (then waited for at most
    /// [`WAIT_STARTED`]). One whose taker has not started is not waited
    /// for: the stop reads every mark itself rather than wait behind a
    /// thread that does not run.
    pub fn ready(&self) -> Option<MarkSnapshot> {
        match self.0.try_recv() {
            Ok(Msg::Done(s)) => s,
            Ok(Msg::Started) => match self.0.recv_timeout(WAIT_STARTED) {
                Ok(Msg::Done(s)) => s,
                _ => None,
            },
            Err(_) => None,
        }
    }
}

/// How [`alive`] found the marks.
pub const CHECKED_EARLY: &str = "early";
/// See [`CHECKED_EARLY`].
pub const CHECKED_ALL: &str = "all";

/// Marked processes of `targets` still alive, and how the marks were
/// found: the snapshot's that are still there when `snap` is current and
/// looking them up is the cheaper read ([`CHECKED_EARLY`]), else every
/// mark of `targets` ([`CHECKED_ALL`]). A mark whose task is gone (a
/// zombie, a pid freed) does not count.
pub fn alive(m: &MemberMaps, targets: &[u64], snap: Option<&MarkSnapshot>) -> (BTreeSet<u32>, &'static str) {
    let (marks, checked) = match snap.filter(|s| s.cheaper_than_all()).and_then(|s| s.still_there(m, targets)) {
        Some(there) => (there, CHECKED_EARLY),
        None => (m.of_targets(targets), CHECKED_ALL),
    };
    (marks.into_iter().filter(|(tid, mk)| !task_gone(mk.tgid, *tid)).map(|(_, mk)| mk.tgid).collect(), checked)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use killpath_common::Member;

    use super::*;

    fn snapshot() -> MarkSnapshot {
        MarkSnapshot::from_parts(vec![9], vec![7], vec![(42, Member { target: 9, tgid: 42, escapes: 0 })], 1)
    }

    #[test]
    fn a_snapshot_not_started_is_not_waited_for() {
        let (_reply, pending) = Pending::channel();
        let t = Instant::now();
        assert!(pending.ready().is_none());
        assert!(t.elapsed() < WAIT_STARTED, "waited {:?} for a taker that never started", t.elapsed());
    }

    #[test]
    fn a_started_snapshot_is_delivered_after_its_start() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let _ = reply.0.send(Msg::Done(Some(snapshot())));
        assert_eq!(pending.ready().map(|s| s.marks().to_vec()), Some(snapshot().marks().to_vec()));
    }

    #[test]
    fn a_started_snapshot_that_never_comes_is_given_up_after_the_wait() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let t = Instant::now();
        assert!(pending.ready().is_none());
        assert!(t.elapsed() >= WAIT_STARTED, "gave up after {:?}", t.elapsed());
        drop(reply);
    }
}
