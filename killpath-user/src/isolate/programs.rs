//! Level 3, isolate, on the user side: the programs that enforce it, their
//! per-target attachment, and the catalog of channels with what enforces
//! each one on this kernel.
//!
//! Programs are loaded once and pinned (`<pin-dir>/progs`); a restarted
//! agent opens the pins instead of loading a second copy. The cgroup hooks
//! are attached to each target's cgroup when the target is created, with
//! their links pinned under `<pin-dir>/targets/<cgroup id>/`, so isolating
//! is a single map update and survives the agent. The agent also holds
//! every link by fd ([`LinkKeeper`]): unlinking a pin does not detach it.
use std::{
    fs,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType, CgroupSockAttachType,
        CgroupSockopt, CgroupSockoptAttachType, CgroupSysctl,
    },
    Btf, Ebpf,
};
use killpath_common::programs;
use tracing::info;

use crate::{
    error::{Error, Result},
    kernel::{
        cgroup::cgroup2_mount,
        cgroup_id,
        links::{cgroup_link_create, pin_fd, LinkKeeper},
        object::{self, fd_link, load_pinned},
        pins::target_dir,
    },
};

const ADDR_PROGS: &[(&str, CgroupSockAddrAttachType)] = &[
    (programs::ISOLATE_CONNECT4, CgroupSockAddrAttachType::Connect4),
    (programs::ISOLATE_CONNECT6, CgroupSockAddrAttachType::Connect6),
    (programs::ISOLATE_SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (programs::ISOLATE_SENDMSG6, CgroupSockAddrAttachType::UDPSendMsg6),
];

const LSM_PROGS: &[(&str, &str)] = &[
    (programs::ISOLATE_LSM_SOCKET_CREATE, "socket_create"),
    (programs::ISOLATE_LSM_SOCKET_CONNECT, "socket_connect"),
    (programs::ISOLATE_LSM_SOCKET_SENDMSG, "socket_sendmsg"),
    (programs::ISOLATE_LSM_SOCKET_RECVMSG, "socket_recvmsg"),
];

/// include/uapi/linux/bpf.h, enum bpf_attach_type.
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_CGROUP_SETSOCKOPT: u32 = 22;
const BPF_CGROUP_SYSCTL: u32 = 18;

/// The level-3 programs, opened from their pins.
pub struct IsolatePrograms {
    skb: CgroupSkb,
    /// Egress: isolation plus the level-1 egress policer.
    skb_egress: CgroupSkb,
    addr: Vec<(&'static str, CgroupSockAddr)>,
    sock: CgroupSock,
    /// Device, setsockopt and sysctl hooks, attached through raw BPF_LINK_CREATE
    /// (aya 0.14 gives these types no pinnable link): (pin name, program
    /// fd holder, attach type).
    raw: Vec<(&'static str, RawCgroupProg, u32)>,
    /// The TC program for `--netdev`.
    pub tc: super::netdev::TcProgram,
    pin_dir: PathBuf,
    /// The agent's fds of the links (shared with the enforcer).
    links: LinkKeeper,
}

impl IsolatePrograms {
    /// Loads (or opens from their pins) the per-target cgroup programs and
    /// the TC program. The cgroup_skb egress program is shared with level
    /// 1: one program isolates and polices egress (see the eBPF side).
    pub fn open(ebpf: &mut Ebpf, pin_dir: &Path, loaded: &mut Vec<&'static str>, links: LinkKeeper) -> Result<Self> {
        let skb_pin = load_pinned::<CgroupSkb>(ebpf, pin_dir, programs::ISOLATE_SKB, loaded, |p| p.load().map_err(Error::program(programs::ISOLATE_SKB)))?;
        // Opened with the ingress attach type; the program was loaded
        // without an expected attach type, so it attaches to both.
        let skb = CgroupSkb::from_pin(&skb_pin, CgroupSkbAttachType::Ingress).map_err(Error::program("opening pinned cgroup_skb"))?;
        // Loaded with the egress expected attach type (its section is
        // cgroup_skb/egress), which lets it return the congestion verdicts.
        let egress_pin = load_pinned::<CgroupSkb>(ebpf, pin_dir, programs::EGRESS_SKB, loaded, |p| p.load().map_err(Error::program(programs::EGRESS_SKB)))?;
        let skb_egress = CgroupSkb::from_pin(&egress_pin, CgroupSkbAttachType::Egress).map_err(Error::program("opening pinned cgroup_skb/egress"))?;
        let mut addr = Vec::new();
        for (name, ty) in ADDR_PROGS {
            let pin = load_pinned::<CgroupSockAddr>(ebpf, pin_dir, name, loaded, |p| p.load().map_err(Error::program(name)))?;
            addr.push((*name, CgroupSockAddr::from_pin(&pin, *ty).map_err(Error::program(name))?));
        }
        let sock_pin = load_pinned::<CgroupSock>(ebpf, pin_dir, programs::ISOLATE_SOCK_CREATE, loaded, |p| p.load().map_err(Error::program("sock_create")))?;
        let sock = CgroupSock::from_pin(&sock_pin, CgroupSockAttachType::SockCreate).map_err(Error::program("sock_create"))?;
        let dev_pin =
            load_pinned::<CgroupDevice>(ebpf, pin_dir, programs::ISOLATE_DEVICE, loaded, |p| p.load().map_err(Error::program(programs::ISOLATE_DEVICE)))?;
        let dev = CgroupDevice::from_pin(&dev_pin).map_err(Error::program("opening pinned cgroup_device"))?;
        let sockopt_pin = load_pinned::<CgroupSockopt>(ebpf, pin_dir, programs::ISOLATE_SETSOCKOPT, loaded, |p| {
            p.load().map_err(Error::program(programs::ISOLATE_SETSOCKOPT))
        })?;
        let sockopt = CgroupSockopt::from_pin(&sockopt_pin, CgroupSockoptAttachType::Set).map_err(Error::program("opening pinned cgroup_sockopt"))?;
        // Self-protection's sysctl guard rides along: a per-target cgroup
        // hook like these, attached and pinned with them (`protect::sysctl`).
        let sysctl_pin =
            load_pinned::<CgroupSysctl>(ebpf, pin_dir, programs::PROTECT_SYSCTL, loaded, |p| p.load().map_err(Error::program(programs::PROTECT_SYSCTL)))?;
        let sysctl = CgroupSysctl::from_pin(&sysctl_pin).map_err(Error::program("opening pinned cgroup_sysctl"))?;
        let raw = vec![
            (programs::ISOLATE_DEVICE, RawCgroupProg::Device(dev), BPF_CGROUP_DEVICE),
            (programs::ISOLATE_SETSOCKOPT, RawCgroupProg::Sockopt(sockopt), BPF_CGROUP_SETSOCKOPT),
            (programs::PROTECT_SYSCTL, RawCgroupProg::Sysctl(sysctl), BPF_CGROUP_SYSCTL),
        ];
        let tc = super::netdev::TcProgram::open(ebpf, pin_dir, loaded)?;
        Ok(Self { skb, skb_egress, addr, sock, raw, tc, pin_dir: pin_dir.to_owned(), links })
    }

    /// Attaches the cgroup hooks to a target's cgroup (idempotent: links
    /// already pinned for this cgroup id are kept), and holds every link
    /// by fd as well as by pin.
    pub fn attach_target(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<()> {
        let dir = target_dir(&self.pin_dir, cgroup_id);
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        // The real cgroup, by id: a mount over the path cannot make the
        // hooks attach elsewhere.
        let cg = fs::File::from(cgroup_id::open_by_id(&cgroup2_mount()?, cgroup_id).map_err(Error::cgroup(cgroup))?);
        // Mode "Single" means flags = 0, which BPF_LINK_CREATE requires
        // for cgroups (any flag is EINVAL): cgroup bpf_links always behave
        // as BPF_F_ALLOW_MULTI, so a workload attaching its own programs
        // to a nested cgroup cannot override ours; all of them run.
        let mode = CgroupAttachMode::Single;
        for (suffix, ty, prog) in
            [("skb_ingress", CgroupSkbAttachType::Ingress, &mut self.skb), ("skb_egress", CgroupSkbAttachType::Egress, &mut self.skb_egress)]
        {
            let pin = dir.join(suffix);
            if !pin.exists() {
                let id = prog.attach(&cg, ty, mode).map_err(Error::program(format!("attaching cgroup_skb/{suffix}")))?;
                let link = fd_link(prog.take_link(id).map_err(Error::program("cgroup_skb link"))?)?;
                link.pin(&pin).map_err(Error::pin(&pin))?;
            }
        }
        for (name, prog) in &mut self.addr {
            let pin = dir.join(*name);
            if !pin.exists() {
                let id = prog.attach(&cg, mode).map_err(Error::program(format!("attaching {name}")))?;
                let link = fd_link(prog.take_link(id).map_err(Error::program(*name))?)?;
                link.pin(&pin).map_err(Error::pin(&pin))?;
            }
        }
        let pin = dir.join(programs::ISOLATE_SOCK_CREATE);
        if !pin.exists() {
            let id = self.sock.attach(&cg, mode).map_err(Error::program("attaching sock_create"))?;
            let link = fd_link(self.sock.take_link(id).map_err(Error::program("sock_create link"))?)?;
            link.pin(&pin).map_err(Error::pin(&pin))?;
        }
        for (name, prog, attach_type) in &self.raw {
            let pin = dir.join(*name);
            if !pin.exists() {
                let fd = prog.fd()?;
                let link = cgroup_link_create(fd, cg.as_fd(), *attach_type).map_err(Error::io(format!("attaching {name} (BPF_LINK_CREATE)")))?;
                pin_fd(&link, &pin)?;
            }
        }
        for n in Self::link_names() {
            self.links.hold(&dir.join(n))?;
        }
        Ok(())
    }

    /// The names of a target's link pins.
    fn link_names() -> impl Iterator<Item = &'static str> {
        ["skb_ingress", "skb_egress", programs::ISOLATE_SOCK_CREATE, programs::ISOLATE_DEVICE, programs::ISOLATE_SETSOCKOPT, programs::PROTECT_SYSCTL]
            .into_iter()
            .chain(ADDR_PROGS.iter().map(|(n, _)| *n))
    }

    /// Detaches a target's cgroup hooks: removes the pins and drops the
    /// agent's fds (the links detach with their last reference).
    pub fn detach_target(&self, cgroup_id: u64) -> Result<()> {
        let dir = target_dir(&self.pin_dir, cgroup_id);
        self.links.release(&dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))?;
        }
        Ok(())
    }

    /// Whether a target's hooks are all attached (their link pins exist).
    pub fn attached(&self, cgroup_id: u64) -> bool {
        Self::attached_at(&self.pin_dir, cgroup_id)
    }

    /// [`IsolatePrograms::attached`] for the pins under `pin_dir`, without
    /// the programs at hand (`status` reads it outside the state lock).
    /// One read of the target's pin directory, not a path walk per link:
    /// `status` asks for every target (a quarter of its time at 1,000).
    pub fn attached_at(pin_dir: &Path, cgroup_id: u64) -> bool {
        let Ok(entries) = std::fs::read_dir(target_dir(pin_dir, cgroup_id)) else { return false };
        let pins: std::collections::BTreeSet<std::ffi::OsString> = entries.flatten().map(|e| e.file_name()).collect();
        Self::link_names().all(|n| pins.contains(std::ffi::OsStr::new(n)))
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// Loads, attaches and pins isolation's host-wide BPF LSM hooks. The
/// caller has checked that a BPF LSM hook really runs here
/// (`kernel::probe::lsm_runs`).
pub fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, gen: &Path, loaded: &mut Vec<&'static str>) -> Result<()> {
    for (name, hook) in LSM_PROGS.iter().chain(programs::ISOLATE_LSM_TUN) {
        if object::attach_lsm(ebpf, btf, gen, name, hook)? {
            loaded.push(name);
            info!(hook, "isolation LSM hook attached and pinned");
        }
    }
    Ok(())
}

/// A cgroup program attached with a raw BPF_LINK_CREATE.
enum RawCgroupProg {
    Device(CgroupDevice),
    Sockopt(CgroupSockopt),
    Sysctl(CgroupSysctl),
}

impl RawCgroupProg {
    fn fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = match self {
            RawCgroupProg::Device(p) => p.fd(),
            RawCgroupProg::Sockopt(p) => p.fd(),
            RawCgroupProg::Sysctl(p) => p.fd(),
        };
        Ok(fd.map_err(Error::program("cgroup program fd"))?.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attached means every link pin is in the target's pin directory.
    #[test]
    fn attached_when_every_link_pin_is_there() {
        let gen = tempfile::tempdir().unwrap();
        let dir = target_dir(gen.path(), 42);
        assert!(!IsolatePrograms::attached_at(gen.path(), 42), "no directory");
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<&str> = IsolatePrograms::link_names().collect();
        for n in &names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        assert!(IsolatePrograms::attached_at(gen.path(), 42));
        std::fs::remove_file(dir.join(names[names.len() - 1])).unwrap();
        assert!(!IsolatePrograms::attached_at(gen.path(), 42), "one pin missing");
    }
}
