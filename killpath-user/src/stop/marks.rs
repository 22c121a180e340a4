//! Which marked processes of a stopped target are still alive, once its
//! cgroup is empty: the check that ends every stop (and its survivors
//! count), without reading every mark on the host on the stop's path.
//!
//! Reading every mark (`KP_MEMBERS`, one task a mark, one target a
//! thousand tasks or a thousand targets a task each) is a batch read whose
//! cost follows the number of marks: ~0.3–0.45 ms at a thousand (this
//! host, 6.18), which was a stop's whole difference between one target and
//! a thousand. First choice: the agent's index of every mark, kept from
//! the kernel's log of mark writes (`kernel::mark_index`), where the
//! targets' marks are looked up one by one while the index is whole
//! (`index`). Else the marks are read earlier, off the stop's path (on the
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
use std::{
    cell::{Cell, RefCell},
    collections::BTreeSet,
    sync::{mpsc, Mutex},
    time::{Duration, Instant},
};

use super::prepared::{self, Prepared, Small};
use crate::kernel::{
    cgroup::Cgroup,
    mark_index::{self, MarkIndex, SharedIndex},
    mark_snapshot::MarkSnapshot,
    members::{task_gone, MemberMaps},
};

/// What the threads send: the snapshot's taker `Started` then `Done`; the
/// kill's preparer, when asked ([`Reply::prepare`]), `Prepared`, at any
/// point among them.
enum Msg {
    Started,
    Prepared(Box<Prepared>),
    Done(Option<MarkSnapshot>),
}

/// How long a stop waits for a snapshot whose taker has started: a
/// thousand marks take ~0.4 ms to read. At most this much more than the
/// stop reading every mark itself, when the taker is slower (a map of tens
/// of thousands of marks, or a taker starved of CPU).
const WAIT_STARTED: Duration = Duration::from_millis(1);

/// A snapshot being taken on another thread; see [`MarkSnapshot`]. Used
/// by the stop's thread alone.
pub struct Pending {
    rx: mpsc::Receiver<Msg>,
    /// The taker said it started.
    started: Cell<bool>,
    /// The messages taken so far: whether [`Msg::Prepared`] was looked
    /// for, what it brought, and a snapshot that came without one.
    looked: Cell<bool>,
    prepared: RefCell<Option<Prepared>>,
    done: RefCell<Option<Option<MarkSnapshot>>>,
    /// When the snapshot was asked for.
    asked: Instant,
    /// The agent's index of every mark, checked first (`mark_index`).
    index: Option<SharedIndex>,
}

/// Where the threads taking a snapshot and preparing the kill answer.
#[derive(Clone)]
pub struct Reply(mpsc::SyncSender<Msg>);

impl Reply {
    /// Takes the snapshot of `targets` and sends it, saying first that it
    /// started.
    /// Nothing is read when the stop is over already (it dropped its end).
    /// `progress` is called with `Some(marks read so far)` after each batch
    /// of the read and with None once it is over, before the snapshot is
    /// sent.
    pub fn take(self, m: &MemberMaps, targets: &[u64], progress: &mut dyn FnMut(Option<usize>)) {
        if self.0.send(Msg::Started).is_err() {
            progress(None);
            return;
        }
        let snap = MarkSnapshot::take_then(m, targets, &mut |n| progress(Some(n)));
        progress(None);
        let _ = self.0.send(Msg::Done(snap));
    }

    /// Answers that no snapshot comes (the index is whole: the stop checks
    /// there), so that the stop does not wait for one.
    pub fn skip(self) {
        let _ = self.0.send(Msg::Done(None));
    }

    /// Opens the target's cgroup by id on `mount` (`path` names it in
    /// messages), makes what its kill needs (`prepared`) and sends that
    /// (on another thread than the snapshot's: the two messages can come in
    /// either order). `escapes_before`: the target's escape count, read
    /// before this was asked for.
    pub fn prepare(self, cgroup: (&std::path::Path, &std::path::Path, u64), escapes_before: u64) {
        let (mount, path, id) = cgroup;
        if let Ok(cg) = Cgroup::by_id_on(mount, path, id) {
            let at = Instant::now();
            let small = prepared::small(&cg);
            let _ = self.0.send(Msg::Prepared(Box::new(Prepared { cg, small, at, escapes_before })));
        }
    }
}

impl Pending {
    /// A pending snapshot and where its taker answers.
    pub fn channel() -> (Reply, Self) {
        let (tx, rx) = mpsc::sync_channel(3);
        let pending = Self {
            rx,
            started: Cell::new(false),
            looked: Cell::new(false),
            prepared: RefCell::new(None),
            done: RefCell::new(None),
            asked: Instant::now(),
            index: None,
        };
        (Reply(tx), pending)
    }

    /// The next message after `Started`: at once if the taker has not
    /// started (it is not waited for: the stop does the work itself rather
    /// than wait behind a thread that does not run), else by `until`. A
    /// wait that runs out is not made again: the taker is taken as stuck.
    fn next(&self, until: Option<Instant>) -> Option<Msg> {
        loop {
            let msg = match until.filter(|_| self.started.get()) {
                Some(t) => {
                    let got = self.rx.recv_timeout(t.saturating_duration_since(Instant::now()));
                    if matches!(got, Err(mpsc::RecvTimeoutError::Timeout)) {
                        self.started.set(false);
                    }
                    got.ok()
                }
                None => self.rx.try_recv().ok(),
            };
            match msg? {
                Msg::Started => self.started.set(true),
                m => return Some(m),
            }
        }
    }

    /// Takes [`Msg::Prepared`] once, if it is there already: it is not
    /// waited for, the kill is next (the taker needs ~0.1 ms, the intent's
    /// fdatasync takes longer; a taker slower than that, on a target whose
    /// cgroup subtree takes long to walk, must not delay the kill). A
    /// snapshot taken without one is kept for [`Pending::ready`].
    fn look(&self) {
        if self.looked.replace(true) {
            return;
        }
        while let Some(m) = self.next(None) {
            match m {
                Msg::Prepared(p) => {
                    *self.prepared.borrow_mut() = Some(*p);
                    return;
                }
                Msg::Done(s) => *self.done.borrow_mut() = Some(s),
                Msg::Started => {}
            }
        }
    }

    /// When the snapshot was asked for.
    pub fn asked(&self) -> Instant {
        self.asked
    }

    /// This request with the agent's index of every mark, for the check.
    pub fn with_index(self, index: SharedIndex) -> Self {
        Self { index: Some(index), ..self }
    }

    /// The agent's index of every mark, if it keeps one.
    pub fn index(&self) -> Option<&Mutex<Option<MarkIndex>>> {
        self.index.as_deref()
    }

    /// The target's cgroup as the taker opened it, if it did in time.
    pub fn cgroup(&self) -> Option<Cgroup> {
        self.look();
        self.prepared.borrow().as_ref().map(|p| p.cg.clone())
    }

    /// What the taker made for the kill of `cg` (the same cgroup, see
    /// [`Pending::cgroup`]) and the escape count read before it:
    /// `small` None when it found the target not small. None when it made
    /// nothing in time, or made it more than [`prepared::FRESH`] ago.
    pub(super) fn small(&self, cg: &Cgroup) -> Option<(Option<Small>, u64)> {
        self.look();
        let mut p = self.prepared.borrow_mut();
        let p = p.as_mut().filter(|p| p.cg.path() == cg.path() && p.at.elapsed() <= prepared::FRESH)?;
        Some((p.small.take(), p.escapes_before))
    }

    /// The snapshot, if it is ready or being taken (then waited for at most
    /// [`WAIT_STARTED`] in all, once); see [`Pending::next`].
    pub fn ready(&self) -> Option<MarkSnapshot> {
        if let Some(s) = self.done.borrow_mut().take() {
            return s;
        }
        let until = Instant::now() + WAIT_STARTED;
        loop {
            match self.next(Some(until))? {
                Msg::Done(s) => return s,
                Msg::Prepared(_) | Msg::Started => {}
            }
        }
    }
}

/// How [`alive`] found the marks: looked up from the agent's index of
/// every mark (`mark_index`).
pub const CHECKED_INDEX: &str = "index";
/// How [`alive`] found the marks: from the snapshot read beside the stop.
pub const CHECKED_EARLY: &str = "early";
/// See [`CHECKED_EARLY`].
pub const CHECKED_ALL: &str = "all";

/// Marked processes of `targets` still alive, how the marks were found,
/// and whether the answer is unsettled. The marks: from the agent's index
/// when it is whole ([`CHECKED_INDEX`]), else the snapshot's that are
/// still there when `snap` is current and looking them up is the cheaper
/// read ([`CHECKED_EARLY`]), else every mark of `targets`
/// ([`CHECKED_ALL`]). A mark whose task is gone (a zombie, a pid freed)
/// does not count; but a thread's mark whose thread is gone while its
/// process lives makes the answer unsettled: that is what a thread's exec
/// looks like between de_thread (the thread takes the process's id, its
/// own is freed) and the exec hook that moves its mark to the process's id
/// (`on_exec` in `killpath-ebpf/src/members.rs`), and a check a moment
/// later sees the moved mark.
pub fn alive(m: &MemberMaps, targets: &[u64], snap: Option<&MarkSnapshot>, index: Option<&Mutex<Option<MarkIndex>>>) -> (BTreeSet<u32>, &'static str, bool) {
    let indexed = || index.and_then(|ix| mark_index::check_shared(ix, m, targets)).map(|there| (there, CHECKED_INDEX));
    let early = || snap.filter(|s| s.cheaper_than_all()).and_then(|s| s.still_there(m, targets)).map(|there| (there, CHECKED_EARLY));
    let (marks, checked) = indexed().or_else(early).unwrap_or_else(|| (m.of_targets(targets), CHECKED_ALL));
    let mut unsettled = false;
    let mut tgids = BTreeSet::new();
    for (tid, mk) in marks {
        if !task_gone(mk.tgid, tid) {
            tgids.insert(mk.tgid);
        } else if tid != mk.tgid && !task_gone(mk.tgid, mk.tgid) {
            unsettled = true;
        }
    }
    (tgids, checked, unsettled)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use killpath_common::Member;

    use super::*;

    fn prepared(path: &str) -> Box<Prepared> {
        Box::new(Prepared { cg: Cgroup::new(path), small: None, at: Instant::now(), escapes_before: 3 })
    }

    /// The preparation comes from another thread than the snapshot: after
    /// it, it is still found, and the snapshot kept for the check.
    #[test]
    fn a_preparation_after_the_snapshot_is_found() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let _ = reply.0.send(Msg::Done(Some(snapshot())));
        let _ = reply.0.send(Msg::Prepared(prepared("/kp-test")));
        assert!(matches!(pending.small(&Cgroup::new("/kp-test")), Some((None, 3))));
        assert_eq!(pending.ready().map(|s| s.marks().to_vec()), Some(snapshot().marks().to_vec()));
    }

    /// A preparation older than `FRESH` at the kill is not used.
    #[test]
    fn a_stale_preparation_is_not_used() {
        let (reply, pending) = Pending::channel();
        let mut p = prepared("/kp-test");
        p.at = Instant::now().checked_sub(prepared::FRESH * 2).expect("an earlier instant");
        let _ = reply.0.send(Msg::Started);
        let _ = reply.0.send(Msg::Prepared(p));
        assert!(pending.small(&Cgroup::new("/kp-test")).is_none());
    }

    /// A taker that never answers is waited for once, not at every look.
    #[test]
    fn a_stuck_taker_is_waited_for_once() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        assert!(pending.ready().is_none());
        let t = Instant::now();
        assert!(pending.ready().is_none());
        assert!(t.elapsed() < WAIT_STARTED, "waited again: {:?}", t.elapsed());
        drop(reply);
    }

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

    /// The cgroup and kill made ready come first, the snapshot after them.
    #[test]
    fn what_was_prepared_is_taken_before_the_snapshot() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let _ = reply.0.send(Msg::Prepared(prepared("/kp-test")));
        let _ = reply.0.send(Msg::Done(Some(snapshot())));
        assert_eq!(pending.cgroup().map(|c| c.path().to_owned()), Some(std::path::PathBuf::from("/kp-test")));
        assert!(pending.small(&Cgroup::new("/kp-other")).is_none(), "another cgroup's preparation is not used");
        assert!(matches!(pending.small(&Cgroup::new("/kp-test")), Some((None, 3))), "prepared, not small, escapes read before");
        assert_eq!(pending.ready().map(|s| s.marks().to_vec()), Some(snapshot().marks().to_vec()));
    }

    /// A preparation still being made is not waited for: the kill is next,
    /// and the stop makes it itself.
    #[test]
    fn a_preparation_not_made_yet_is_not_waited_for() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let t = Instant::now();
        assert!(pending.small(&Cgroup::new("/kp-test")).is_none());
        assert!(t.elapsed() < WAIT_STARTED, "waited {:?} before the kill", t.elapsed());
        let _ = reply.0.send(Msg::Prepared(prepared("/kp-test")));
        let _ = reply.0.send(Msg::Done(Some(snapshot())));
        assert_eq!(pending.ready().map(|s| s.marks().to_vec()), Some(snapshot().marks().to_vec()), "the late preparation is skipped");
    }

    /// A snapshot sent with nothing prepared (`Reply::take`) is kept for
    /// `ready` when the stop looked for a preparation first.
    #[test]
    fn a_snapshot_without_a_preparation_is_kept_for_the_check() {
        let (reply, pending) = Pending::channel();
        let _ = reply.0.send(Msg::Started);
        let _ = reply.0.send(Msg::Done(Some(snapshot())));
        assert!(pending.cgroup().is_none());
        assert!(pending.small(&Cgroup::new("/kp-test")).is_none(), "nothing prepared: the stop makes it itself");
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
