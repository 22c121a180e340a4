//! The stop's own thread, and the cap on other requests in flight.
//!
//! Every other command runs in tokio's shared blocking pool, which a flood
//! of `status` or `journal` requests (from a hostile target, say) fills: a
//! stop handed to that pool could wait for a thread, then share two cores
//! with hundreds of runnable readers. A stop is handed instead to one
//! thread started with the server, kept at the stop's priority, which
//! does nothing else; and the requests that are not a stop are capped
//! ([`InFlight`]): a few run at once, a bounded number wait (as async
//! tasks, holding no thread), and one more is answered `busy` at once.
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    mpsc, Arc,
};

use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::error;

use super::stop_first;
use crate::error::{Error, Result};

/// One request for the stop thread, and where its answer goes.
pub(super) struct Job {
    pub(super) run: Box<dyn FnOnce() -> Result<Value> + Send>,
    pub(super) answer: oneshot::Sender<Result<Value>>,
    /// Stops queued or running when this one was queued.
    pub(super) ahead: usize,
}

/// The stop thread's queue, and how many stops are in it or running.
#[derive(Clone)]
pub(super) struct StopThread(mpsc::Sender<Job>, Arc<AtomicUsize>);

impl StopThread {
    /// Starts the thread. Its jobs take the state lock through
    /// [`stop_first::lock`]; the thread stays at the stop's priority.
    pub(super) fn start() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let left = queued.clone();
        std::thread::Builder::new()
            .name("kp-stop".into())
            .spawn(move || {
                stop_first::raise_to_stop_priority();
                for job in rx {
                    stop_first::picked_up(job.ahead);
                    // A panicked stop must not take the thread (and every
                    // later stop) with it.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.run)).unwrap_or_else(|_| {
                        error!("stop handler panicked");
                        Err(Error::InvalidRequest("internal error in the stop; the agent is still running".into()))
                    });
                    left.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.answer.send(r);
                }
            })
            .map_err(Error::io("starting the stop thread"))?;
        Ok(Self(tx, queued))
    }

    /// Runs `run` on the stop thread and waits (asynchronously) for it.
    pub(super) async fn run(&self, run: Box<dyn FnOnce() -> Result<Value> + Send>) -> Result<Value> {
        let (answer, rx) = oneshot::channel();
        let ahead = self.1.fetch_add(1, Ordering::SeqCst);
        self.0.send(Job { run, answer, ahead }).map_err(|_| Error::InvalidRequest("the stop thread is gone".into()))?;
        rx.await.map_err(|_| Error::InvalidRequest("the stop thread dropped the request".into()))?
    }
}

/// Requests other than a stop that run at once (in the blocking pool). Two
/// cores: a few readers keep them busy, more only take CPU from a stop.
pub const RUNNING: usize = 4;
/// Requests other than a stop in flight (running or waiting) across every
/// connection; one more is answered `busy`.
pub const IN_FLIGHT: usize = 64;

/// The cap on requests in flight.
#[derive(Clone)]
pub(super) struct InFlight {
    running: Arc<Semaphore>,
    count: Arc<AtomicUsize>,
}

/// A request's place in flight; given back when dropped.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    _counted: Counted,
}

/// One request counted in flight (waiting or running) until dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InFlight {
    pub(super) fn new() -> Self {
        Self { running: Arc::new(Semaphore::new(RUNNING)), count: Arc::new(AtomicUsize::new(0)) }
    }

    /// A place for one request, or None when [`IN_FLIGHT`] are in flight
    /// (the caller answers `busy`).
    pub(super) async fn enter(&self) -> Option<Slot> {
        if self.count.fetch_add(1, Ordering::SeqCst) >= IN_FLIGHT {
            self.count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let counted = Counted(self.count.clone());
        let permit = self.running.clone().acquire_owned().await.ok()?;
        Some(Slot { _permit: permit, _counted: counted })
    }
}
