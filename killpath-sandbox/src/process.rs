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

/// SIGKILLs `child` (no cleanup on its side, like a crash) and reaps it.
pub(crate) fn crash(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
