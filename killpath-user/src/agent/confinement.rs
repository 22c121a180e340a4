//! Which target a caller is inside. A task of a target may read (ping,
//! probe, status, capabilities, journal, events) but never change
//! anything: otherwise root inside a target could `restore` or `release`
//! itself. The caller is the kernel's SO_PEERCRED pid, resolved to its
//! cgroup at request time, not at connect time: a task moved into a target
//! after connecting is inside it from then on.
use std::{
    collections::BTreeMap,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::Path,
    time::{Duration, Instant},
};

use super::{Caller, State};
use crate::{
    error::{Error, Result},
    kernel::cgroup,
};

/// A pidfd for the peer of `sock`: SO_PEERPIDFD (Linux 6.5+) names the
/// process that connected, so it cannot be a recycled pid; on older kernels
/// pidfd_open(pid) right after accept (a pid recycled between the peer's
/// connect and this call would be misread: the peer would have had to exit
/// and the pid space wrap in that window). None if neither works; the
/// caller's pid is then read without a liveness check.
pub(super) fn peer_pidfd(sock: &impl AsRawFd, pid: i32) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERPIDFD, (&raw mut fd).cast(), &raw mut len) };
    if r == 0 && fd >= 0 {
        // SAFETY: the kernel just handed us this fd; nothing else owns it.
        return Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open(pid, 0) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: as above; a non-negative return is a fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` is still alive (signal 0 checks
/// without sending). A pidfd never follows a recycled pid.
pub(super) fn pidfd_alive(pidfd: RawFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 sends nothing.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, 0, std::ptr::null::<libc::siginfo_t>(), 0) == 0 }
}

impl State {
    /// The target the caller is inside, if any: its cgroup (read now from
    /// /proc/PID/cgroup) is a target's cgroup or below it, by path on the
    /// cgroup2 mount and by cgroup id along its ancestors (cgroup2 refuses
    /// renames, so the ids are a second check should the registry's path
    /// be spelled through another mount of the hierarchy). An error when the caller cannot be
    /// resolved (its pid is gone): the request is refused then too.
    ///
    /// Membership marks (a task that left its target's cgroup) are meant
    /// to be looked up here as well.
    pub(super) fn caller_target(&self, caller: Caller) -> Result<Option<String>> {
        let gone = || Error::CallerUnknown { pid: caller.pid };
        if caller.pid <= 0 {
            return Err(gone());
        }
        let rel = cgroup::cgroup_of(caller.pid).map_err(|_| gone())?;
        // Read first, then check the pidfd: if the process is still alive
        // after the read, the pid was not recycled during it.
        if caller.pidfd.is_some_and(|fd| !pidfd_alive(fd)) {
            return Err(gone());
        }
        let rel = rel.strip_suffix(" (deleted)").unwrap_or(&rel);
        let abs = self.cgroup_mount.join(rel.trim_start_matches('/'));
        // By path, then by mark, then by the ids of the cgroup's
        // directories: index lookups (`target::index`), not scans.
        if let Some(t) = self.registry.enclosing(&abs).first() {
            return Ok(Some(t.name.clone()));
        }
        // Membership follows the task: a caller that left its target's
        // cgroup (before the agent moved it back) is still the target's.
        let mark = self.enforcer.maps.members.as_ref().and_then(|m| u32::try_from(caller.pid).ok().and_then(|pid| m.get(pid).filter(|mk| mk.tgid == pid)));
        if let Some(t) = mark.and_then(|m| self.registry.with_cgroup_id(&[m.target])) {
            return Ok(Some(t.name.clone()));
        }
        let ids = ancestor_ids(&abs, &self.cgroup_mount);
        Ok(self.registry.with_cgroup_id(&ids).map(|t| t.name.clone()))
    }
}

/// Journaled refusals per target and second; beyond that they are refused
/// and counted, and the next journaled one carries the count. Each
/// journaled refusal is an fsync under the agent's lock: a target
/// hammering the socket must not slow a stop down.
const JOURNALED_PER_SECOND: u32 = 10;

/// Per target (or "" for callers that could not be resolved): the current
/// one-second window, refusals journaled in it, refusals not journaled.
static WINDOWS: std::sync::Mutex<BTreeMap<String, (Instant, u32, u64)>> = std::sync::Mutex::new(BTreeMap::new());

/// Whether to journal this refusal; `Some(n)`: yes, and `n` refusals were
/// left out of the journal since the last journaled one.
pub(super) fn journal_refusal_now(target: Option<&str>) -> Option<u64> {
    let mut w = WINDOWS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    let e = w.entry(target.unwrap_or_default().to_owned()).or_insert((now, 0, 0));
    if now.duration_since(e.0) >= Duration::from_secs(1) {
        e.0 = now;
        e.1 = 0;
    }
    if e.1 >= JOURNALED_PER_SECOND {
        e.2 += 1;
        return None;
    }
    e.1 += 1;
    Some(std::mem::take(&mut e.2))
}

/// cgroup ids (kernfs inode numbers) of `dir` and its ancestors up to, not
/// including, the mount. A directory removed meanwhile is skipped.
fn ancestor_ids(dir: &Path, mount: &Path) -> Vec<u64> {
    dir.ancestors().take_while(|d| d.starts_with(mount) && *d != mount).filter_map(|d| fs::metadata(d).ok()).map(|m| m.ino()).collect()
}
