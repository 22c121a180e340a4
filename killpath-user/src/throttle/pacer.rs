//! The pacer: the thread that resumes tasks a pace ceiling paused. The
//! kernel's `sys_exit` throttle sends SIGSTOP to a task whose call crossed
//! its bucket and posts a `ThrottleEvent` (when the bucket is full again) on
//! `KP_THROTTLE_EVENTS`; this thread waits on that ring buffer with ppoll
//! and sends SIGCONT through a pidfd (no pid-reuse race) on time.
use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use killpath_common::ThrottleEvent;
use tracing::warn;

use crate::kernel::cgroup::Cgroup;

/// Messages from the agent to the pacer thread.
pub enum PacerMsg {
    /// Resume now every task paused for this target (ceiling changed or lifted).
    ResumeTarget(u64),
}

/// Handle on the pacer thread.
pub struct Pacer {
    tx: mpsc::Sender<PacerMsg>,
    /// Tasks resumed since the agent started.
    pub resumed: Arc<AtomicU64>,
    /// Tasks paused right now, by target.
    pub paused: Arc<std::sync::Mutex<HashMap<u64, usize>>>,
}

impl Pacer {
    /// Starts the pacer on the throttle ring buffer. Without one (it was
    /// already taken) the pacer only serves explicit resumes.
    pub fn start(rb: Option<RingBuf<MapData>>) -> Self {
        let (tx, rx) = mpsc::channel();
        let resumed = Arc::new(AtomicU64::new(0));
        let paused = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (r, p) = (resumed.clone(), paused.clone());
        let spawned = std::thread::Builder::new().name("kp-pacer".into()).spawn(move || pacer_loop(rb, rx, r, p));
        if let Err(e) = spawned {
            warn!("cannot start the pacer thread: paced tasks will not be resumed: {e}");
        }
        Self { tx, resumed, paused }
    }

    pub fn resume_target(&self, cgroup_id: u64) {
        let _ = self.tx.send(PacerMsg::ResumeTarget(cgroup_id));
    }
}

/// A paused task: resumed through its pidfd (taken when the pause was
/// reported), so a recycled pid can never receive the SIGCONT.
struct Paused {
    cgroup_id: u64,
    resume_at_ns: u64,
    pidfd: OwnedFd,
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: fd is a fresh, valid descriptor.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_cont(fd: &OwnedFd) -> bool {
    // SAFETY: valid pidfd, no siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGCONT, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

fn pacer_loop(
    mut rb: Option<RingBuf<MapData>>,
    rx: mpsc::Receiver<PacerMsg>,
    resumed: Arc<AtomicU64>,
    paused_count: Arc<std::sync::Mutex<HashMap<u64, usize>>>,
) {
    let mut paused: HashMap<u32, Paused> = HashMap::new();
    loop {
        if let Some(rb) = rb.as_mut() {
            while let Some(item) = rb.next() {
                if item.len() < std::mem::size_of::<ThrottleEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a ThrottleEvent; read unaligned.
                let ev: ThrottleEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                match paused.get_mut(&ev.tgid) {
                    // Several threads of one process crossed the ceiling:
                    // the latest resume time wins.
                    Some(p) => p.resume_at_ns = p.resume_at_ns.max(ev.resume_at_ns),
                    None => {
                        if let Some(pidfd) = pidfd_open(ev.tgid) {
                            paused.insert(ev.tgid, Paused { cgroup_id: ev.cgroup_id, resume_at_ns: ev.resume_at_ns, pidfd });
                        }
                    }
                }
            }
        }
        while let Ok(msg) = rx.try_recv() {
            match msg {
                PacerMsg::ResumeTarget(id) => {
                    for p in paused.values_mut().filter(|p| p.cgroup_id == id) {
                        p.resume_at_ns = 0;
                    }
                }
            }
        }
        let now = monotonic_ns();
        let due: Vec<u32> = paused.iter().filter(|(_, p)| p.resume_at_ns <= now).map(|(k, _)| *k).collect();
        for tgid in due {
            if let Some(p) = paused.remove(&tgid) {
                if pidfd_cont(&p.pidfd) {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Ok(mut c) = paused_count.lock() {
            c.clear();
            for p in paused.values() {
                *c.entry(p.cgroup_id).or_default() += 1;
            }
        }
        // Sleep until the next resume is due or a new pause is reported;
        // while tasks are paused, at most 5 ms (an agent message may
        // resume them early). With none paused a message has nothing to
        // act on, so an idle agent wakes once a second, not 200 times.
        let next = paused.values().map(|p| p.resume_at_ns).min().map_or(1_000_000_000, |t| t.saturating_sub(monotonic_ns()).min(5_000_000));
        let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(next));
        match rb.as_ref() {
            Some(rb) => {
                // SAFETY: the ring buffer owns the fd and outlives this borrow.
                let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(rb.as_raw_fd()) };
                let mut fds = [nix::poll::PollFd::new(bfd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::ppoll(&mut fds, Some(ts), None);
            }
            None => std::thread::sleep(Duration::from_nanos(next)),
        }
    }
}

/// Sends SIGCONT to every stopped task of a cgroup tree: tasks paused
/// while the agent was down, or whose pause event was lost.
pub fn resume_stopped(cgroup: &std::path::Path) -> usize {
    let mut n = 0;
    for pid in Cgroup::new(cgroup).procs_recursive() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 3, after the parenthesised comm (which may contain spaces).
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("T") && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT).is_ok() {
            n += 1;
        }
    }
    n
}
