//! The `kp-stop-marks` thread: reads a stopped target's marks while the
//! stop writes its intent to disk, so that the check after the cgroup
//! empties does not read every mark on the host (see `stop::marks`).
//!
//! It runs in the ordinary class at nice -20, as the backup stop thread:
//! real-time, it would keep a CPU from the killed tasks that must run to
//! die on a two-core host. A snapshot it has not started by the time the
//! stop needs it is not waited for, one it is taking for at most 1 ms:
//! then the stop reads every mark itself. A request whose stop is over
//! already is skipped.
use std::{sync::mpsc, time::Instant};

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

/// A request: the targets, and where the snapshot goes.
type Request = (Vec<u64>, Reply);

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
            for (ids, reply) in rx {
                reply.take(&reader, &ids);
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

    fn request(&self, ids: Vec<u64>) -> Option<Pending> {
        let (reply, pending) = Pending::channel();
        self.tx.send((ids, reply)).ok()?;
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

    /// Has the marks of target `name` and of the targets nested in it read
    /// on the marks thread, for the stop about to run (before its intent is
    /// journaled); None when unknown or unavailable.
    fn read_marks_early(&self, name: &str) -> Option<Pending> {
        let t = self.registry.targets.get(name)?;
        self.stop_marks.as_ref()?.request(self.nested_ids(t))
    }
}
