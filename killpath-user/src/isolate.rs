//! Level 3, isolate, on the user side: the programs that enforce it, their
//! per-target attachment, and the catalog of channels with what enforces
//! each one on this kernel.
//!
//! Programs are loaded once and pinned (`<pin-dir>/progs`); a restarted
//! agent opens the pins instead of loading a second copy. The cgroup hooks
//! are attached to each target's cgroup when the target is created, with
//! their links pinned under `<pin-dir>/targets/<cgroup id>/`, so isolating
//! is a single map update and survives the agent.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink},
        CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType, CgroupSockAttachType, Lsm,
    },
    Btf, Ebpf,
};
use killpath_common::programs;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};

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

fn kerr(what: impl std::fmt::Display) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |e| Error::Kernel(format!("{what}: {}", crate::probe::error_chain(&e)))
}

pub(crate) fn prog_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("progs").join(name)
}

fn target_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    pin_dir.join("targets").join(cgroup_id.to_string())
}

/// A cgroup link as a pinnable bpf_link. aya falls back to the legacy
/// BPF_PROG_ATTACH on kernels without cgroup bpf_link (< 5.7); such an
/// attachment cannot be pinned and would vanish with the agent, so it is an
/// error rather than a silent loss of fail-static enforcement.
fn fd_link<L>(link: L) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| Error::Kernel(format!("cgroup link cannot be pinned (kernel without cgroup bpf_link?): {e}")))
}

/// The level-3 programs, opened from their pins.
pub struct IsolatePrograms {
    skb: CgroupSkb,
    /// Egress: isolation plus the level-1 egress policer.
    skb_egress: CgroupSkb,
    addr: Vec<(&'static str, CgroupSockAddr)>,
    sock: CgroupSock,
    /// Why BPF LSM hooks are not attached (None: attached and running).
    pub lsm_error: Option<String>,
    /// The TC program for `--netdev`.
    pub tc: crate::isolate_tc::TcProgram,
    pin_dir: PathBuf,
}

/// Loads and pins `name` unless its pin exists.
pub(crate) fn load_pinned<P>(ebpf: &mut Ebpf, pin_dir: &Path, name: &'static str, loaded: &mut Vec<&'static str>, load: impl FnOnce(&mut P) -> Result<()>) -> Result<PathBuf>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let pin = prog_pin(pin_dir, name);
    if pin.exists() {
        return Ok(pin);
    }
    let p: &mut P = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Kernel(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(kerr(name))?;
    load(p)?;
    let prog: &mut aya::programs::Program = ebpf.program_mut(name).ok_or_else(|| Error::Kernel(name.into()))?;
    prog.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
    loaded.push(name);
    Ok(pin)
}

impl IsolatePrograms {
    pub fn open(ebpf: &mut Ebpf, pin_dir: &Path, loaded: &mut Vec<&'static str>) -> Result<Self> {
        let skb_pin = load_pinned::<CgroupSkb>(ebpf, pin_dir, programs::ISOLATE_SKB, loaded, |p| p.load().map_err(kerr(programs::ISOLATE_SKB)))?;
        // Opened with the ingress attach type; the program was loaded
        // without an expected attach type, so it attaches to both.
        let skb = CgroupSkb::from_pin(&skb_pin, CgroupSkbAttachType::Ingress).map_err(kerr("opening pinned cgroup_skb"))?;
        // Loaded with the egress expected attach type (its section is
        // cgroup_skb/egress), which lets it return the congestion verdicts.
        let egress_pin = load_pinned::<CgroupSkb>(ebpf, pin_dir, programs::EGRESS_SKB, loaded, |p| p.load().map_err(kerr(programs::EGRESS_SKB)))?;
        let skb_egress = CgroupSkb::from_pin(&egress_pin, CgroupSkbAttachType::Egress).map_err(kerr("opening pinned cgroup_skb/egress"))?;
        let mut addr = Vec::new();
        for (name, ty) in ADDR_PROGS {
            let pin = load_pinned::<CgroupSockAddr>(ebpf, pin_dir, name, loaded, |p| p.load().map_err(kerr(name)))?;
            addr.push((*name, CgroupSockAddr::from_pin(&pin, *ty).map_err(kerr(name))?));
        }
        let sock_pin = load_pinned::<CgroupSock>(ebpf, pin_dir, programs::ISOLATE_SOCK_CREATE, loaded, |p| p.load().map_err(kerr("sock_create")))?;
        let sock = CgroupSock::from_pin(&sock_pin, CgroupSockAttachType::SockCreate).map_err(kerr("sock_create"))?;
        let tc = crate::isolate_tc::TcProgram::open(ebpf, pin_dir, loaded)?;
        let lsm_error = attach_lsm(ebpf, pin_dir, loaded).err();
        if let Some(e) = &lsm_error {
            warn!("BPF LSM isolation hooks unavailable: {e}");
        }
        Ok(Self { skb, skb_egress, addr, sock, lsm_error, tc, pin_dir: pin_dir.to_owned() })
    }

    /// Attaches the cgroup hooks to a target's cgroup (idempotent: links
    /// already pinned for this cgroup id are kept).
    pub fn attach_target(&mut self, cgroup_id: u64, cgroup: &Path) -> Result<()> {
        let dir = target_dir(&self.pin_dir, cgroup_id);
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let cg = fs::File::open(cgroup).map_err(Error::cgroup(cgroup))?;
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
                let id = prog.attach(&cg, ty, mode).map_err(kerr(format!("attaching cgroup_skb/{suffix}")))?;
                let link = fd_link(prog.take_link(id).map_err(kerr("cgroup_skb link"))?)?;
                link.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
            }
        }
        for (name, prog) in &mut self.addr {
            let pin = dir.join(*name);
            if !pin.exists() {
                let id = prog.attach(&cg, mode).map_err(kerr(format!("attaching {name}")))?;
                let link = fd_link(prog.take_link(id).map_err(kerr(*name))?)?;
                link.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
            }
        }
        let pin = dir.join(programs::ISOLATE_SOCK_CREATE);
        if !pin.exists() {
            let id = self.sock.attach(&cg, mode).map_err(kerr("attaching sock_create"))?;
            let link = fd_link(self.sock.take_link(id).map_err(kerr("sock_create link"))?)?;
            link.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
        }
        Ok(())
    }

    /// Detaches a target's cgroup hooks (removing the last reference to a
    /// pinned link detaches it).
    pub fn detach_target(&self, cgroup_id: u64) -> Result<()> {
        let dir = target_dir(&self.pin_dir, cgroup_id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))?;
        }
        Ok(())
    }

    /// Whether a target's hooks are all attached (their link pins exist).
    pub fn attached(&self, cgroup_id: u64) -> bool {
        let dir = target_dir(&self.pin_dir, cgroup_id);
        ["skb_ingress", "skb_egress", programs::ISOLATE_SOCK_CREATE].iter().chain(ADDR_PROGS.iter().map(|(n, _)| n)).all(|n| dir.join(n).exists())
    }

    /// The channel catalog for this kernel.
    /// `adopted`: the target was adopted (`adopt`), so its processes may
    /// hold sockets created before they joined it.
    pub fn channels(&self, adopted: bool) -> Vec<Channel> {
        let mut c = channels(self.lsm_error.as_deref());
        if adopted && self.lsm_error.is_some() {
            // cgroup_skb and sock_addr hooks key on the cgroup a socket was
            // created in; a socket opened before `adopt` keeps the old one.
            c.push(Channel {
                channel: "pre-adopt-sockets".into(),
                enforced: false,
                by: "sockets opened before `adopt` keep their old cgroup: only BPF LSM (socket_sendmsg/recvmsg) cuts them".into(),
            });
        }
        c
    }
}

/// Loads, attaches and pins the host-wide LSM hooks, after checking that a
/// BPF LSM hook really runs here (crate::probe::lsm_runs).
fn attach_lsm(ebpf: &mut Ebpf, pin_dir: &Path, loaded: &mut Vec<&'static str>) -> std::result::Result<(), String> {
    crate::probe::lsm_runs()?;
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    for (name, hook) in LSM_PROGS.iter().chain(programs::DEGRADE_LSM) {
        let pin = crate::bpf::link_pin(pin_dir, name);
        if pin.exists() {
            continue;
        }
        let p: &mut Lsm = ebpf.program_mut(name).ok_or(format!("{name} missing"))?.try_into().map_err(|e: aya::programs::ProgramError| e.to_string())?;
        p.load(hook, &btf).map_err(|e| format!("loading lsm/{hook}: {e}"))?;
        let id = p.attach().map_err(|e| format!("attaching lsm/{hook}: {e}"))?;
        let link: FdLink = p.take_link(id).map_err(|e| e.to_string())?.into();
        link.pin(&pin).map_err(|e| format!("pinning {}: {e}", pin.display()))?;
        loaded.push(name);
        info!(hook, "isolation LSM hook attached and pinned");
    }
    Ok(())
}

/// One way out of a target, and whether this kernel cuts it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Channel {
    pub channel: String,
    pub enforced: bool,
    pub by: String,
}

/// Every channel isolation covers, with the mechanism that cuts it here.
/// `lsm_error` is None when BPF LSM hooks are attached and running.
pub fn channels(lsm_error: Option<&str>) -> Vec<Channel> {
    let lsm = lsm_error.is_none();
    let c = |channel: &str, enforced: bool, by: String| Channel { channel: channel.into(), enforced, by };
    let cgroup = |what: &str| format!("cgroup {what}");
    let needs_lsm = |what: &str| match lsm_error {
        None => format!("BPF LSM {what}"),
        Some(_) => "needs BPF LSM, unavailable on this kernel (see `killpath probe`)".to_owned(),
    };
    vec![
        c("tcp4", true, cgroup("connect4 + skb ingress/egress")),
        c("tcp6", true, cgroup("connect6 + skb ingress/egress")),
        c("udp", true, cgroup("sendmsg4/6 + skb ingress/egress")),
        c("dns", true, cgroup("sendmsg4/6 + skb ingress/egress")),
        c("icmp", true, cgroup("sock_create (raw refused) + skb egress")),
        c("established-tcp", true, cgroup("skb ingress/egress drop every packet")),
        c("loopback", true, cgroup("skb hooks see loopback traffic too")),
        c("unix", lsm, needs_lsm("socket_create/connect/sendmsg/recvmsg")),
        c("packet", lsm, needs_lsm("socket_create (AF_PACKET refused)")),
    ]
}
