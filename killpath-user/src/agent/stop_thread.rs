//! The stop's own threads, and the cap on other requests in flight.
//!
//! Every other command runs in tokio's shared blocking pool, which a flood
//! of `status` or `journal` requests (from a hostile target, say) fills: a
//! stop handed to that pool could wait for a thread, then share two cores
//! with hundreds of runnable readers. A stop is handed instead to two
//! threads started with the server, which do nothing else:
//! - `kp-stop`, real-time (SCHED_FIFO 2, `kernel::priority`): it runs
//!   before every ordinary task, so a fork bomb of a thousand runnable
//!   tasks does not stretch the stop;
//! - `kp-stop-cfs`, ordinary at nice -20, the backup: it takes a stop that
//!   `kp-stop` has not taken within [`BACKUP_GRACE`]. A workload running
//!   as root can make itself real-time above `kp-stop` on every CPU, and
//!   then `kp-stop` never runs (measured: a FIFO 2 thread got no CPU in
//!   2 s beside a FIFO 99 loop), while an ordinary thread still gets the
//!   share the kernel keeps for ordinary tasks (RT throttling, or the fair
//!   server from Linux 6.12: 50 ms a second by default).
//!
//! Each stop is taken once, by whichever thread gets to it first. The
//! requests that are not a stop are capped ([`InFlight`]): a few run at
//! once, a bounded number wait (as async tasks, holding no thread), and
//! one more is answered `busy` at once.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::error;

use super::stop_first;
use crate::error::{Error, Result};

/// How long the backup thread leaves a stop to the real-time one.
pub(super) const BACKUP_GRACE: Duration = Duration::from_millis(2);

type Run = Box<dyn FnOnce() -> Result<Value> + Send>;

/// One request for the stop threads, and where its answer goes; taken
/// (run and answer) by the first thread to get to it.
pub(super) struct Job {
    work: Mutex<Option<(Run, oneshot::Sender<Result<Value>>)>>,
    /// Stops queued or running when this one was queued.
    ahead: usize,
    queued_at: Instant,
}

impl Job {
    fn take(&self) -> Option<(Run, oneshot::Sender<Result<Value>>)> {
        self.work.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The stop threads' queues, and how many stops are in them or running.
#[derive(Clone)]
pub(super) struct StopThread {
    queues: Vec<mpsc::Sender<Arc<Job>>>,
    queued: Arc<AtomicUsize>,
}

/// Which of the two threads.
#[derive(Clone, Copy)]
enum Role {
    RealTime,
    Backup,
}

impl StopThread {
    /// Starts both threads. Their jobs take the state lock through
    /// [`stop_first::lock`]; each stays at its priority.
    pub(super) fn start() -> Result<Self> {
        let queued = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::new();
        for (name, role) in [("kp-stop", Role::RealTime), ("kp-stop-cfs", Role::Backup)] {
            let (tx, rx) = mpsc::channel::<Arc<Job>>();
            let left = queued.clone();
            std::thread::Builder::new().name(name.into()).spawn(move || serve(role, &rx, &left)).map_err(Error::io("starting a stop thread"))?;
            queues.push(tx);
        }
        Ok(Self { queues, queued })
    }

    /// Runs `run` on a stop thread and waits (asynchronously) for it.
    pub(super) async fn run(&self, run: Run) -> Result<Value> {
        let (answer, rx) = oneshot::channel();
        let ahead = self.queued.fetch_add(1, Ordering::SeqCst);
        let job = Arc::new(Job { work: Mutex::new(Some((run, answer))), ahead, queued_at: Instant::now() });
        let sent = self.queues.iter().filter(|q| q.send(job.clone()).is_ok()).count();
        if sent == 0 {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::InvalidRequest("the stop threads are gone".into()));
        }
        rx.await.map_err(|_| Error::InvalidRequest("the stop thread dropped the request".into()))?
    }
}

/// One stop thread's loop.
fn serve(role: Role, rx: &mpsc::Receiver<Arc<Job>>, left: &AtomicUsize) {
    match role {
        Role::RealTime => stop_first::raise_to_stop_priority(),
        Role::Backup => stop_first::raise_to_backup_priority(),
    }
    for job in rx {
        if matches!(role, Role::Backup) {
            // The real-time thread takes it at once unless it cannot run.
            std::thread::sleep(BACKUP_GRACE.saturating_sub(job.queued_at.elapsed()));
        }
        let Some((run, answer)) = job.take() else { continue };
        stop_first::picked_up(job.ahead, job.queued_at);
        // A panicked stop must not take the thread (and every later stop)
        // with it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
            error!("stop handler panicked");
            Err(Error::InvalidRequest("internal error in the stop; the agent is still running".into()))
        });
        left.fetch_sub(1, Ordering::SeqCst);
        let _ = answer.send(r);
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
