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
//!   need the CPU: the stop's thread is real-time (SCHED_FIFO 2, else nice
//!   -20; see `kernel::priority::raise_for_stop`), and when a stop
//!   announces itself it raises the thread holding the lock the same way
//!   (priority inheritance by hand: a std mutex has none), so readers
//!   flooding the agent, or a fork bomb on the host, do not stretch the
//!   wait; the holder goes back to the ordinary class and the agent's own
//!   nice value when it lets go;
//! - `journal` reads the file without the lock ([`Unlocked`]): records are
//!   appended with one write(2), and only those up to the head the agent
//!   published after their fdatasync are returned, so a reader never sees
//!   a record that is not durable, nor half of one.
use std::{
    sync::{
        atomic::{AtomicI32, Ordering},
        Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::Instant,
};

use serde_json::{json, Value};

use super::{anchor::SharedHead, State};
use crate::{client::protocol::Command, error::Result, journal, kernel::priority};

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

/// The agent's own nice value (set by [`Unlocked::of`] at start; until
/// then `i32::MIN`: a background task that locks first leaves its thread's
/// priority as it is).
static BASE_NICE: AtomicI32 = AtomicI32::new(i32::MIN);

/// The nice value of a thread serving a read-only command. Measured
/// (`stop_flood` bench, and a bare pwrite+fdatasync loop beside 8 CPU-bound
/// readers: 0.46 ms alone, 6-9 ms beside them): a stop's durable intent
/// waits on the kernel's I/O completion work (kworkers, jbd2, nice 0), and
/// readers at the agent's nice -10 starved it. Readers run below it; one
/// holding the state lock is still raised by a stop that waits for it.
const READER_NICE: i32 = 5;

thread_local! {
    /// Whether this thread serves a read-only command now (see [`Reader`]).
    static READING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this is the stop thread (raised for good; see [`raise_to_stop_priority`]).
    static ON_STOP_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Puts the calling thread back in the ordinary class at its own nice
/// value: the agent's, or [`READER_NICE`] while it serves a read-only
/// command (a stop may have made it real-time while it held the lock).
fn to_base() {
    let base = BASE_NICE.load(Ordering::Relaxed);
    if READING.with(std::cell::Cell::get) {
        priority::normal(tid(), READER_NICE);
    } else if base != i32::MIN {
        priority::normal(tid(), base);
    }
}

/// The calling thread serves a read-only command until dropped: it runs
/// at [`READER_NICE`].
pub(super) struct Reader;

impl Reader {
    pub(super) fn enter() -> Self {
        READING.with(|c| c.set(true));
        priority::normal(tid(), READER_NICE);
        Self
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        READING.with(|c| c.set(false));
        to_base();
    }
}

/// The thread id of the command (not a stop) holding the state lock, or 0.
static HOLDER: AtomicI32 = AtomicI32::new(0);

fn tid() -> i32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() }
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
        if self.stop && ON_STOP_THREAD.with(std::cell::Cell::get) {
            // The stop thread stays at the stop's priority between stops
            // (see `stop_thread`): it is the agent's, and only stops run on it.
            return;
        }
        HOLDER.store(0, Ordering::SeqCst);
        // Back to the agent's own priority if a stop raised this thread
        // (or this is the stop's thread). Unconditionally: a stop may read
        // HOLDER just before this thread clears it and raise it just
        // after, so a check here could miss the raise.
        to_base();
    }
}

thread_local! {
    /// When this thread's stop got the state lock (see [`stop_timings`]).
    static LOCKED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// When this thread's stop was handed to the stop threads (see [`picked_up`]).
    static QUEUED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// When this thread picked its stop up (see [`picked_up`]).
    static PICKED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// When this thread's stop had passed the caller checks (see [`checked`]).
    static CHECKED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// This thread's run delay when it picked its stop up (see [`run_delay_us`]).
    static DELAY_AT_PICKUP: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Stops queued or running on the stop thread when this one was queued.
    static QUEUED_AHEAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Records that the stop thread picked a stop up now; it was handed to the
/// stop threads at `queued_at`, when `ahead` stops were queued or running.
pub(super) fn picked_up(ahead: usize, queued_at: Instant) {
    QUEUED_AHEAD.with(|c| c.set(ahead));
    QUEUED_AT.with(|c| c.set(Some(queued_at)));
    PICKED_AT.with(|c| c.set(Some(Instant::now())));
    DELAY_AT_PICKUP.with(|c| c.set(run_delay_ns().unwrap_or(0)));
}

/// Stops queued or running on the stop thread when this thread's stop was
/// queued (0 off the stop thread): what the stop waited behind.
pub(super) fn queued_ahead() -> usize {
    QUEUED_AHEAD.with(std::cell::Cell::get)
}

/// Records that the stop's caller checks (authorization, confinement) are done.
pub(super) fn checked() {
    CHECKED_AT.with(|c| c.set(Some(Instant::now())));
}

/// The calling thread's total time runnable but not running, in ns
/// (`/proc/thread-self/schedstat`, second field; needs schedstats, which
/// every kernel since 4.x with CONFIG_SCHED_INFO has).
fn run_delay_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// How long the stop thread waited for a CPU since it picked its stop up,
/// in microseconds (0 when not measured): the share of a stop's time that
/// is the machine's load, not the agent's work.
pub(super) fn run_delay_us() -> u64 {
    let at = DELAY_AT_PICKUP.with(std::cell::Cell::get);
    run_delay_ns().map_or(0, |now| now.saturating_sub(at) / 1000)
}

/// Where a stop's wait went, from its receipt, in microseconds (0 when not
/// measured).
pub(super) struct StopTimings {
    /// Handed to the stop threads (decoded, confinement checked before queueing).
    pub queued_us: u64,
    /// Picked up by a stop thread.
    pub picked_up_us: u64,
    /// State lock held.
    pub lock_held_us: u64,
    /// Caller checked (authorization, confinement under the lock).
    pub checked_us: u64,
}

/// [`StopTimings`] of this thread's stop received at `received`.
pub(super) fn stop_timings(received: Instant) -> StopTimings {
    let since = |t: Option<Instant>| t.map_or(0, |t| t.saturating_duration_since(received).as_micros() as u64);
    StopTimings {
        queued_us: since(QUEUED_AT.with(std::cell::Cell::get)),
        picked_up_us: since(PICKED_AT.with(std::cell::Cell::get)),
        lock_held_us: since(LOCKED_AT.with(std::cell::Cell::get)),
        checked_us: since(CHECKED_AT.with(std::cell::Cell::get)),
    }
}

/// Raises the calling thread to the stop's priority (the stop thread, once).
pub(super) fn raise_to_stop_priority() {
    ON_STOP_THREAD.with(|c| c.set(true));
    priority::raise_stop_thread();
}

/// Raises the calling thread, the backup stop thread, to nice -20 (an
/// ordinary class on purpose: see `stop_thread`).
pub(super) fn raise_to_backup_priority() {
    ON_STOP_THREAD.with(|c| c.set(true));
    priority::raise_backup_stop_thread();
}

/// Takes the state lock for `cmd`: a stop goes first (and at a raised
/// priority); anything else waits while a stop is waiting.
pub(super) fn lock<'a>(state: &'a Mutex<State>, cmd: &Command) -> Held<'a> {
    if matches!(cmd, Command::Stop { .. }) {
        // The stop thread is raised already; a stop served elsewhere (no
        // stop thread) is raised here and put back when it lets go.
        if !ON_STOP_THREAD.with(std::cell::Cell::get) {
            priority::raise_for_stop(0);
        }
        *stops() += 1;
        let announced = Announced;
        let holder = HOLDER.load(Ordering::SeqCst);
        if holder != 0 {
            // Real-time only when this stop runs real-time: a stop on the
            // backup thread runs because real-time threads are starved,
            // and a real-time holder would be starved with them.
            if priority::calling_thread_is_realtime() {
                priority::raise_for_stop(holder);
            } else {
                priority::raise_nice_for_stop(holder);
            }
        }
        let guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        LOCKED_AT.with(|c| c.set(Some(Instant::now())));
        drop(announced);
        return Held { guard, stop: true };
    }
    background(state)
}

/// Takes the state lock for anything that is not a stop: a command, or a
/// background task (link walk and journal top-up, raise and tripwire
/// watches, lease sync, samplers). It waits while a stop is announced, and
/// a stop that announces itself while it holds the lock raises it.
pub(super) fn background(state: &Mutex<State>) -> Held<'_> {
    // A stop that raised this pool thread just after its last command let
    // go (it read HOLDER first) left it at -20: back to base first.
    to_base();
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
    /// Where names are resolved (`adopt --unit/--container/--pod`, see
    /// `named`): the cgroup2 mount and killpath's own parent, skipped.
    pub(super) cgroup_mount: std::path::PathBuf,
    pub(super) cgroup_parent: std::path::PathBuf,
}

impl Unlocked {
    pub(super) fn of(s: &State) -> Self {
        BASE_NICE.store(own_nice(), Ordering::Relaxed);
        Self {
            journal: s.journal.path().to_owned(),
            head: s.journal_head.clone(),
            cgroup_mount: s.cgroup_mount.clone(),
            cgroup_parent: s.config.cgroup_parent.clone(),
        }
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
