//! The capability catalog. [`Capability`] is the single source of truth:
//! parsing, the bits the kernel reads, what enforces each one, what this
//! kernel can enforce, the escalation defaults and the drill's probes all
//! come from it, so a new capability is one variant here (the compiler then
//! points at every match that must handle it), its kernel hook, and its
//! probe in `drill/probe.rs`.
use killpath_common::cap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One capability a degrade step can revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    NetConnect,
    NetListen,
    NetRaw,
    NetUnix,
    FsWrite,
    Exec,
    Fork,
    Signal,
    Ptrace,
    Mount,
    Bpf,
    Module,
    Setid,
}

/// What a capability needs from the kernel to be enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// cgroup sock_addr/sock/skb hooks: enforceable without BPF LSM, with
    /// what only BPF LSM cuts reported open
    /// ([`Capability::open_without_lsm`]).
    CgroupHooks,
    /// BPF LSM hooks.
    Lsm,
    /// BPF LSM hooks that follow kernel pointers, with struct offsets read
    /// from the running kernel's BTF (Rust eBPF has no CO-RE).
    LsmAndBtf,
}

/// One capability and whether this kernel enforces its revocation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapabilityStatus {
    pub name: String,
    pub enforceable: bool,
    pub detail: String,
    /// What stays OPEN on this kernel although the capability is
    /// enforceable (absent: nothing known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<String>,
}

/// Why capabilities cannot be enforced on this kernel (None: they can).
#[derive(Clone, Debug, Default)]
pub struct KernelGaps {
    /// BPF LSM unavailable.
    pub lsm: Option<String>,
    /// fs.write offsets missing from BTF.
    pub fs: Option<String>,
    /// signal offsets missing from BTF.
    pub signal: Option<String>,
}

impl Capability {
    /// Every capability, in catalog order.
    pub const ALL: [Capability; 13] = [
        Capability::NetConnect,
        Capability::NetListen,
        Capability::NetRaw,
        Capability::NetUnix,
        Capability::FsWrite,
        Capability::Exec,
        Capability::Fork,
        Capability::Signal,
        Capability::Ptrace,
        Capability::Mount,
        Capability::Bpf,
        Capability::Module,
        Capability::Setid,
    ];

    /// The name on the CLI, the socket and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Capability::NetConnect => "net.connect",
            Capability::NetListen => "net.listen",
            Capability::NetRaw => "net.raw",
            Capability::NetUnix => "net.unix",
            Capability::FsWrite => "fs.write",
            Capability::Exec => "exec",
            Capability::Fork => "fork",
            Capability::Signal => "signal",
            Capability::Ptrace => "ptrace",
            Capability::Mount => "mount",
            Capability::Bpf => "bpf",
            Capability::Module => "module",
            Capability::Setid => "setid",
        }
    }

    /// The bit the kernel programs test in `TargetState::revoked`.
    pub fn bit(self) -> u32 {
        match self {
            Capability::NetConnect => cap::NET_CONNECT,
            Capability::NetListen => cap::NET_LISTEN,
            Capability::NetRaw => cap::NET_RAW,
            Capability::NetUnix => cap::NET_UNIX,
            Capability::FsWrite => cap::FS_WRITE,
            Capability::Exec => cap::EXEC,
            Capability::Fork => cap::FORK,
            Capability::Signal => cap::SIGNAL,
            Capability::Ptrace => cap::PTRACE,
            Capability::Mount => cap::MOUNT,
            Capability::Bpf => cap::BPF,
            Capability::Module => cap::MODULE,
            Capability::Setid => cap::SETID,
        }
    }

    /// The bit's index (as in denial keys and events).
    pub fn index(self) -> u32 {
        self.bit().trailing_zeros()
    }

    /// What refuses it in the kernel.
    pub fn enforced_by(self) -> &'static str {
        match self {
            Capability::NetConnect => {
                "cgroup connect4/6 + sendmsg4/6 (allow-list: LPM trie) + cgroup skb egress (every packet, sockets connected before the revoke too) + cgroup sock_create (raw IP sockets) + BPF LSM socket_create (packet sockets)"
            }
            Capability::NetListen => "BPF LSM socket_listen",
            Capability::NetRaw => "cgroup sock_create (raw IP sockets) + BPF LSM socket_create (packet sockets)",
            Capability::NetUnix => "BPF LSM socket_create + socket_connect (AF_UNIX)",
            Capability::FsWrite => {
                "BPF LSM file_open (for write) + path_mknod/mkdir/unlink/rmdir/rename/link/symlink/truncate/chmod/chown; allow-list by directory inode"
            }
            Capability::Exec => "BPF LSM bprm_check_security",
            Capability::Fork => "BPF LSM task_alloc (threads stay allowed)",
            Capability::Signal => "BPF LSM task_kill (receivers outside the target)",
            Capability::Ptrace => "BPF LSM ptrace_access_check + ptrace_traceme",
            Capability::Mount => "BPF LSM sb_mount + move_mount + sb_umount",
            Capability::Bpf => "BPF LSM bpf",
            Capability::Module => "BPF LSM kernel_module_request + kernel_load_data + kernel_read_file",
            Capability::Setid => "BPF LSM task_fix_setuid + task_fix_setgid",
        }
    }

    /// For a capability enforced by cgroup hooks: what they cut alone
    /// (without BPF LSM) and what stays open there.
    pub fn without_lsm(self) -> Option<(&'static str, &'static str)> {
        match self {
            Capability::NetConnect => Some((
                "cgroup connect4/6 + sendmsg4/6 (allow-list: LPM trie) + cgroup skb egress (every packet, sockets connected before the revoke too) + cgroup sock_create (raw IP sockets)",
                "packet sockets (AF_PACKET, root only) are not refused: only BPF LSM socket_create refuses them",
            )),
            Capability::NetRaw => {
                Some(("cgroup sock_create (raw IP sockets, AF_INET/AF_INET6)", "packet sockets (AF_PACKET) are not refused: only BPF LSM socket_create refuses them"))
            }
            _ => None,
        }
    }

    /// What the kernel must offer to enforce it.
    pub fn needs(self) -> Needs {
        match self {
            Capability::NetConnect | Capability::NetRaw => Needs::CgroupHooks,
            Capability::FsWrite | Capability::Signal => Needs::LsmAndBtf,
            Capability::NetListen
            | Capability::NetUnix
            | Capability::Exec
            | Capability::Fork
            | Capability::Ptrace
            | Capability::Mount
            | Capability::Bpf
            | Capability::Module
            | Capability::Setid => Needs::Lsm,
        }
    }

    /// Whether a default degrade step (`escalate` without a config) revokes
    /// it, where enforceable: what an autonomous job uses to reach out or
    /// change the host. fork and signal are left to the job, which usually
    /// needs them to keep working.
    pub fn revoked_by_default(self) -> bool {
        !matches!(self, Capability::Fork | Capability::Signal)
    }

    /// The capability named `name`, or an error listing the known ones.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            Error::InvalidRequest(format!("unknown capability {name:?}; known: {}", names.join(", ")))
        })
    }

    /// The capability of bit index `index`, if any.
    pub fn from_index(index: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.index() == index)
    }

    /// Whether this kernel enforces it, and what does or what is missing.
    pub fn status(self, gaps: &KernelGaps) -> CapabilityStatus {
        let btf_gap = match self {
            Capability::FsWrite => gaps.fs.as_deref(),
            Capability::Signal => gaps.signal.as_deref(),
            _ => None,
        };
        let lsm_error = gaps.lsm.as_deref();
        let partial = match (self.needs(), lsm_error, self.without_lsm()) {
            (Needs::CgroupHooks, Some(_), Some((cut, open))) => Some((cut, open)),
            _ => None,
        };
        if let Some((cut, open)) = partial {
            return CapabilityStatus {
                name: self.name().to_owned(),
                enforceable: true,
                detail: format!("{cut}; OPEN without BPF LSM: {open}"),
                open: Some(open.to_owned()),
            };
        }
        let (enforceable, detail) = match (self.needs(), lsm_error, btf_gap) {
            (Needs::CgroupHooks, _, _) => (true, self.enforced_by().to_owned()),
            (Needs::LsmAndBtf, None, Some(gap)) => (false, format!("not enforceable on this kernel: {gap}")),
            (_, None, _) => (true, self.enforced_by().to_owned()),
            (_, Some(_), _) => (false, "not enforceable on this kernel: needs BPF LSM (see `killpath probe`)".to_owned()),
        };
        CapabilityStatus { name: self.name().to_owned(), enforceable, detail, open: None }
    }
}

/// The catalog on this kernel.
pub fn capabilities(gaps: &KernelGaps) -> Vec<CapabilityStatus> {
    Capability::ALL.iter().map(|c| c.status(gaps)).collect()
}

/// Bit of a capability name.
pub fn bit(name: &str) -> Result<u32> {
    Capability::parse(name).map(Capability::bit)
}

/// Names of the bits set in `mask`.
pub fn names(mask: u32) -> Vec<&'static str> {
    Capability::ALL.iter().filter(|c| mask & c.bit() != 0).map(|c| c.name()).collect()
}

/// Name of capability bit index `index` (as in denial keys/events).
pub fn name_of_index(index: u32) -> &'static str {
    // Self-protection refusals share the counters at protect::FIRST + n.
    if let Some(name) = index.checked_sub(killpath_common::protect::FIRST).and_then(|i| killpath_common::protect::NAMES.get(i as usize)) {
        return name;
    }
    Capability::from_index(index).map_or("unknown", Capability::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(bit(c.name()).unwrap(), c.bit());
            assert_eq!(name_of_index(c.index()), c.name());
        }
        assert!(bit("net.teleport").is_err());
        assert_eq!(names(cap::EXEC | cap::FORK), vec!["exec", "fork"]);
        assert_eq!(Capability::ALL.len() as u32, cap::COUNT, "every kernel bit has a variant");
    }

    #[test]
    fn enforceability_follows_the_kernel() {
        let no_lsm = KernelGaps { lsm: Some("off".into()), ..Default::default() };
        let on: Vec<&str> = Capability::ALL.iter().filter(|c| c.status(&no_lsm).enforceable).map(|c| c.name()).collect();
        assert_eq!(on, ["net.connect", "net.raw"]);
        for c in [Capability::NetConnect, Capability::NetRaw] {
            let st = c.status(&no_lsm);
            assert!(st.detail.contains("OPEN without BPF LSM") && st.open.as_deref().is_some_and(|o| o.contains("AF_PACKET")), "{st:?}");
            assert_eq!(c.status(&KernelGaps::default()).open, None, "with BPF LSM nothing is open");
        }
        let no_btf = KernelGaps { fs: Some("no offsets".into()), ..Default::default() };
        assert!(!Capability::FsWrite.status(&no_btf).enforceable);
        assert!(Capability::Exec.status(&no_btf).enforceable);
    }
}
