//! The agent's CPU priority. A command's time to effect includes every
//! wake-up on its path (the socket read, the blocking thread, the fdatasync
//! completion); on a busy host — a workload burning every CPU is what the
//! kill path is for — each can wait behind runnable tasks for a full
//! scheduler slice (milliseconds). The agent therefore runs at a raised
//! priority: a nice value (not a real-time class, which a bug in the agent
//! could turn into a host that never runs anything else).
use tracing::{info, warn};

/// The agent's nice value: ~9× the weight of a nice-0 task, so it
/// preempts them on wake-up.
pub const AGENT_NICE: i32 = -10;

/// Sets the calling thread's nice value to [`AGENT_NICE`]. On Linux nice is
/// per thread and inherited at creation: called first thing, before any
/// thread of the agent is started, it covers them all.
pub fn raise() {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) };
    if rc == 0 {
        info!(nice = AGENT_NICE, "agent priority raised");
    } else {
        let e = std::io::Error::last_os_error();
        warn!("cannot raise the agent's priority to nice {AGENT_NICE} ({e}): commands may wait behind busy tasks");
    }
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
