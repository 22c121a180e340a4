//! The pacer: the thread that holds a paced target for its debt and then
//! lets it go. The kernel's throttle hooks (`sys_exit`, io_uring
//! submission) charge every operation; when one crosses its bucket the
//! kernel sends the process SIGSTOP (the immediate effect) and posts a
//! `ThrottleEvent` on `KP_THROTTLE_EVENTS` saying when the bucket has room
//! again. This thread waits on that ring buffer with ppoll and then:
//!
//! 1. freezes the target's cgroup (`cgroup.freeze`, cgroup v2 freezer,
//!    Linux 5.2). SIGSTOP alone is not enough: any task of the target can
//!    send SIGCONT to a sibling, and a loop doing so ran a paced workload at
//!    several hundred times its ceiling. A frozen task is not resumed by
//!    SIGCONT, the freeze covers every process of the target (the bucket
//!    is per target, so the whole target owes the debt) including
//!    io_uring SQPOLL and io-wq threads, and only a writer of
//!    `cgroup.freeze` (root: the file is root's) can thaw it;
//! 2. holds it until the debt is paid: until the bucket has half a burst of
//!    room again ([`pace::resume_at`], so that the pacer's own lateness is
//!    absorbed rather than lost), read from the kernel's bucket when the
//!    event comes and again when that deadline comes, since tasks that ran
//!    between the SIGSTOP and the freeze were charged too;
//! 3. thaws it (only if the pacer froze it) and sends SIGCONT through a
//!    pidfd (no pid-reuse race) to the processes it saw stopped.
//!
//! It never thaws a target the agent (or the no-agent `stop`) froze for
//! another reason: the target's level in `KP_TARGETS` is read from the
//! kernel right before every thaw, and a target at `stopped` is left
//! alone; a cgroup already frozen when the pacer came is not its to thaw.
//! While it holds a target it watches `cgroup.events` (kernfs wakes a
//! poll on it with POLLPRI when `frozen` changes, so a thaw wakes the
//! pacer at once) and re-reads `cgroup.freeze` at least every 5 ms: if
//! something wrote 0 (root, where no BPF LSM refuses the write), it freezes
//! again and reports it, for the agent to journal.
use std::{
    collections::HashMap,
    io::{Read, Seek},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, RingBuf};
use killpath_common::{level, maps, pace, throttle as tclass, Bucket, TargetState, ThrottleEvent, ThrottleKey};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    // The clock of the kernel pause events (`bpf_ktime_get_ns`).
    kernel::{cgroup::Cgroup, clock::monotonic_ns, pins::map_pin},
};

/// Messages from the agent to the pacer thread.
pub enum PacerMsg {
    /// The ceiling changed or was lifted: let this target go now (it is
    /// paused again at once if still over a new ceiling).
    ResumeTarget(u64),
}

/// What the pacer tells the agent, to journal and alert.
#[derive(Clone, Debug)]
pub enum PacerReport {
    /// `cgroup.freeze` of a target the pacer was holding read 0: something
    /// thawed it. The pacer froze it again.
    ThawUndone { cgroup_id: u64, times: u64 },
    /// Freezing failed: the target is held by SIGSTOP alone, which its own
    /// tasks can undo with SIGCONT.
    FreezeFailed { cgroup_id: u64, error: String },
}

/// What `status` shows of the pacer, per target.
#[derive(Clone, Debug, Default)]
pub struct PacerView {
    /// Processes seen stopped by the kernel and not resumed yet.
    pub tasks_paused: usize,
    /// Whether the pacer holds the target frozen right now.
    pub frozen: bool,
    /// Times the pacer froze the target (since the agent started).
    pub freezes: u64,
    /// Times something else thawed it while the pacer held it (and the
    /// pacer froze it again).
    pub thaws_undone: u64,
    /// Paused processes the pacer did not resume because, when it came,
    /// their number named a live process outside the target (moved out,
    /// or a reused number).
    pub not_resumed: u64,
}

/// The pacer's own handles on two pinned maps: the buckets (the debt) and
/// the targets (their level), read from its thread without the agent's
/// state lock.
pub struct PacerMaps {
    targets: BpfHashMap<MapData, u64, TargetState>,
    buckets: BpfHashMap<MapData, ThrottleKey, Bucket>,
}

fn open_hash<K: aya::Pod, V: aya::Pod>(gen: &Path, name: &str) -> Result<BpfHashMap<MapData, K, V>> {
    let p = map_pin(gen, name);
    let data = MapData::from_pin(&p).map_err(Error::map(format!("opening pinned map {}", p.display())))?;
    BpfHashMap::try_from(Map::HashMap(data)).map_err(Error::map(name.to_owned()))
}

impl PacerMaps {
    pub fn open(gen: &Path) -> Result<Self> {
        Ok(Self { targets: open_hash(gen, maps::TARGETS)?, buckets: open_hash(gen, maps::THROTTLE)? })
    }

    /// The target's level in the kernel (None: not a target any more).
    fn level(&self, id: u64) -> Option<u32> {
        self.targets.get(&id, 0).ok().map(|s| s.level)
    }

    /// When every pace-mode syscall bucket of the target has half a burst
    /// of room again (the latest [`pace::resume_at`]); None when it has
    /// none left.
    fn debt_until(&self, id: u64) -> Option<u64> {
        (0..tclass::SYSCALL_CLASSES)
            .filter_map(|class| self.buckets.get(&ThrottleKey { cgroup_id: id, class, _pad: 0 }, 0).ok())
            .filter(|b| b.mode == tclass::MODE_PACE)
            .map(|b| pace::resume_at(b.tat_ns, b.tau_ns))
            .max()
    }
}

/// Handle on the pacer thread.
pub struct Pacer {
    tx: mpsc::Sender<PacerMsg>,
    /// Processes resumed since the agent started.
    pub resumed: Arc<AtomicU64>,
    /// Per target, what the pacer is doing.
    pub view: Arc<Mutex<HashMap<u64, PacerView>>>,
    /// Reports for the agent's journal (drained by its periodic work).
    pub reports: mpsc::Receiver<PacerReport>,
}

impl Pacer {
    /// Starts the pacer on the throttle ring buffer. Without one (it was
    /// already taken) the pacer only serves explicit resumes. Without the
    /// maps it holds each target until its first event's time only.
    pub fn start(rb: Option<RingBuf<MapData>>, maps: Option<PacerMaps>, cgroup_mount: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel();
        let (report_tx, reports) = mpsc::channel();
        let resumed = Arc::new(AtomicU64::new(0));
        let view = Arc::new(Mutex::new(HashMap::new()));
        let mut ctx = Loop {
            rb,
            rx,
            maps,
            mount: cgroup_mount,
            resumed: resumed.clone(),
            view: view.clone(),
            reports: report_tx,
            holds: HashMap::new(),
            freeze_failed: Default::default(),
        };
        let spawned = std::thread::Builder::new().name("kp-pacer".into()).spawn(move || ctx.run());
        if let Err(e) = spawned {
            warn!("cannot start the pacer thread: paced tasks will not be resumed: {e}");
        }
        Self { tx, resumed, view, reports }
    }

    pub fn resume_target(&self, cgroup_id: u64) {
        let _ = self.tx.send(PacerMsg::ResumeTarget(cgroup_id));
    }
}

/// A target the pacer holds.
struct Hold {
    /// The target's cgroup, opened by id (None: it could not be opened,
    /// and the target is held by SIGSTOP alone).
    cg: Option<Cgroup>,
    /// When to look again at the debt (CLOCK_MONOTONIC ns).
    until_ns: u64,
    /// Whether the pacer froze the cgroup (and so may thaw it).
    owned: bool,
    /// Processes the kernel stopped, resumed through their pidfds.
    stopped: HashMap<u32, OwnedFd>,
    /// The cgroup's cgroup.events, polled for a thaw behind the pacer.
    events: Option<std::fs::File>,
}

struct Loop {
    rb: Option<RingBuf<MapData>>,
    rx: mpsc::Receiver<PacerMsg>,
    maps: Option<PacerMaps>,
    mount: PathBuf,
    resumed: Arc<AtomicU64>,
    view: Arc<Mutex<HashMap<u64, PacerView>>>,
    reports: mpsc::Sender<PacerReport>,
    holds: HashMap<u64, Hold>,
    /// Targets whose failed freeze was reported already.
    freeze_failed: std::collections::HashSet<u64>,
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: fd is a fresh, valid descriptor.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the pacer found under the number of a pause event.
enum Paused {
    /// The process, still in the target's cgroup subtree: a pidfd on it.
    InTarget(OwnedFd),
    /// No such process any more, or it has exited.
    Gone,
    /// A live process that is not in the target: the paused one moved out,
    /// or exited and its number now names another process.
    Elsewhere,
}

/// The process a pause event names by number (`tgid`), as it is now. The
/// event may be old: the process may have exited since, and a root
/// workload can hand its number to a bystander (`kernel.ns_last_pid`) that
/// a SIGCONT would then resume, e.g. a process an operator stopped. The
/// pidfd names one process (its number can still pass to another once it
/// is reaped); the cgroup reads after it are of that process if it has not
/// exited by their end, hence the exit check last. Any of its threads
/// counts: the leader may have exited (a zombie leader reads its last
/// cgroup), and a threaded target may hold some threads only.
fn paused_process(mount: &std::path::Path, tgid: u32, id: u64) -> Paused {
    let Some(fd) = pidfd_open(tgid) else { return Paused::Gone };
    let within = |tid: u32| crate::kernel::cgroup::process_within_id(mount, tid as i32, id);
    // The leader first: the other threads are read only when it is not in
    // the target (a process may have thousands, and this runs on the
    // pacer's real-time thread).
    let inside = within(tgid) || crate::kernel::procfs::task_ids(tgid).is_some_and(|tids| tids.into_iter().any(|t| t != tgid && within(t)));
    if crate::kernel::members::exited(fd.as_fd()) {
        Paused::Gone
    } else if inside {
        Paused::InTarget(fd)
    } else {
        Paused::Elsewhere
    }
}

fn pidfd_cont(fd: &OwnedFd) -> bool {
    // SAFETY: valid pidfd, no siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGCONT, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

/// How often a held target's `cgroup.freeze` is re-read, and the longest
/// the pacer sleeps while it holds anything (a lift is acted on within it).
const HOLD_CHECK_NS: u64 = 5_000_000;

/// Makes the calling thread (the pacer) SCHED_FIFO at the lowest
/// real-time priority, else nice -20.
///
/// Every millisecond the pacer wakes late after a target's hold is due,
/// the target sits frozen with budget it may spend. Half a burst of room
/// ([`pace::resume_at`]) absorbs up to 50 ms of that, but on a loaded
/// host an ordinary thread woke up to 90 ms late (2 cores, load 20:
/// measured rates 0.81-0.93 of the ceiling). As SCHED_FIFO 1 it preempts
/// every ordinary task at once: the p99 lateness under 8 CPU hogs fell
/// from 37 ms (nice -20) to under 1 ms. It sleeps in ppoll between
/// events and does a few map reads and cgroup file writes per pause, and
/// RT throttling (sched_rt_runtime_us) bounds it anyway. SCHED_RESET_ON_FORK:
/// nothing it might spawn inherits the class.
fn raise_priority() {
    let Err(fifo) = crate::kernel::priority::fifo(0, 1) else {
        info!("pacer thread runs SCHED_FIFO 1: paced targets are resumed on time on a loaded host");
        return;
    };
    // SAFETY: plain syscall; tid 0 is the calling thread.
    let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } == 0;
    warn!(niced, "the pacer thread cannot be SCHED_FIFO ({fifo}): on a loaded host paced targets may be resumed late and run below their ceiling");
}

impl Loop {
    fn run(&mut self) {
        raise_priority();
        loop {
            self.drain_events();
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    PacerMsg::ResumeTarget(id) => {
                        if let Some(h) = self.holds.get_mut(&id) {
                            h.until_ns = 0;
                        }
                    }
                }
            }
            self.release_due();
            self.check_frozen();
            self.publish();
            self.sleep();
        }
    }

    fn view(&self, id: u64, f: impl FnOnce(&mut PacerView)) {
        if let Ok(mut v) = self.view.lock() {
            f(v.entry(id).or_default());
        }
    }

    fn drain_events(&mut self) {
        let mut events = Vec::new();
        if let Some(rb) = self.rb.as_mut() {
            while let Some(item) = rb.next() {
                if item.len() >= std::mem::size_of::<ThrottleEvent>() {
                    // SAFETY: the kernel wrote a ThrottleEvent; read unaligned.
                    events.push(unsafe { std::ptr::read_unaligned::<ThrottleEvent>(item.as_ptr().cast()) });
                }
            }
        }
        for ev in events {
            self.on_event(ev);
        }
    }

    fn on_event(&mut self, ev: ThrottleEvent) {
        let id = ev.cgroup_id;
        // How long to hold: the bucket as it is now, not the time in the
        // event. The event may be older than the bucket (posted under the
        // previous ceiling, which a `throttle` just replaced with a fresh
        // bucket: holding for the old debt would starve the new ceiling's
        // first burst), and the bucket also holds what tasks were charged
        // after the event. Without the maps, the event's time.
        let until = match &self.maps {
            Some(m) => {
                // Stop owns a stopped target (frozen, then killed).
                if m.level(id).is_some_and(|l| l >= level::STOPPED) {
                    return;
                }
                let Some(until) = m.debt_until(id) else {
                    // The ceiling was lifted after the kernel posted this:
                    // nothing to hold, resume the process now.
                    if let Some(fd) = self.paused_in_target(ev.tgid, id) {
                        if pidfd_cont(&fd) {
                            self.resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return;
                };
                until
            }
            None => ev.resume_at_ns,
        };
        debug!(
            cgroup_id = id,
            tgid = ev.tgid,
            class = ev.class,
            event_in_us = (ev.resume_at_ns as i64 - monotonic_ns() as i64) / 1000,
            hold_us = (until as i64 - monotonic_ns() as i64) / 1000,
            held = self.holds.contains_key(&id),
            "pacer: paused"
        );
        if !self.holds.contains_key(&id) {
            let hold = self.freeze(id);
            self.holds.insert(id, hold);
        }
        let seen = self.holds.get(&id).is_some_and(|h| h.stopped.contains_key(&ev.tgid));
        let fd = if seen { None } else { self.paused_in_target(ev.tgid, id) };
        if let Some(h) = self.holds.get_mut(&id) {
            h.until_ns = h.until_ns.max(until);
            if let Some(fd) = fd {
                h.stopped.insert(ev.tgid, fd);
            }
        }
    }

    /// A pidfd on the process pause event `tgid` names, if it is still the
    /// target's ([`paused_process`]). One that is not is left stopped, said
    /// in the log and counted in `status` (`paused_not_resumed`).
    fn paused_in_target(&self, tgid: u32, id: u64) -> Option<OwnedFd> {
        match paused_process(&self.mount, tgid, id) {
            Paused::InTarget(fd) => Some(fd),
            Paused::Gone => None,
            Paused::Elsewhere => {
                warn!(
                    cgroup_id = id,
                    tgid, "pacer: process {tgid} is no longer in the target it was paused in (moved out, or exited and its number reused): not resumed"
                );
                self.view(id, |v| v.not_resumed += 1);
                None
            }
        }
    }

    /// Freezes target `id` for its debt. A cgroup already frozen is left as
    /// it is and not thawed later (someone else froze it).
    fn freeze(&mut self, id: u64) -> Hold {
        let opened = Cgroup::from_id(&self.mount, id);
        let result = opened.as_ref().map_err(|e| e.to_string()).and_then(|cg| {
            if cg.freeze_requested().map_err(|e| e.to_string())? {
                return Ok(false);
            }
            cg.freeze(true).map_err(|e| e.to_string())?;
            Ok(true)
        });
        let owned = match result {
            Ok(owned) => owned,
            Err(error) => {
                warn!(cgroup_id = id, "cannot freeze a paced target, it is held by SIGSTOP alone: {error}");
                // Reported (journaled) once per target, not at every pause.
                if self.freeze_failed.insert(id) {
                    let _ = self.reports.send(PacerReport::FreezeFailed { cgroup_id: id, error });
                }
                false
            }
        };
        if owned {
            self.view(id, |v| v.freezes += 1);
        }
        let events = opened.as_ref().ok().filter(|_| owned).and_then(|cg| cg.events_file().ok());
        Hold { cg: opened.ok(), until_ns: 0, owned, stopped: HashMap::new(), events }
    }

    /// Lets go of every target whose debt is paid (or whose ceiling was
    /// lifted); extends the hold of one that still owes.
    fn release_due(&mut self) {
        let now = monotonic_ns();
        let due: Vec<u64> = self.holds.iter().filter(|(_, h)| h.until_ns <= now).map(|(id, _)| *id).collect();
        for id in due {
            let (lvl, debt) = match &self.maps {
                Some(m) => (m.level(id), m.debt_until(id)),
                None => (None, None),
            };
            if let Some(h) = self.holds.get_mut(&id) {
                // Charges made after the event (by tasks still running
                // until the freeze) are in the bucket: wait for them too.
                // A lift (`until_ns` 0 from ResumeTarget) installs fresh
                // buckets or none, so this never delays it.
                if let Some(t) = debt.filter(|t| *t > now + 1_000_000 && h.until_ns != 0) {
                    debug!(cgroup_id = id, extend_us = (t - now) / 1000, "pacer: debt grew after the pause, hold extended");
                    h.until_ns = t;
                    continue;
                }
            }
            let Some(h) = self.holds.remove(&id) else { continue };
            // How late the release is (wake-up latency) is what the half
            // burst of room (pace::resume_at) absorbs.
            debug!(cgroup_id = id, late_us = (h.until_ns != 0).then(|| now.saturating_sub(h.until_ns) / 1000), processes = h.stopped.len(), "pacer: released");
            if lvl.is_some_and(|l| l >= level::STOPPED) {
                // Stopped meanwhile: stop's freeze and kill own it now.
                continue;
            }
            if h.owned {
                if let Some(cg) = &h.cg {
                    // Read the level once more right before the write: a
                    // stop arms the kernel map before it freezes.
                    let stopped = self.maps.as_ref().and_then(|m| m.level(id)).is_some_and(|l| l >= level::STOPPED);
                    if !stopped {
                        if let Err(e) = cg.freeze(false) {
                            warn!(cgroup_id = id, "thawing a paced target: {e}");
                        }
                    }
                }
            }
            for fd in h.stopped.values() {
                if pidfd_cont(fd) {
                    self.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Re-freezes a held target that something thawed behind the pacer.
    fn check_frozen(&mut self) {
        let mut undone = Vec::new();
        for (id, h) in self.holds.iter_mut() {
            if let Some(f) = h.events.as_mut() {
                // Re-arm the POLLPRI notification: kernfs counts a wake-up
                // as seen once the file is read again from the start. A
                // cgroup removed since (stopped and deleted) fails the read
                // (ENODEV) and polls EPOLLERR|EPOLLPRI for ever (kernfs):
                // its fd is dropped, or this SCHED_FIFO loop would spin.
                let mut buf = String::new();
                if f.rewind().and_then(|()| f.read_to_string(&mut buf)).is_err() {
                    h.events = None;
                }
            }
            let Some(cg) = h.cg.as_ref().filter(|_| h.owned) else { continue };
            if cg.freeze_requested().is_ok_and(|f| !f) {
                match cg.freeze(true) {
                    Ok(()) => undone.push(*id),
                    Err(e) => warn!(cgroup_id = id, "re-freezing a paced target something thawed: {e}"),
                }
            }
        }
        for id in undone {
            let mut times = 0;
            self.view(id, |v| {
                v.thaws_undone += 1;
                times = v.thaws_undone;
            });
            info!(cgroup_id = id, "a paced target was thawed behind the pacer; frozen again");
            let _ = self.reports.send(PacerReport::ThawUndone { cgroup_id: id, times });
        }
    }

    fn publish(&self) {
        if let Ok(mut v) = self.view.lock() {
            for (id, view) in v.iter_mut() {
                let h = self.holds.get(id);
                view.tasks_paused = h.map_or(0, |h| h.stopped.len());
                view.frozen = h.is_some_and(|h| h.owned);
            }
            for (id, h) in &self.holds {
                let e = v.entry(*id).or_default();
                e.tasks_paused = h.stopped.len();
                e.frozen = h.owned;
            }
        }
    }

    /// Sleeps until the next hold is due or an event comes; while anything
    /// is held, at most [`HOLD_CHECK_NS`] (a lift is acted on, a thaw
    /// behind the pacer is seen). With nothing held a message has nothing
    /// to act on, so an idle agent wakes once a second.
    fn sleep(&self) {
        let next = self.holds.values().map(|h| h.until_ns).min().map_or(1_000_000_000, |t| t.saturating_sub(monotonic_ns()).min(HOLD_CHECK_NS));
        let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(next));
        let mut fds: Vec<nix::poll::PollFd> = Vec::new();
        if let Some(rb) = self.rb.as_ref() {
            // SAFETY: the ring buffer owns the fd and outlives this borrow.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(rb.as_raw_fd()) };
            fds.push(nix::poll::PollFd::new(bfd, nix::poll::PollFlags::POLLIN));
        }
        for f in self.holds.values().filter_map(|h| h.events.as_ref()) {
            fds.push(nix::poll::PollFd::new(f.as_fd(), nix::poll::PollFlags::POLLPRI));
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_nanos(next));
        } else {
            let _ = nix::poll::ppoll(&mut fds, Some(ts), None);
        }
    }
}

/// Sends SIGCONT to every stopped process of a cgroup tree, and to every
/// one with a SIGSTOP still pending: tasks paused while the agent was down,
/// or whose pause event was lost. A process the pacer froze before its
/// SIGSTOP was delivered sleeps in the freezer ('S') with the signal
/// pending, and would stop as soon as it is thawed; SIGCONT discards a
/// pending SIGSTOP when it is sent (prepare_signal), frozen or not, so
/// call this before thawing.
pub fn resume_stopped(cgroup: &std::path::Path) -> usize {
    const SIGSTOP_BIT: u64 = 1 << (libc::SIGSTOP - 1);
    let mut n = 0;
    for pid in Cgroup::new(cgroup).procs_recursive() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 3, after the parenthesised comm (which may contain spaces).
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let pending = status
            .lines()
            .filter_map(|l| l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:")))
            .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
            .any(|m| m & SIGSTOP_BIT != 0);
        if (state == Some("T") || pending) && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT).is_ok() {
            n += 1;
        }
    }
    n
}
