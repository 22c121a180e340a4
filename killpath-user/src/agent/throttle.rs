//! Level 1 in the agent: apply and lift ceilings, resume paced tasks on
//! time, and measure the rate each bucket lets through.
use std::{
    collections::{HashMap, VecDeque},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use killpath_common::{level, ThrottleCounts, ThrottleEvent};
use serde_json::{json, Value};
use tracing::warn;

use super::{now_us, Done, State};
use crate::{
    error::{Error, Result},
    kernel::cgroup::Cgroup,
    target::level_name,
    throttle::tasks,
    throttle::{class_name, Ceilings},
};

/// How often bucket counts are sampled for the measured rates.
pub const RATE_SAMPLE: Duration = Duration::from_millis(500);
/// Window of the "measured rate" in status.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Counts of every bucket at one moment: (cgroup id, class, counts).
pub type CountSnapshot = (Instant, Vec<(u64, u32, ThrottleCounts)>);

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

/// Samples bucket counts every [`RATE_SAMPLE`].
pub async fn rate_sampler(state: Arc<std::sync::Mutex<State>>) {
    let mut tick = tokio::time::interval(RATE_SAMPLE);
    loop {
        tick.tick().await;
        state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample_throttle();
    }
}

impl State {
    /// Checks a throttle request against the target and this kernel, and
    /// returns the ceilings it results in (current ones merged with it).
    pub(super) fn plan_throttle(&self, name: &str, req: &Ceilings) -> Result<Ceilings> {
        let t = self.registry.get(name)?;
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "nothing left to throttle; restore it first" });
        }
        if req.is_empty() {
            req.validate()?;
        }
        let mut merged = t.throttle.clone();
        merged.merge(req);
        merged.validate()?;
        if merged.has_syscalls() {
            crate::throttle::syscall_class_table()?;
        }
        Ok(merged)
    }

    /// Applies ceilings: buckets (one map update per class), the sys_exit
    /// hook if this is the first syscall ceiling, the task limit.
    pub(super) fn throttle(&mut self, name: &str, ceilings: Ceilings, netdevs: &[String], received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        let buckets = ceilings.buckets()?;
        // Devices first: binding one can fail, and then nothing changes.
        let tc = self.bind_netdevs(name, t.cgroup_id, netdevs)?;
        self.enforcer.maps.set_throttle(t.cgroup_id, &buckets)?;
        let map_update_us = received.elapsed().as_micros() as u64;
        let hook = match self.enforcer.sync_syscall_hook() {
            Ok(h) => h,
            Err(e) => {
                // Leave the kernel as it was: the previous ceilings.
                let old = t.throttle.buckets().unwrap_or_default();
                let _ = self.enforcer.maps.set_throttle(t.cgroup_id, &old);
                return Err(e);
            }
        };
        let tasks = match ceilings.tasks {
            Some(n) => {
                let pids = tasks::locate(name, &t.cgroup)?;
                let moved = tasks::apply(&pids, &t.cgroup, Some(n))?;
                Some(json!({"limit": n, "mechanism": pids.describe(), "moved_tasks": moved}))
            }
            None => None,
        };
        // New ceilings apply from now: tasks paused under the old ones
        // resume and are paused again if still over.
        self.pacer.resume_target(t.cgroup_id);
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let from = t.level;
        let to = from.max(level::THROTTLE);
        let tt = self.registry.get_mut(name)?;
        tt.throttle = ceilings.clone();
        tt.level = to;
        tt.since_unix_us = now_us();
        self.enforcer.maps.set(t.cgroup_id, t.state(to))?;
        self.registry.save()?;
        Ok(Done {
            result: json!({
                "target": name,
                "level": level_name(to),
                "from": level_name(from),
                "ceilings": ceilings,
                "tasks": tasks,
                "netdevs": tc,
                "syscall_hook_attached": hook,
                "map_update_us": map_update_us,
                "time_to_effect_us": time_to_effect_us,
            }),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Lifts every ceiling of a target (restore below throttle, release).
    pub(super) fn unthrottle(&mut self, name: &str) -> Result<()> {
        let t = self.registry.get(name)?.clone();
        if t.throttle.is_empty() && self.enforcer.maps.throttle_classes(t.cgroup_id).is_empty() {
            return Ok(());
        }
        self.enforcer.maps.clear_throttle(t.cgroup_id)?;
        self.enforcer.sync_syscall_hook()?;
        if let Some(pids) = tasks::existing(name, &t.cgroup).filter(|_| t.throttle.tasks.is_some()) {
            tasks::apply(&pids, &t.cgroup, None)?;
            tasks::cleanup(&pids);
        }
        self.pacer.resume_target(t.cgroup_id);
        resume_stopped(&t.cgroup);
        self.registry.get_mut(name)?.throttle = Ceilings::default();
        Ok(())
    }

    /// Re-installs ceilings the kernel lost (a new build's maps) and
    /// resumes tasks paused while the agent was down. Called at start.
    pub(super) fn recover_throttle(&mut self) -> Result<Vec<Value>> {
        let mut changes = Vec::new();
        let list: Vec<(String, u64, std::path::PathBuf, Ceilings)> = self
            .registry
            .targets
            .values()
            .filter(|t| !t.throttle.is_empty())
            .map(|t| (t.name.clone(), t.cgroup_id, t.cgroup.clone(), t.throttle.clone()))
            .collect();
        for (name, id, cgroup, c) in list {
            let buckets = c.buckets()?;
            if self.enforcer.maps.throttle_classes(id).len() != buckets.len() {
                self.enforcer.maps.set_throttle(id, &buckets)?;
                changes.push(json!({"target": name, "change": "throttle buckets re-installed"}));
            }
            let n = resume_stopped(&cgroup);
            if n > 0 {
                changes.push(json!({"target": name, "change": format!("{n} paused task(s) resumed")}));
            }
        }
        self.enforcer.sync_syscall_hook()?;
        Ok(changes)
    }

    /// Periodic work: samples bucket counts and, where `--tasks` uses a v1
    /// pids cgroup, moves in any task that joined the target's cgroup2
    /// directory from outside (forks join by themselves).
    pub fn sample_throttle(&mut self) {
        for t in self.registry.targets.values().filter(|t| t.throttle.tasks.is_some()) {
            if let Some(p @ tasks::PidsCgroup::V1(_)) = tasks::existing(&t.name, &t.cgroup) {
                if let Err(e) = tasks::sync_members(&p, &t.cgroup) {
                    warn!(target = %t.name, "keeping --tasks members in {}: {e}", p.describe());
                }
            }
        }
        let snap: Vec<(u64, u32, ThrottleCounts)> = self
            .registry
            .targets
            .values()
            .filter(|t| !t.throttle.is_empty())
            .flat_map(|t| {
                let m = &self.enforcer.maps;
                m.throttle_classes(t.cgroup_id).into_iter().map(move |c| (t.cgroup_id, c, m.throttle_counts(t.cgroup_id, c)))
            })
            .collect();
        self.throttle_history.push_back((Instant::now(), snap));
        let keep = (RATE_WINDOW.as_millis() / RATE_SAMPLE.as_millis()) as usize + 2;
        while self.throttle_history.len() > keep {
            self.throttle_history.pop_front();
        }
    }

    /// Per-second rate of `passed` over the last [`RATE_WINDOW`].
    fn measured_rate(&self, cgroup_id: u64, class: u32, now_counts: &ThrottleCounts) -> Option<f64> {
        let now = Instant::now();
        let (t, old) = self
            .throttle_history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW + RATE_SAMPLE)
            .and_then(|(t, snap)| snap.iter().find(|(c, k, _)| *c == cgroup_id && *k == class).map(|(_, _, n)| (*t, *n)))?;
        let dt = now.duration_since(t).as_secs_f64();
        (dt >= 0.5).then(|| now_counts.passed.saturating_sub(old.passed) as f64 / dt)
    }

    /// The `throttle` block of a target in `status`.
    pub(super) fn throttle_status(&self, t: &crate::target::Target) -> Value {
        if t.throttle.is_empty() {
            return Value::Null;
        }
        let c = &t.throttle;
        let buckets: Vec<Value> = self
            .enforcer
            .maps
            .throttle_classes(t.cgroup_id)
            .into_iter()
            .map(|class| {
                let counts = self.enforcer.maps.throttle_counts(t.cgroup_id, class);
                let ceiling = match class {
                    killpath_common::throttle::EGRESS_BYTES | killpath_common::throttle::EGRESS_BYTES_TC => c.egress_bytes,
                    killpath_common::throttle::EGRESS_PACKETS | killpath_common::throttle::EGRESS_PACKETS_TC => c.egress_packets,
                    _ => c.syscalls.get(class_name(class)).copied(),
                };
                json!({
                    "class": class_name(class),
                    "ceiling_per_s": ceiling,
                    "measured_per_s": self.measured_rate(t.cgroup_id, class, &counts).map(|r| (r * 10.0).round() / 10.0),
                    "passed": counts.passed,
                    "paced": counts.paced,
                    "denied": counts.denied,
                })
            })
            .collect();
        let tasks = c.tasks.map(|limit| {
            let pids = tasks::existing(&t.name, &t.cgroup);
            json!({
                "limit": limit,
                "current": pids.as_ref().and_then(|p| p.current()),
                "forks_refused": pids.as_ref().and_then(|p| p.refused()),
                "mechanism": pids.map(|p| p.describe()),
            })
        });
        let paused = self.pacer.paused.lock().map(|m| m.get(&t.cgroup_id).copied().unwrap_or(0)).unwrap_or(0);
        json!({
            "ceilings": c,
            "buckets": buckets,
            "tasks": tasks,
            "tasks_paused_now": paused,
            "syscall_hook_attached": self.enforcer.syscall_hook_attached(),
            "needs_agent": c.paces().then_some(
                "pace: the kernel pauses a task at its ceiling (SIGSTOP) and the agent resumes it (SIGCONT); \
                 while the agent is down a paused task stays paused until it is back. Counting, deny mode, egress and --tasks hold without the agent."
            ),
        })
    }
}

/// Recent bucket count snapshots, oldest first.
pub type History = VecDeque<CountSnapshot>;
