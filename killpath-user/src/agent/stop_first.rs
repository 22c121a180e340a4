//! A stop never waits behind other commands.
//!
//! Every command runs under the one state mutex (commands apply in journal
//! order), so a flood of `status` or `journal` requests could keep a stop
//! waiting for the lock: a std mutex is not fair, and each reader holds it
//! for the length of its answer. Three rules:
//! - a stop announces itself before it takes the lock ([`lock`]); any other
//!   command waits while a stop is announced, and one that took the lock
//!   anyway (it was already past the gate) gives it back at once: a stop
//!   waits at most for the one command already running;
//! - on a busy machine the command holding the lock, and the stop, also
//!   need the CPU: the stop's thread runs at nice -20 until it is done, and
//!   when it announces itself it raises the thread holding the lock to
//!   -20 as well (priority inheritance by hand: a std mutex has none), so
//!   readers flooding the agent, or anything else on the host, do not
//!   stretch the wait; the holder goes back to the agent's own nice value
//!   when it lets go;
//! - `journal` reads the file without the lock ([`Unlocked`]): records are
//!   appended with one write(2), and only those up to the head the agent
//!   published after their fdatasync are returned, so a reader never sees
//!   a record that is not durable, nor half of one.
use std::sync::{
    atomic::{AtomicI32, Ordering},
    Condvar, Mutex, MutexGuard, PoisonError,
};

use serde_json::{json, Value};

use super::{anchor::SharedHead, State};
use crate::{client::protocol::Command, error::Result, journal};

/// How many stops are waiting for the state lock.
struct Gate {
    stops: Mutex<usize>,
    cv: Condvar,
}

static GATE: Gate = Gate { stops: Mutex::new(0), cv: Condvar::new() };

fn stops() -> MutexGuard<'static, usize> {
    GATE.stops.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stop's place ahead of everything else, until it holds the state lock.
struct Announced;

impl Drop for Announced {
    fn drop(&mut self) {
        let mut n = stops();
        *n = n.saturating_sub(1);
        if *n == 0 {
            GATE.cv.notify_all();
        }
    }
}

/// The nice value of a stop's thread, and of the thread it waits for.
const STOP_NICE: i32 = -20;

/// The agent's own nice value (set by [`Unlocked::of`] at start).
static BASE_NICE: AtomicI32 = AtomicI32::new(0);

/// The thread id of the command (not a stop) holding the state lock, or 0.
static HOLDER: AtomicI32 = AtomicI32::new(0);

fn tid() -> i32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() }
}

/// Sets thread `tid`'s nice value; a failure (no CAP_SYS_NICE) only costs
/// the boost.
fn set_nice(tid: i32, nice: i32) {
    // SAFETY: setpriority(2) on a thread id; no memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
}

fn own_nice() -> i32 {
    // SAFETY: getpriority(2) on the calling thread; no memory is passed.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The state lock, held by one command. Derefs to the state.
pub(super) struct Held<'a> {
    guard: MutexGuard<'a, State>,
    stop: bool,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.stop {
            HOLDER.store(0, Ordering::SeqCst);
        }
        // Back to the agent's own priority if a stop raised this thread
        // (or this is the stop's thread). Unconditionally: a stop may read
        // HOLDER just before this thread clears it and raise it just
        // after, so a check here could miss the raise.
        set_nice(tid(), BASE_NICE.load(Ordering::Relaxed));
    }
}

/// Takes the state lock for `cmd`: a stop goes first (and at a raised
/// priority); anything else waits while a stop is waiting.
pub(super) fn lock<'a>(state: &'a Mutex<State>, cmd: &Command) -> Held<'a> {
    if matches!(cmd, Command::Stop { .. }) {
        set_nice(tid(), STOP_NICE);
        *stops() += 1;
        let announced = Announced;
        let holder = HOLDER.load(Ordering::SeqCst);
        if holder != 0 {
            set_nice(holder, STOP_NICE);
        }
        let guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        drop(announced);
        return Held { guard, stop: true };
    }
    // A stop that raised this pool thread just after its last command let
    // go (it read HOLDER first) left it at -20: back to base first.
    set_nice(tid(), BASE_NICE.load(Ordering::Relaxed));
    loop {
        drop(GATE.cv.wait_while(stops(), |n| *n > 0).unwrap_or_else(PoisonError::into_inner));
        let guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        HOLDER.store(tid(), Ordering::SeqCst);
        if *stops() == 0 {
            return Held { guard, stop: false };
        }
        // A stop announced itself while we waited for the lock: let it in.
        drop(Held { guard, stop: false });
    }
}

/// What a command that needs no state lock needs instead.
#[derive(Clone)]
pub(super) struct Unlocked {
    pub(super) journal: std::path::PathBuf,
    pub(super) head: SharedHead,
}

impl Unlocked {
    pub(super) fn of(s: &State) -> Self {
        BASE_NICE.store(own_nice(), Ordering::Relaxed);
        Self { journal: s.journal.path().to_owned(), head: s.journal_head.clone() }
    }

    /// Serves `cmd` without the state lock, if it can be (None: it needs it).
    pub(super) fn serve(&self, cmd: &Command) -> Option<Result<Value>> {
        match cmd {
            // A read that fails here may have raced an append (zeros read
            // at the old end, then the new lines behind them: `after-end`).
            // Answered under the lock then, where no append runs, so a
            // real problem of the file is still reported.
            Command::Journal { after } => self.journal(*after).ok().map(Ok),
            _ => None,
        }
    }

    /// The journal's records after `after`, up to the published head: the
    /// head is read first, and it moves only after a record's fdatasync.
    fn journal(&self, after: u64) -> Result<Value> {
        let head = self.head.lock().unwrap_or_else(PoisonError::into_inner).seq;
        let mut records = journal::read_records(&self.journal, after)?;
        records.retain(|r| r.seq <= head);
        Ok(json!({"records": records}))
    }
}
