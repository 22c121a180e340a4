//! Self-protection with BPF LSM: always on for every task inside any target,
//! at every level. The kernel side is `killpath-ebpf/src/protect/`; here:
//! attaching its host-wide LSM hooks (`programs::PROTECT_LSM`), telling
//! them what is killpath's (the agent's tgid, the pin and state
//! directories), and reporting them (`probe`, `status`).
//!
//! Not covered, and why (also in docs/threat-model.md): a `mount(MS_MOVE)`
//! of the old API is checked at its destination only; renaming a parent
//! of the state directory is not refused; signals and ptrace are refused
//! for the agent's process, not for a CLI run of `killpath` (the fallback).
use std::{os::unix::fs::MetadataExt, path::Path};

use aya::{
    maps::{HashMap, MapData},
    Btf, Ebpf,
};
use killpath_common::{maps, programs, protect, DenialKey, ProtectedInode};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::{
    error::{Error, Result},
    kernel::{btf::kernel_dev, maps::Maps, object, object::typed},
};

/// One protection as `probe` and `status` report it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProtectionStatus {
    pub name: String,
    pub on: bool,
    pub detail: String,
}

/// What each protection refuses, in index order (see `protect::NAMES`).
const WHAT: [&str; protect::COUNT as usize] = [
    "writes to cgroupfs outside the target's subtree (cgroup.procs, cgroup.threads, clone3 into a cgroup, cgroup.kill/freeze of other cgroups)",
    "bpf(2) from inside a target",
    "signals (but 0) to the agent",
    "ptrace, /proc/PID/mem, process_vm_*, pidfd_getfd on the agent",
    "write/create/unlink/rename/truncate/link/chmod/chown below the pin and state directories",
    "mounts onto cgroupfs, bpffs or killpath's directories, and unmounting cgroupfs/bpffs",
    "writes to kernel.pid_max and kernel.threads-max (the limits the membership map is sized from) and to the commands the kernel runs as root outside every target (kernel.core_pattern, modprobe, poweroff_cmd, hotplug, usermodehelper.*), and to kernel.ns_last_pid (which number the host's next task gets)",
];

/// Every protection, on where BPF LSM runs (`lsm`: why not) and the
/// kernel's BTF has the offsets they follow (`btf`: why not; bpf(2) needs
/// none); the sysctl guard, a cgroup program, needs neither, only that the
/// kernel loads it (`sysctl`: why not).
pub fn statuses(lsm: Option<&str>, btf: Option<&str>, sysctl: Option<&str>) -> Vec<ProtectionStatus> {
    protect::NAMES
        .iter()
        .zip(WHAT)
        .enumerate()
        .map(|(i, (name, what))| {
            let why = match i as u32 {
                protect::SYSCTL => sysctl.map(|e| format!("cgroup_sysctl: {e}")),
                protect::BPF => lsm.map(|e| format!("BPF LSM: {e}")),
                _ => lsm.map(|e| format!("BPF LSM: {e}")).or_else(|| btf.map(|e| format!("kernel BTF: {e}"))),
            };
            ProtectionStatus {
                name: (*name).to_owned(),
                on: why.is_none(),
                detail: match why {
                    None => format!("on: refuses {what}"),
                    Some(w) => format!("OFF ({w}): would refuse {what}"),
                },
            }
        })
        .collect()
}

/// Loads, attaches and pins the protection hooks. The caller has checked
/// that a BPF LSM hook really runs here (`kernel::probe::lsm_runs`).
pub fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, gen: &Path, loaded: &mut Vec<&'static str>) -> Result<()> {
    for (name, hook) in programs::PROTECT_LSM {
        if object::attach_lsm(ebpf, btf, gen, name, hook)? {
            loaded.push(name);
            info!(hook, "self-protection LSM hook attached and pinned");
        }
    }
    Ok(())
}

/// The maps naming what is killpath's.
pub struct ProtectMaps {
    pids: HashMap<MapData, u32, u32>,
    dirs: HashMap<MapData, ProtectedInode, u32>,
}

impl ProtectMaps {
    /// Takes the two maps out of a freshly loaded object.
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self { pids: typed(ebpf, maps::PROTECTED_PIDS)?, dirs: typed(ebpf, maps::PROTECTED_DIRS)? })
    }

    /// Makes `tgid` the only protected process (a previous agent's pid,
    /// left in the pinned map, could be reused by anything).
    pub fn protect_process(&mut self, tgid: u32) -> Result<()> {
        let stale: Vec<u32> = self.pids.keys().filter_map(|k| k.ok()).filter(|k| *k != tgid).collect();
        for k in stale {
            let _ = self.pids.remove(&k);
        }
        self.pids.insert(tgid, 1, 0).map_err(Error::map(format!("updating {}", maps::PROTECTED_PIDS)))
    }

    /// Makes `dirs` the protected directories (by device and inode).
    pub fn protect_dirs(&mut self, dirs: &[&Path]) -> Result<()> {
        let mut keys = Vec::new();
        for d in dirs {
            let m = std::fs::metadata(d).map_err(Error::io(format!("stat {}", d.display())))?;
            keys.push(ProtectedInode { dev: kernel_dev(m.dev()), _pad: 0, ino: m.ino() });
        }
        let stale: Vec<ProtectedInode> = self.dirs.keys().filter_map(|k| k.ok()).filter(|k| !keys.contains(k)).collect();
        for k in stale {
            let _ = self.dirs.remove(&k);
        }
        for k in keys {
            self.dirs.insert(k, 1, 0).map_err(Error::map(format!("updating {}", maps::PROTECTED_DIRS)))?;
        }
        Ok(())
    }
}

impl Maps {
    /// Self-protection refusals of a target, by protection name (exact:
    /// summed over CPUs; only those that happened).
    pub fn protection_refusals(&self, cgroup_id: u64) -> Vec<(&'static str, u64)> {
        let Some(d) = self.degrade.as_ref() else {
            return Vec::new();
        };
        protect::NAMES
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let v = d.denials.get(&DenialKey { cgroup_id, cap: protect::FIRST + i as u32, _pad: 0 }, 0).ok()?;
                Some((*name, v.iter().sum()))
            })
            .collect()
    }
}
