//! Waiting for a small target's processes to exit through pidfds.
//!
//! Why not only cgroup.events: the kernel announces a change of that file
//! at most once per CGROUP_FILE_NOTIFY_MIN_INTV (10 ms, Linux 5.3+,
//! `cgroup_file_notify`), so a `populated 0` that follows another change
//! (the `populated 1` of a task that just joined, a `frozen` flip) within
//! 10 ms wakes a poller up to 10 ms late, while a single process dies in
//! ~100 µs. A pidfd polls readable as soon as its thread group has exited
//! (`pidfd_poll`, Linux 5.3), and a task leaves its cgroup's count
//! (`cgroup_exit`) before that, so once every pidfd is readable a read of
//! cgroup.events tells whether the cgroup is empty, with no notification in
//! between. Opened before the kill, by pid, so only for a target small
//! enough that the opens cost less than the wait they save.
use std::{
    os::fd::{AsFd, AsRawFd as _, FromRawFd, OwnedFd},
    time::Instant,
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// pidfds of processes that were alive when opened, with their pids.
pub struct PidWatch {
    fds: Vec<(i32, OwnedFd)>,
}

impl PidWatch {
    /// pidfds of `pids`; a pid already gone (ESRCH) is left out: it has
    /// exited, which is what the watch waits for.
    pub fn open(pids: &[i32]) -> Self {
        let fds = pids
            .iter()
            .filter_map(|&pid| {
                // SAFETY: pidfd_open(2) with a pid and no flags; returns a new fd or -1.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
                // SAFETY: the kernel just handed us this fd; OwnedFd closes it.
                Some((pid, unsafe { OwnedFd::from_raw_fd(fd) }))
            })
            .collect();
        Self { fds }
    }

    /// SIGKILLs each watched process through its pidfd, then raises the
    /// ones it reached to real-time (SCHED_FIFO 1, below the stop thread's
    /// 2; nice -20 where that is refused), so that on a busy host their
    /// exit (they must run to die) does not queue behind the rest: at nice
    /// -20, under 32 clients flooding the agent, the cgroup emptied ~1.5 ms
    /// after the kill write against ~0.2 ms idle (a woken task still
    /// waited for the running ones' fair share). Called after the kill
    /// write. The SIGKILL first, through the pidfd: a process listed before
    /// the write but moved out of the cgroup before it was missed by the
    /// write, and is killed here rather than raised while it runs; with
    /// SIGKILL pending, none runs user code again. Only the thread whose
    /// id is the pid (the leader) is raised; the rest die with it.
    pub fn kill_and_hurry(&self) {
        for (pid, fd) in &self.fds {
            // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo,
            // no flags. ESRCH: the process has exited already.
            let sent = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) } == 0;
            // The pid is the process the pidfd holds: a killed process
            // keeps its pid until its parent reaps it. At the stop thread's
            // own priority (2), above the marks thread's read beside the
            // stop (`SCHED_FIFO` 1): FIFO does not preempt its own level,
            // so at 1 the dying process waited for that read to end on its
            // CPU (bench of 2026-12-04 17:10, 1,000 targets: cgroup seen
            // empty 12 µs after the read ended, 815 µs against 643 µs at one
            // target). The read returns to user space every 64 marks, where
            // even a `preempt=none` kernel switches to a higher priority.
            if sent && crate::kernel::priority::fifo(*pid, crate::kernel::priority::STOP_RT_PRIORITY).is_err() {
                // SAFETY: setpriority(2) on a pid; no memory is passed. No
                // CAP_SYS_NICE only costs the hurry.
                let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, *pid as libc::id_t, -20) };
            }
        }
    }

    /// Puts the watched processes still alive back in the ordinary class
    /// (nice -20): a process whose exit outlasts the wait (in D state, or
    /// with a large address space to tear down) must not hold a CPU ahead
    /// of every ordinary thread, the agent's and the disk's included.
    pub fn unhurry(&self) {
        for (pid, _) in &self.fds {
            crate::kernel::priority::normal(*pid, -20);
        }
    }

    /// Sleeps in poll(2) until every watched process has exited or
    /// `deadline` passes. Returns whether all exited.
    pub fn wait_all(&mut self, deadline: Instant) -> bool {
        while !self.fds.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let ready: Vec<bool> = {
                let mut pfds: Vec<PollFd<'_>> = self.fds.iter().map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN)).collect();
                if poll(&mut pfds, PollTimeout::from(ms)).is_err() {
                    return false;
                }
                pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect()
            };
            let mut i = 0;
            self.fds.retain(|_| {
                let keep = !ready.get(i).copied().unwrap_or(false);
                i += 1;
                keep
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        let mut w = PidWatch::open(&[pid]);
        assert!(!w.wait_all(Instant::now() + std::time::Duration::from_millis(20)), "still running");
        child.kill().unwrap();
        assert!(w.wait_all(Instant::now() + std::time::Duration::from_secs(5)));
        child.wait().unwrap();
    }

    /// The hurry kills before it raises: a process the kill write missed
    /// (here: never written at all) dies by the watch's own SIGKILL, and,
    /// as root, is real-time while it exits (read from its stat before it
    /// is reaped: policy, field 41, SCHED_FIFO = 1).
    #[test]
    fn hurry_kills_each_process_before_raising_it() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        let mut w = PidWatch::open(&[pid]);
        w.kill_and_hurry();
        assert!(w.wait_all(Instant::now() + std::time::Duration::from_secs(5)), "the watched process outlived its hurry");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let field = |n: usize| stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(n)).and_then(|f| f.parse::<i32>().ok());
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // Policy (field 41) and real-time priority (field 40).
            assert_eq!(field(38), Some(1), "not SCHED_FIFO while it died: {stat}");
            assert_eq!(field(37), Some(crate::kernel::priority::STOP_RT_PRIORITY), "not above the marks read while it died: {stat}");
        }
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    /// Policy (stat field 41) and nice (field 19) of process `pid`.
    fn policy_and_nice(pid: i32) -> (Option<i64>, Option<i64>) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let field = |n: usize| stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(n)).and_then(|f| f.parse::<i64>().ok());
        (field(38), field(16))
    }

    /// A process still alive after the wait (one whose exit outlasts it)
    /// is put back in the ordinary class at nice -20: real-time, it would
    /// hold a CPU ahead of every ordinary thread. Here a living `sleep`
    /// raised as the hurry would raise it. Root only (raising needs
    /// CAP_SYS_NICE; `cargo xtask test` runs as root, and strict).
    #[test]
    fn unhurry_puts_a_process_still_alive_back_in_the_ordinary_class() {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("KILLPATH_TEST_STRICT").is_none(), "strict run: this test needs root");
            eprintln!("skipped: raising a process to SCHED_FIFO needs root");
            return;
        }
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        let w = PidWatch::open(&[pid]);
        crate::kernel::priority::fifo(pid, 1).unwrap();
        assert_eq!(policy_and_nice(pid).0, Some(1), "raised to SCHED_FIFO first");
        w.unhurry();
        assert_eq!(policy_and_nice(pid), (Some(0), Some(-20)), "SCHED_OTHER at nice -20");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
