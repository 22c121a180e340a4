//! What a stop of a small target does before its kill write, done while
//! its intent is written to disk: open the target's cgroup by id, list its
//! processes (at most [`SMALL_TARGET`]), open a pidfd on each and open
//! `cgroup.kill` for writing. About thirty syscalls (the open by id, the
//! subtree walk, the reads): ~150 µs between the durable intent and the
//! kill write when the stop thread made them itself (this host, strace
//! and the stop's own timings). None of them acts on the target, so the
//! durability rule (intent durable before the action) allows them before
//! the intent; the agent's `kp-stop-prep` thread makes them while the
//! stop thread waits in fdatasync (`agent::stop_marks`), and the stop
//! takes them if they are ready (`marks::Pending`), else makes them itself.
//!
//! Made earlier, the list can be a few hundred microseconds older at the
//! kill: a process forked since is killed by the `cgroup.kill` write and
//! awaited on `cgroup.events`, not its pidfd; one moved out since is
//! killed through its pidfd (`PidWatch::kill_and_hurry`, as before); a
//! target that grew past [`SMALL_TARGET`] meanwhile is still killed by the
//! write, which is fork-safe, without a freeze first (a preparation older
//! than [`FRESH`] is not used).
use std::{
    fs, io,
    time::{Duration, Instant},
};

use super::{pidfds::PidWatch, SMALL_TARGET};
use crate::kernel::cgroup::Cgroup;

/// How old a preparation may be at the kill: past it (a disk that held
/// the intent that long) the stop lists the target again, so that one
/// that grew well past [`SMALL_TARGET`] meanwhile (a fork bomb starting)
/// takes the large order, its guard armed before the kill write, rather
/// than the write alone (fork-safe too: nothing survives either way). The
/// intent's fdatasync takes 0.2–0.5 ms here; a move between cgroups, the
/// way a listed process leaves, ~16 ms (it waits for an RCU grace period
/// in cgroup_threadgroup_rwsem), which a test of that case must fit in.
pub const FRESH: Duration = Duration::from_millis(50);

/// A small target, ready for its kill.
pub struct Small {
    /// Its processes when listed.
    pub pids: Vec<i32>,
    /// Their pidfds.
    pub watch: PidWatch,
    /// Its `cgroup.kill`, open for writing; None when it exists but could
    /// not be opened (the kill then goes through [`Cgroup::kill`], and
    /// pid by pid if that fails too).
    pub kill: Option<fs::File>,
}

/// A target's cgroup and, when small, what its kill needs.
pub struct Prepared {
    pub cg: Cgroup,
    pub small: Option<Small>,
    /// When the listing was made (see [`FRESH`]).
    pub at: Instant,
    /// The target's escape count read before the listing (by the stop's
    /// thread, before it asked for the preparation): a listed process
    /// moved out after the listing is then counted as escaped during the
    /// halt, and the halt is not reported before its kill.
    pub escapes_before: u64,
}

/// What a stop of `cg` needs before a kill write alone; None when the
/// target has more than [`SMALL_TARGET`] processes or no `cgroup.kill`
/// (a kernel before 5.14).
pub fn small(cg: &Cgroup) -> Option<Small> {
    let pids = cg.procs_upto(SMALL_TARGET)?;
    let kill = match cg.open_kill() {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(_) => None,
    };
    let watch = PidWatch::open(&pids);
    Some(Small { pids, watch, kill })
}
