//! Ending a child process: politely, or like a crash.
use std::{
    process::Child,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Sends SIGTERM to `child`, then SIGKILL if it has not exited within
/// `grace`; reaps it.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    crash(child);
}

/// How long a SIGKILLed child may take to exit before it is reported
/// (and left behind): a task SIGKILL cannot end is blocked in the kernel.
const EXIT_AFTER_KILL: Duration = Duration::from_secs(120);

/// SIGKILLs `child` (no cleanup on its side, like a crash) and reaps it.
/// If it is still there after [`EXIT_AFTER_KILL`], prints the kernel
/// stack of each of its threads (what it waits for: e.g. an RCU grace
/// period inside a BPF trampoline update) and returns without it, rather
/// than waiting for ever.
pub(crate) fn crash(child: &mut Child) {
    let _ = child.kill();
    let start = Instant::now();
    while start.elapsed() < EXIT_AFTER_KILL {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    eprintln!("killpath-sandbox: pid {pid} has not exited {EXIT_AFTER_KILL:?} after SIGKILL; its threads' kernel stacks:");
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
            eprintln!("task {}:\n{stack}", t.file_name().to_string_lossy());
        }
    }
}
