//! A task's liveness read from the real procfs, not from whatever is
//! mounted at a path below /proc. A workload that can mount (root in the
//! host mount namespace, below degrade's `mount` revocation) can bind-mount
//! a file reading "Z" over its own /proc/PID/task/TID/stat, and a reader
//! going by path would take a running task for a dead one: drop its mark,
//! skip its kill, report 0 survivors.
//!
//! So /proc is opened once, at process start ([`init`]: before any
//! workload could mount a procfs of its own pid namespace over it), checked
//! to be a procfs (`PROC_SUPER_MAGIC`) showing this process's own pid
//! namespace (`self` names our pid), and every file below it is opened
//! relative to that fd with
//! `openat2(RESOLVE_NO_XDEV)` (`cgroup_id::open_beneath`), which refuses to
//! cross into a mount over any path component (EXDEV). Anything that cannot
//! be read that way, or parsed, counts as alive: a mark kept too long is
//! safer than a live task let go. Files are parsed as bytes: a task names
//! itself (`comm`, prctl PR_SET_NAME) with any bytes, not UTF-8.
use std::{
    io::Read as _,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::OnceLock,
};

use nix::{
    dir::Dir,
    fcntl::OFlag,
    sys::{
        stat::Mode,
        statfs::{fstatfs, PROC_SUPER_MAGIC},
    },
};

use super::cgroup_id::open_beneath;

/// include/linux/sched.h: the task is exiting.
const PF_EXITING: u32 = 0x4;

/// What /proc says of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// No such task (ENOENT/ESRCH).
    Gone,
    /// Exiting: a zombie or dead state, or PF_EXITING in its flags.
    Exiting,
    /// Running, sleeping, stopped...
    Live,
    /// Could not be read from the real procfs (a mount over it, say) or
    /// parsed: taken as alive.
    Unknown,
}

/// Opens the real /proc now (see the module doc): called first thing in
/// `main`, by the agent and by every CLI command (the direct stop reads
/// liveness with the agent dead).
pub fn init() {
    let _ = proc_dir();
}

/// The real /proc, opened once (None when /proc is not a procfs of this
/// process's pid namespace).
fn proc_dir() -> Option<&'static OwnedFd> {
    static PROC: OnceLock<Option<OwnedFd>> = OnceLock::new();
    PROC.get_or_init(|| {
        let fd: OwnedFd = nix::fcntl::open("/proc", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        let is_proc = fstatfs(&fd).is_ok_and(|s| s.filesystem_type() == PROC_SUPER_MAGIC);
        // A procfs of another pid namespace has `self` naming another pid
        // (or none): every host task would look gone there.
        let ours = nix::fcntl::readlinkat(&fd, "self").ok().and_then(|l| l.to_str()?.parse::<u32>().ok()) == Some(std::process::id());
        if !(is_proc && ours) {
            tracing::warn!(is_proc, ours, "/proc is not this pid namespace's procfs: task liveness is not read from it (every marked task counts as alive)");
        }
        (is_proc && ours).then_some(fd)
    })
    .as_ref()
}

/// The bytes of `rel` below the real /proc: None when the task is gone,
/// Some(Err) when it cannot be read from the real procfs.
fn read_beneath(rel: &str) -> Option<Result<Vec<u8>, std::io::Error>> {
    let Some(proc) = proc_dir() else { return Some(Err(std::io::Error::other("no verified procfs"))) };
    let fd = match open_beneath(proc.as_fd(), Path::new(rel), OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => return None,
        Err(e) => return Some(Err(e)),
    };
    let mut bytes = Vec::new();
    match std::fs::File::from(fd).read_to_end(&mut bytes) {
        Ok(_) => Some(Ok(bytes)),
        // The task went away after the open.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Task `tid` of process `tgid`, from /proc/TGID/task/TID/stat.
pub fn task_state(tgid: u32, tid: u32) -> TaskState {
    match read_beneath(&format!("{tgid}/task/{tid}/stat")) {
        None => TaskState::Gone,
        Some(Ok(stat)) => parse_stat(&stat),
        Some(Err(e)) => {
            tracing::warn!(tgid, tid, "membership: /proc stat of a task unreadable from the real procfs (taken as alive): {e}");
            TaskState::Unknown
        }
    }
}

/// The thread group of task `tid`, from /proc/TID/status (`Tgid:`) below
/// the real procfs; None when gone or unreadable there.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = read_beneath(&format!("{tid}/status"))?.ok()?;
    status.split(|b| *b == b'\n').find_map(|l| l.strip_prefix(b"Tgid:")).and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// State and flags of a stat line: after the command (which may hold
/// spaces and parentheses), state is the first field and flags the seventh
/// (proc_pid_stat(5): fields 3 and 9).
fn parse_stat(stat: &[u8]) -> TaskState {
    let Some(close) = stat.iter().rposition(|b| *b == b')') else { return TaskState::Unknown };
    let Ok(rest) = std::str::from_utf8(&stat[close + 1..]) else { return TaskState::Unknown };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(state), Some(flags)) = (fields.first(), fields.get(6).and_then(|f| f.parse::<u32>().ok())) else { return TaskState::Unknown };
    if matches!(*state, "Z" | "X" | "x") || flags & PF_EXITING != 0 {
        TaskState::Exiting
    } else {
        TaskState::Live
    }
}

/// The task ids of process `tgid` (/proc/TGID/task below the real
/// procfs); None when gone or unreadable there.
pub fn task_ids(tgid: u32) -> Option<Vec<u32>> {
    let proc = proc_dir()?;
    let fd = open_beneath(proc.as_fd(), Path::new(&format!("{tgid}/task")), OFlag::O_RDONLY | OFlag::O_DIRECTORY).ok()?;
    let mut dir = Dir::from_fd(fd).ok()?;
    Some(dir.iter().filter_map(|e| e.ok()?.file_name().to_str().ok()?.parse().ok()).collect())
}

/// Whether process `tgid` has a thread other than its leader that is not
/// exiting (an unreadable task directory counts as yes).
pub fn group_has_live_thread(tgid: u32) -> bool {
    let Some(tids) = task_ids(tgid) else { return true };
    tids.into_iter().any(|t| t != tgid && !matches!(task_state(tgid, t), TaskState::Gone | TaskState::Exiting))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_to_states() {
        assert_eq!(parse_stat(b"12 (sleep) S 1 12 12 0 -1 4194304 90 0 0 0"), TaskState::Live);
        assert_eq!(parse_stat(b"12 (a) b) Z 1 12 12 0 -1 4194304 90"), TaskState::Exiting, "a ')' in the command");
        assert_eq!(parse_stat(b"12 (\xff\xfe) S 1 12 12 0 -1 4194304 90"), TaskState::Live, "a command that is not UTF-8");
        assert_eq!(parse_stat(b"12 (x) R 1 12 12 0 -1 4194308 90"), TaskState::Exiting, "PF_EXITING in the flags");
        assert_eq!(parse_stat(b"12 (x) R 1 12"), TaskState::Unknown, "no flags field");
        assert_eq!(parse_stat(b"garbage"), TaskState::Unknown);
    }

    #[test]
    fn this_thread_is_live_and_a_reaped_child_gone() {
        let me = std::process::id();
        assert_eq!(task_state(me, me), TaskState::Live);
        assert_eq!(tgid_of(me), Some(me));
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        let _ = child.wait();
        assert_eq!(task_state(pid, pid), TaskState::Gone);
    }
}
