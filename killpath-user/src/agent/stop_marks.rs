//! The `kp-stop-marks` thread: while a stop writes its intent to disk, it
//! opens the target's cgroup and makes what a small target's kill needs
//! (`stop::prepared`), then reads the target's marks, so that the check
//! after the cgroup empties does not read every mark on the host (see
//! `stop::marks`).
//!
//! It runs in the ordinary class at nice -20, as the backup stop thread:
//! real-time, it would keep a CPU from the killed tasks that must run to
//! die on a two-core host. A snapshot it has not started by the time the
//! stop needs it is not waited for, one it is taking for at most 1 ms in
//! all: then the stop reads every mark itself. What it prepared for the
//! kill is taken only if it is there when the intent is durable. A request whose stop is over
//! already is skipped.
use std::{path::PathBuf, sync::mpsc, time::Instant};

use serde_json::Value;

use super::{caller::Caller, State};
use crate::{
    error::Result,
    kernel::{members::MemberMaps, priority},
    stop::{
        marks::{Pending, Reply},
        StopOrder,
    },
};

/// A request: the targets (the stopped one's and those nested in it).
struct Request {
    ids: Vec<u64>,
    /// The cgroup2 mount, and the stopped target's cgroup path and id.
    mount: PathBuf,
    path: PathBuf,
    id: u64,
    /// The targets' escape count, read before the request (see
    /// `stop::prepared::Prepared::escapes_before`).
    escapes_before: u64,
    /// Where the answers go.
    reply: Reply,
}

/// The thread's queue.
pub struct MarkReader {
    tx: mpsc::Sender<Request>,
}

impl MarkReader {
    /// Starts the thread on a second handle of `maps`; None without the
    /// kernel's mark counters or when the thread cannot start (every stop
    /// then reads every mark itself).
    pub fn start(maps: &MemberMaps) -> Option<Self> {
        let reader = maps.reader()?;
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new().name("kp-stop-marks".into()).spawn(move || {
            if !priority::raise_nice_for_stop(0) {
                tracing::debug!("stop: the marks thread stays at the agent's priority (nice refused)");
            }
            for r in rx {
                // The kill's preparation real-time, below the stop thread
                // (SCHED_FIFO 1 against its 2): it must be ready before the
                // intent's fdatasync returns, and under a flood of clients an
                // ordinary thread was not (the stop then made it itself).
                // The stop thread made the same calls real-time before.
                let raised = priority::fifo(0, 1).is_ok();
                let reply = r.reply.prepare((&r.mount, &r.path, r.id), r.escapes_before);
                if raised {
                    priority::normal(0, priority::STOP_NICE);
                }
                if let Some(reply) = reply {
                    reply.taken(&reader, &r.ids);
                }
            }
        });
        match started {
            Ok(_) => Some(Self { tx }),
            Err(e) => {
                tracing::warn!("stop: the marks thread did not start, each stop reads every mark itself: {e}");
                None
            }
        }
    }

    fn request(&self, ids: Vec<u64>, mount: PathBuf, path: PathBuf, id: u64, escapes_before: u64) -> Option<Pending> {
        let (reply, pending) = Pending::channel();
        self.tx.send(Request { ids, mount, path, id, escapes_before, reply }).ok()?;
        Some(pending)
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
    /// ready, then the marks of the target and of the targets nested in it
    /// read, on the marks thread, for the stop about to run (before its
    /// intent is journaled); None when unknown or unavailable.
    fn read_marks_early(&self, name: &str) -> Option<Pending> {
        let t = self.registry.targets.get(name)?;
        let ids = self.nested_ids(t);
        // Before the listing: a listed process moved out after it counts
        // as escaped during the halt (`stop::prepared`).
        let escapes_before = self.enforcer.maps.members.as_ref().map_or(0, |m| ids.iter().map(|id| m.escapes(*id)).sum());
        self.stop_marks.as_ref()?.request(ids, self.cgroup_mount.clone(), t.cgroup.clone(), t.cgroup_id, escapes_before)
    }
}
