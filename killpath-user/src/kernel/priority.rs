//! The agent's CPU priority. A command's time to effect includes every
//! wake-up on its path (the socket read, the blocking thread, the fdatasync
//! completion); on a busy host — a workload burning every CPU is what the
//! kill path is for — each can wait behind runnable tasks for a full
//! scheduler slice (milliseconds). The agent therefore runs at a raised
//! priority: a nice value for most threads; the stop thread, and a few
//! bounded pieces of a stop's work, in a real-time class (a real-time
//! thread that never blocks is a host that runs nothing else: each use
//! says what bounds it).
use tracing::{info, warn};

/// The agent's nice value: ~9× the weight of a nice-0 task, so it
/// preempts them on wake-up.
pub const AGENT_NICE: i32 = -10;

/// Sets the calling thread's nice value to [`AGENT_NICE`]. On Linux nice is
/// per thread and inherited at creation: called first thing, before any
/// thread of the agent is started; the async runtime's threads set it
/// again as they start ([`set_agent_nice`]).
pub fn raise() {
    if set_agent_nice() {
        info!(nice = AGENT_NICE, "agent priority raised");
    } else {
        let e = std::io::Error::last_os_error();
        warn!("cannot raise the agent's priority to nice {AGENT_NICE} ({e}): commands may wait behind busy tasks");
    }
}

/// Sets the calling thread's nice value to [`AGENT_NICE`], quietly;
/// whether the kernel took it. Also run at the start of every thread of the
/// agent's async runtime: a thread is created by whichever thread needed it,
/// and one created by a thread that is real-time at that moment (a stop
/// raises the command thread holding the state lock) starts at nice 0, as
/// `SCHED_RESET_ON_FORK` resets a negative nice too (seen in CI,
/// 2026-12-04: a `tokio-rt-worker` at nice 0).
pub fn set_agent_nice() -> bool {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) == 0 }
}

/// Makes a child the agent starts (an alert hook, a verify probe inside a
/// target) run at the default priority, not the agent's.
pub fn default_for_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes one
    // async-signal-safe syscall; lowering one's own priority always works.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
            Ok(())
        });
    }
}

/// The real-time priority of the stop thread (and of a thread a stop
/// waits for): above the pacer's 1, so a stop is never queued behind it.
pub const STOP_RT_PRIORITY: i32 = 2;

/// Makes thread `tid` (0: the calling thread) SCHED_FIFO at `priority`.
/// SCHED_RESET_ON_FORK: nothing the thread starts inherits the class.
///
/// # Errors
/// The kernel's refusal: EPERM without CAP_SYS_NICE, or with cgroup v1
/// RT group scheduling and no RT runtime given to the agent's cgroup.
pub fn fifo(tid: i32, priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: sched_setscheduler(2) on a thread id; param lives on the stack.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts thread `tid` (0: the calling thread) in the ordinary class
/// (SCHED_OTHER) at nice `nice`; false when the class change was refused
/// (the thread may still be real-time). SCHED_RESET_ON_FORK is kept: a
/// thread that [`fifo`] made real-time has it, and clearing it needs
/// CAP_SYS_NICE (sched_setscheduler(2)), which a thread made real-time
/// through RLIMIT_RTPRIO lacks; asked to clear it, the kernel refuses the
/// whole change.
pub fn normal(tid: i32, nice: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) and setpriority(2) on a thread id;
    // param lives on the stack.
    unsafe {
        let lowered = libc::sched_setscheduler(tid, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param) == 0;
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
        lowered
    }
}

/// The nice value a stop's thread falls back to when it cannot be
/// real-time.
pub const STOP_NICE: i32 = -20;

/// Raises thread `tid` (0: the calling thread) for a stop: nice -20 first
/// (kept if the real-time class is refused), then SCHED_FIFO
/// [`STOP_RT_PRIORITY`]. Why real-time: CFS shares a CPU by weight, and a
/// nice -20 thread weighs ~88 nice-0 tasks, so a fork bomb of 1,300
/// runnable tasks still outweighs it ~15 to 1; a SCHED_FIFO thread runs
/// before every ordinary task on wake-up. It sleeps between stops, and RT
/// throttling (`kernel.sched_rt_runtime_us`, 95% by default) bounds it.
/// Returns the class it got, for `status` and `probe`.
pub fn raise_for_stop(tid: i32) -> String {
    let niced = raise_nice_for_stop(tid);
    match fifo(tid, STOP_RT_PRIORITY) {
        Ok(()) => format!("SCHED_FIFO {STOP_RT_PRIORITY}"),
        Err(e) if niced => format!("nice {STOP_NICE} (SCHED_FIFO refused: {e})"),
        Err(e) => format!("unraised (SCHED_FIFO refused: {e}; nice {STOP_NICE} refused too)"),
    }
}

/// The class the stop thread got when it started (see [`raise_stop_thread`]).
static STOP_CLASS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Raises the calling thread, the stop thread, for stops, and records the
/// class it got (logged, and reported by `status`).
pub fn raise_stop_thread() {
    let class = raise_for_stop(0);
    if class.starts_with("SCHED_FIFO") {
        info!(class, "stop thread raised: a stop runs before every ordinary task");
    } else {
        warn!(class, "the stop thread cannot be real-time: under a CPU flood a stop may wait for a CPU");
    }
    let _ = STOP_CLASS.set(class);
}

/// The stop thread's scheduling class, once it started.
pub fn stop_class() -> Option<&'static str> {
    STOP_CLASS.get().map(String::as_str)
}

/// Sets thread `tid` (0: the calling thread) to nice [`STOP_NICE`] in the
/// ordinary class; whether the kernel took it.
pub fn raise_nice_for_stop(tid: i32) -> bool {
    // SAFETY: setpriority(2) on a thread id; no memory is passed.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, STOP_NICE) == 0 }
}

/// Raises the calling thread, the backup stop thread, to nice
/// [`STOP_NICE`] and records it for `status`. Ordinary on purpose: it runs
/// the stops the real-time thread cannot (a workload real-time above it
/// on every CPU), with the share the kernel keeps for ordinary tasks.
pub fn raise_backup_stop_thread() {
    let class = if raise_nice_for_stop(0) { format!("nice {STOP_NICE}") } else { "unraised (nice refused)".to_owned() };
    info!(class, "backup stop thread raised");
    let _ = BACKUP_CLASS.set(class);
}

/// The backup stop thread's class, once it started.
static BACKUP_CLASS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The backup stop thread's scheduling class, once it started.
pub fn backup_stop_class() -> Option<&'static str> {
    BACKUP_CLASS.get().map(String::as_str)
}

/// The class a stop thread would get in this process (for `probe`): the
/// stop thread's if it started, else tried on a short-lived thread.
pub fn stop_class_here() -> String {
    if let Some(c) = stop_class() {
        return c.to_owned();
    }
    std::thread::spawn(|| raise_for_stop(0)).join().unwrap_or_else(|_| "unknown (the probe thread panicked)".to_owned())
}

/// Whether the calling thread runs in a real-time class (SCHED_FIFO or
/// SCHED_RR): then nothing ordinary on the host preempts it.
pub fn calling_thread_is_realtime() -> bool {
    // SAFETY: sched_getscheduler(2) on the calling thread; no memory is passed.
    let policy = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
    policy == libc::SCHED_FIFO || policy == libc::SCHED_RR
}
