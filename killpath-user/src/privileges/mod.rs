//! What a target's tasks could do to leave their cgroup on this kernel,
//! and how `killpath run --no-privileges` / `--user` start a workload
//! without that power ([`drop`]).
//!
//! Without a BPF LSM hook guarding cgroup moves, the kernel lets a task
//! move itself (writing its pid to another cgroup's `cgroup.procs`, or
//! `clone3(CLONE_INTO_CGROUP)`) when it may write the destination's
//! `cgroup.procs` and the common ancestor's (cgroup v2 delegation rules,
//! `cgroup_procs_write_permission`): plain file permissions, so uid 0
//! (owner of the root-owned files) can, even with no capabilities, and so
//! can CAP_DAC_OVERRIDE, CAP_FOWNER (chmod), CAP_CHOWN, CAP_SETUID
//! (become root), CAP_SYS_ADMIN and CAP_BPF (other ways around the
//! checks). The assessment is conservative: "prevented" only when every
//! thread of every task is non-root in all four uids, holds no capability
//! at all (permitted set empty), has no_new_privs set (so no setuid-root
//! program or file capability can raise it: the permitted set can then
//! never grow), and no `cgroup.procs` above the target is writable by its
//! uid or groups (a delegated subtree).
pub mod drop;

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Capability names by number (include/uapi/linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Capabilities that let a task leave its cgroup or attack killpath
/// itself, named first in the explanation.
const ESCAPE_CAPS: [u32; 8] = [21, 1, 3, 0, 7, 39, 19, 5];

/// The credentials of one thread, from /proc/PID/task/TID/status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub pid: i32,
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

impl Creds {
    /// Parses a /proc status file.
    pub fn parse(pid: i32, text: &str) -> Option<Self> {
        let mut c = Self { pid, ..Self::default() };
        let mut seen = 0;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.trim();
            let nums = || v.split_whitespace().filter_map(|x| x.parse::<u32>().ok()).collect::<Vec<_>>();
            let hex = || u64::from_str_radix(v, 16).ok();
            match k {
                "Uid" => c.uids = nums().try_into().ok()?,
                "Gid" => c.gids = nums().try_into().ok()?,
                "Groups" => c.groups = nums(),
                "CapPrm" => c.cap_prm = hex()?,
                "CapEff" => c.cap_eff = hex()?,
                "CapBnd" => c.cap_bnd = hex()?,
                "CapAmb" => c.cap_amb = hex()?,
                "NoNewPrivs" => c.no_new_privs = v == "1",
                _ => continue,
            }
            seen += 1;
        }
        // Every field above (NoNewPrivs since Linux 4.10) must be there.
        (seen >= 8).then_some(c)
    }

    /// Every thread of process `pid` (threads can hold their own
    /// credentials: setuid(2) through a raw syscall changes one thread).
    pub fn of_process(pid: i32) -> Vec<Self> {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        rd.flatten().filter_map(|e| fs::read_to_string(e.path().join("status")).ok()).filter_map(|t| Self::parse(pid, &t)).collect()
    }

    fn root(&self) -> bool {
        self.uids.contains(&0)
    }
}

/// Capability names in `mask`, the escaping ones first.
pub fn cap_names(mask: u64) -> Vec<String> {
    let mut out: Vec<String> = ESCAPE_CAPS.iter().filter(|&&b| mask & (1 << b) != 0).map(|&b| CAP_NAMES[b as usize].to_owned()).collect();
    for b in 0..64u32 {
        if mask & (1 << b) != 0 && !ESCAPE_CAPS.contains(&b) {
            out.push(CAP_NAMES.get(b as usize).map_or_else(|| format!("cap{b}"), |n| (*n).to_owned()));
        }
    }
    out
}

/// Whether the kernel itself refuses cgroup moves out of a target.
#[derive(Clone, Debug)]
pub enum Guard {
    /// No BPF LSM on this kernel (the reason).
    NoLsm(String),
    /// BPF LSM is on, but nothing killpath attached guards cgroup moves.
    LsmWithoutMoveGuard,
    /// A BPF LSM hook refuses writes to `cgroup.procs` outside the target.
    MoveGuard,
}

impl Guard {
    /// From the enforcer's state: BPF LSM (`lsm_error`) and the
    /// self-protection hooks (`protect_error`, see `crate::protect`), whose
    /// cgroupfs hook refuses `cgroup.procs`/`cgroup.threads` writes (and
    /// clone3 into a cgroup) outside the target.
    pub fn from_state(lsm_error: Option<&str>, protect_error: Option<&str>) -> Self {
        match (lsm_error, protect_error) {
            (Some(e), _) => Self::NoLsm(e.to_owned()),
            (None, Some(_)) => Self::LsmWithoutMoveGuard,
            (None, None) => Self::MoveGuard,
        }
    }

    fn phrase(&self) -> &'static str {
        match self {
            Self::NoLsm(_) => "no BPF LSM",
            Self::LsmWithoutMoveGuard => "BPF LSM on but no hook guarding cgroup moves",
            Self::MoveGuard => "BPF LSM guards cgroup moves",
        }
    }
}

/// The verdict on a target's tasks.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Assessment {
    /// "possible" or "prevented".
    pub escape: &'static str,
    pub why: String,
    /// The task the verdict is about (the first that could escape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

/// " with CAP_A, CAP_B and 30 more": the escaping capabilities by name
/// (or the first three when none escapes), the rest counted.
fn caps_phrase(caps: &[String]) -> String {
    if caps.is_empty() {
        return String::new();
    }
    let escaping = caps.iter().filter(|n| ESCAPE_CAPS.iter().any(|&b| CAP_NAMES[b as usize] == n.as_str())).count();
    let shown = if escaping == 0 { caps.len().min(3) } else { escaping };
    let more = caps.len() - shown;
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(" with {}{tail}", caps[..shown].join(", "))
}

/// Why one thread could leave its cgroup, or None if it cannot.
fn thread_escape(c: &Creds, writable: &dyn Fn(&Creds) -> Option<PathBuf>) -> Option<String> {
    let caps = cap_names(c.cap_prm | c.cap_eff | c.cap_amb);
    let with = caps_phrase(&caps);
    if c.root() {
        if caps.is_empty() {
            return Some("root (uid 0, no capabilities: still the owner of the root-owned cgroup.procs files)".into());
        }
        return Some(format!("root{with}"));
    }
    if !caps.is_empty() {
        return Some(format!("uid {}{with}", c.uids[1]));
    }
    if !c.no_new_privs {
        return Some(format!("uid {} without capabilities, but no_new_privs is off: a setuid-root program would make it root", c.uids[1]));
    }
    writable(c).map(|p| format!("uid {} may write {} (a delegated cgroup)", c.uids[1], p.display()))
}

/// The `cgroup.procs` files a task of `cgroup` would need to write to move
/// out: those of every strict ancestor up to the cgroup2 root (the common
/// ancestor with any destination outside the subtree is one of them).
fn ancestor_procs(cgroup: &Path, mount: &Path) -> Vec<PathBuf> {
    cgroup.ancestors().skip(1).take_while(|d| d.starts_with(mount)).map(|d| d.join("cgroup.procs")).collect()
}

/// Whether the file at `path` is writable for `c` by its mode bits alone
/// (the check cgroup_may_write makes for a task without capabilities).
fn writable_by(path: &Path, c: &Creds) -> bool {
    let Ok(m) = fs::metadata(path) else { return false };
    let mode = m.mode();
    let fsuid = c.uids[3];
    if m.uid() == fsuid {
        return mode & 0o200 != 0;
    }
    if m.gid() == c.gids[3] || c.groups.contains(&m.gid()) {
        return mode & 0o020 != 0;
    }
    mode & 0o002 != 0
}

/// Assesses the tasks `pids` of the target at `cgroup`.
pub fn assess(pids: &[i32], cgroup: &Path, mount: &Path, guard: &Guard) -> Assessment {
    let procs = ancestor_procs(cgroup, mount);
    let writable = |c: &Creds| procs.iter().find(|p| writable_by(p, c)).cloned();
    let mut threads = 0usize;
    for &pid in pids {
        for c in Creds::of_process(pid) {
            threads += 1;
            if let Some(why) = thread_escape(&c, &writable) {
                return match guard {
                    Guard::MoveGuard => {
                        Assessment { escape: "prevented", why: format!("{why}, but {}: cannot leave its cgroup", guard.phrase()), pid: Some(pid) }
                    }
                    _ => Assessment { escape: "possible", why: format!("{why}, {}: can leave its cgroup", guard.phrase()), pid: Some(pid) },
                };
            }
        }
    }
    if threads == 0 {
        return Assessment { escape: "prevented", why: "no tasks".into(), pid: None };
    }
    Assessment {
        escape: "prevented",
        why: "every task is non-root, without capabilities, with no_new_privs, and cannot write any cgroup.procs outside the target".into(),
        pid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";

    #[test]
    fn parses_and_judges() {
        let c = Creds::parse(7, STATUS).unwrap();
        assert_eq!(c.uids, [65534; 4]);
        assert!(c.no_new_privs);
        let none = |_: &Creds| None;
        assert_eq!(thread_escape(&c, &none), None);
        let root = Creds { uids: [0; 4], cap_prm: 1 << 21 | 1 << 1, ..c.clone() };
        assert_eq!(thread_escape(&root, &none).unwrap(), "root with CAP_SYS_ADMIN, CAP_DAC_OVERRIDE");
        let bare_root = Creds { uids: [0, 0, 0, 0], ..c.clone() };
        assert!(thread_escape(&bare_root, &none).unwrap().starts_with("root (uid 0, no capabilities"));
        let suid_root = Creds { uids: [1000, 1000, 0, 1000], ..c.clone() };
        assert!(thread_escape(&suid_root, &none).is_some(), "a saved uid of 0 is root");
        let nnp_off = Creds { no_new_privs: false, ..c.clone() };
        assert!(thread_escape(&nnp_off, &none).unwrap().contains("no_new_privs is off"));
        let delegated = |_: &Creds| Some(PathBuf::from("/sys/fs/cgroup/user/cgroup.procs"));
        assert!(thread_escape(&c, &delegated).unwrap().contains("delegated"));
    }

    #[test]
    fn names_every_bit() {
        assert_eq!(cap_names(1 << 39 | 1 << 10), ["CAP_BPF", "CAP_NET_BIND_SERVICE"]);
        assert_eq!(cap_names(1 << 50), ["cap50"]);
    }
}
