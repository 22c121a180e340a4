//! Membership marks as user space sees them (`KP_MEMBERS`, see
//! `killpath-ebpf/src/members.rs`): which tasks belong to which target
//! wherever they sit, the escape counts, and the marks the agent adds
//! itself for tasks that were inside a target before the kernel hooks saw
//! them enter (adopted cgroups, targets found at agent start).
//!
//! Killing a marked task goes through a pidfd, and the mark is re-checked
//! after the pidfd is open: the kernel drops a mark when its task exits,
//! so a mark still present then names the process the pidfd holds, never
//! a reused pid.
use std::{collections::BTreeSet, fs, os::fd::AsRawFd as _};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use killpath_common::Member;

use super::cgroup::Cgroup;

/// `BPF_NOEXIST`: insert only where no mark exists (the kernel's own marks,
/// inherited or nested, win over the agent's scan).
const BPF_NOEXIST: u64 = 1;

/// The membership maps.
pub struct MemberMaps {
    pub(crate) members: HashMap<MapData, u32, Member>,
    pub(crate) escapes: Option<PerCpuHashMap<MapData, u64, u64>>,
    pub(crate) lost: Option<PerCpuArray<MapData, u64>>,
    /// The agent's tgid, whose own moves are not escapes (agent only).
    pub(crate) agent: Option<Array<MapData, u32>>,
}

/// Thread group id of task `tid` (None when it is gone).
fn tgid_of(tid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{tid}/status")).ok()?.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// Every task id (threads included) in `cg` and its nested cgroups.
fn threads_recursive(cg: &Cgroup) -> Vec<u32> {
    cg.subtree()
        .iter()
        .flat_map(|c| {
            fs::read_to_string(c.path().join("cgroup.threads")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}

/// `bpf_attr` of BPF_MAP_LOOKUP_BATCH (`include/uapi/linux/bpf.h`, the
/// `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `bpf` command number of BPF_MAP_LOOKUP_BATCH (Linux 5.6+).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of the marks map by BPF_MAP_LOOKUP_BATCH; None when the
/// kernel refuses it (the caller walks the map instead). A hash map's
/// batch token is a bucket index (u32; 8 bytes reserved).
fn batch_all(map: &HashMap<MapData, u32, Member>) -> Option<Vec<(u32, Member)>> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    const CHUNK: usize = 1024;
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut keys = vec![0u32; CHUNK];
    let mut values = vec![Member::default(); CHUNK];
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a batch attr whose pointers name live buffers
        // of `count` keys and values of the map's sizes (u32 and Member,
        // both #[repr(C)]) and two 8-byte tokens; the kernel writes at most
        // that much and sets `count` to the entries it wrote.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, (&raw mut attr).cast::<libc::c_void>(), std::mem::size_of::<BatchAttr>() as u32) };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        match err {
            None => out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied())),
            // The last batch: ENOENT, with what it still read.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                return Some(out);
            }
            Some(_) => return None,
        }
        token_in = token_out;
        first = false;
    }
}

impl MemberMaps {
    /// The mark of task `tid`, if it has one.
    pub fn get(&self, tid: u32) -> Option<Member> {
        self.members.get(&tid, 0).ok()
    }

    /// Every mark: (task id, mark).
    pub fn all(&self) -> Vec<(u32, Member)> {
        // One task per target makes a thousand marks with a thousand
        // targets: read in batches (a syscall per 1,024 marks), not two
        // syscalls per mark, on the stop's path. The plain walk stays for
        // kernels without batch lookups (before 5.6).
        batch_all(&self.members).unwrap_or_else(|| self.members.iter().filter_map(|r| r.ok()).collect())
    }

    /// Marks of tasks belonging to any of `targets`.
    pub fn of_targets(&self, targets: &[u64]) -> Vec<(u32, Member)> {
        self.all().into_iter().filter(|(_, m)| targets.contains(&m.target)).collect()
    }

    /// Distinct processes with a mark of any of `targets`.
    pub fn processes_of(&self, targets: &[u64]) -> BTreeSet<u32> {
        self.of_targets(targets).into_iter().map(|(_, m)| m.tgid).collect()
    }

    /// Marks every task now in `cg`'s subtree as a member of `target`,
    /// leaving marks the kernel already set, except those of `outer`
    /// targets that enclose this one (the innermost target wins, as in the
    /// kernel). Returns the number of marks added.
    pub fn mark_cgroup(&mut self, cg: &Cgroup, target: u64, outer: &[u64]) -> usize {
        let mut added = 0;
        for tid in threads_recursive(cg) {
            let Some(tgid) = tgid_of(tid) else { continue };
            let m = Member { target, tgid, escapes: 0 };
            let ok = match self.members.get(&tid, 0) {
                Ok(cur) if outer.contains(&cur.target) => self.members.insert(tid, m, 0).is_ok(),
                Ok(_) => false,
                Err(_) => self.members.insert(tid, m, BPF_NOEXIST).is_ok(),
            };
            if ok {
                added += 1;
                // The task may have exited between the read of
                // cgroup.threads and the insert: then no exit hook will
                // ever drop this mark, so drop it here.
                if !std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists() {
                    let _ = self.members.remove(&tid);
                    added -= 1;
                }
            }
        }
        added
    }

    /// Tells the kernel which process is the agent.
    pub fn set_agent(&mut self, tgid: u32) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.set(0, tgid, 0);
        }
    }

    /// Copies another generation's marks that this one lacks.
    pub fn copy_from(&mut self, other: &MemberMaps) {
        for (tid, m) in other.all() {
            let _ = self.members.insert(tid, m, BPF_NOEXIST);
        }
    }

    /// Drops every mark of `target` and its escape count (release).
    pub fn unmark_target(&mut self, target: u64) {
        for (tid, _) in self.of_targets(&[target]) {
            let _ = self.members.remove(&tid);
        }
        if let Some(e) = self.escapes.as_mut() {
            let _ = e.remove(&target);
        }
    }

    /// Escape attempts counted by the kernel for `target`.
    pub fn escapes(&self, target: u64) -> u64 {
        self.escapes.as_ref().and_then(|e| e.get(&target, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Marks the kernel could not record (map full).
    pub fn lost(&self) -> u64 {
        self.lost.as_ref().and_then(|l| l.get(&0, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Drops marks whose task no longer exists (left by a scan race or by
    /// an exit while the hooks were not attached).
    pub fn prune_dead(&mut self) {
        for (tid, m) in self.all() {
            if !std::path::Path::new(&format!("/proc/{}/task/{tid}", m.tgid)).exists() {
                let _ = self.members.remove(&tid);
            }
        }
    }

    /// SIGKILLs every process marked as a member of `targets`, through a
    /// pidfd (no reused pid is ever signalled). Returns the processes
    /// signalled.
    pub fn kill(&self, targets: &[u64]) -> BTreeSet<u32> {
        self.kill_marks(&self.of_targets(targets))
    }

    /// SIGKILLs the process of each mark in `marks` (one signal per
    /// process), re-checking that one mark with the pidfd open: one map
    /// lookup each, so a stop of a large tree stays linear.
    pub fn kill_marks(&self, marks: &[(u32, Member)]) -> BTreeSet<u32> {
        let mut killed = BTreeSet::new();
        for (tid, m) in marks {
            if killed.contains(&m.tgid) {
                continue;
            }
            if kill_if_marked(m.tgid, || self.members.get(tid, 0).is_ok_and(|now| now.tgid == m.tgid && now.target == m.target)) {
                killed.insert(m.tgid);
            }
        }
        killed
    }
}

/// Opens a pidfd on `tgid`, checks `still_marked` with it open, and sends
/// SIGKILL through it.
pub fn kill_if_marked(tgid: u32, still_marked: impl FnOnce() -> bool) -> bool {
    // SAFETY: pidfd_open(2) with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just handed us this fd; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    if !still_marked() {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) on our own pidfd, no siginfo.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_if_marked_signals_only_while_marked() {
        let mut child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id();
        assert!(!kill_if_marked(pid, || false), "no mark: no signal");
        assert!(child.try_wait().unwrap().is_none(), "still running");
        assert!(kill_if_marked(pid, || true));
        let st = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    }
}
