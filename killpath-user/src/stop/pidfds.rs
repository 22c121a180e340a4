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
    os::fd::{AsFd, FromRawFd, OwnedFd},
    time::Instant,
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// pidfds of processes that were alive when opened.
pub struct PidWatch {
    fds: Vec<OwnedFd>,
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
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect();
        Self { fds }
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
                let mut pfds: Vec<PollFd<'_>> = self.fds.iter().map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN)).collect();
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
}
