//! Level 3 at TC: `isolate --netdev IFACE` for workloads in their own
//! network namespace (containers). The TC program sits on the host side of
//! the workload's veth and drops every frame in both directions while the
//! owning target is isolated; the KP_NETDEVS map says which target owns
//! which device, so isolating is still one map update.
//!
//! Kernels >= 6.6 get a TCX link, pinned like every other link. Older
//! kernels get a clsact qdisc filter through netlink; such a filter lives in
//! the kernel until removed (it is not tied to the agent's fds), so it also
//! survives the agent, but it cannot be pinned and is found again by name.
use std::{fs, path::Path};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{
        links::FdLink,
        tc::{self, SchedClassifier, TcAttachOptions, TcAttachType},
        LinkOrder,
    },
    Ebpf,
};
use killpath_common::{maps, programs};

use crate::{
    error::{Error, Result},
    kernel::{
        object::load_pinned,
        pins::{map_pin, prog_pin},
    },
};

/// The ifindex of `iface`, or a clear error naming it.
pub fn ifindex(iface: &str) -> Result<u32> {
    if iface.is_empty() || iface.contains('/') || iface.contains("..") {
        return Err(Error::InvalidRequest(format!("bad --netdev {iface:?}: not an interface name")));
    }
    let p = Path::new("/sys/class/net").join(iface).join("ifindex");
    let text = fs::read_to_string(&p).map_err(|_| Error::InvalidRequest(format!("bad --netdev {iface:?}: no such network interface")))?;
    text.trim().parse().map_err(|_| Error::InvalidRequest(format!("bad --netdev {iface:?}: unreadable ifindex")))
}

/// Pin path of a device's link. Named by ifindex: bpffs refuses `.` in
/// names, and interface names may contain it (VLANs: `eth0.100`).
fn netdev_pin(gen: &Path, ifindex: u32, dir: &str) -> std::path::PathBuf {
    gen.join("netdevs").join(format!("if{ifindex}-{dir}"))
}

/// The TC program, opened from its pin.
pub struct TcProgram {
    prog: SchedClassifier,
    gen: std::path::PathBuf,
}

impl TcProgram {
    pub fn open(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>) -> Result<Self> {
        let pin = load_pinned::<SchedClassifier>(ebpf, gen, programs::ISOLATE_TC, loaded, |p| {
            p.load().map_err(Error::program(format!("loading {}", programs::ISOLATE_TC)))
        })?;
        debug_assert_eq!(pin, prog_pin(gen, programs::ISOLATE_TC));
        let prog = SchedClassifier::from_pin(&pin).map_err(Error::program(format!("opening {}", pin.display())))?;
        Ok(Self { prog, gen: gen.to_owned() })
    }

    fn netdevs(&self) -> Result<HashMap<MapData, u32, u64>> {
        let p = map_pin(&self.gen, maps::NETDEVS);
        let data = MapData::from_pin(&p).map_err(Error::map(format!("opening {}", p.display())))?;
        HashMap::try_from(Map::HashMap(data)).map_err(Error::map(maps::NETDEVS))
    }

    /// Binds `iface` to the target and attaches the TC program to both
    /// directions (idempotent). Returns the mechanism used.
    pub fn attach(&mut self, iface: &str, cgroup_id: u64) -> Result<&'static str> {
        let idx = ifindex(iface)?;
        fs::create_dir_all(self.gen.join("netdevs")).map_err(Error::io("creating the netdevs pin dir"))?;
        let mut mechanism = "tcx";
        for (dir, ty) in [("ingress", TcAttachType::Ingress), ("egress", TcAttachType::Egress)] {
            let pin = netdev_pin(&self.gen, idx, dir);
            if pin.exists() {
                continue;
            }
            match self.prog.attach_with_options(iface, ty, TcAttachOptions::TcxOrder(LinkOrder::default())) {
                Ok(id) => {
                    let link = self.prog.take_link(id).map_err(Error::program("tc link"))?;
                    let link = FdLink::try_from(link).map_err(Error::link("tc link"))?;
                    link.pin(&pin).map_err(Error::pin(&pin))?;
                }
                Err(tcx_err) => {
                    // Pre-6.6 kernels: a clsact filter via netlink.
                    mechanism = "clsact";
                    let _ = tc::qdisc_add_clsact(iface);
                    let id = self
                        .prog
                        .attach_with_options(iface, ty, TcAttachOptions::Netlink(Default::default()))
                        .map_err(|e| Error::Kernel(format!("attaching TC to {iface} ({dir}): TCX: {tcx_err}; clsact: {e}")))?;
                    let link = self.prog.take_link(id).map_err(Error::program("tc link"))?;
                    // The filter belongs to the qdisc, not to this fd: keep
                    // it attached when the handle goes away.
                    std::mem::forget(link);
                }
            }
        }
        self.netdevs()?.insert(idx, cgroup_id, 0).map_err(Error::map(format!("updating {}", maps::NETDEVS)))?;
        Ok(mechanism)
    }

    /// Unbinds `iface` and detaches the TC program from it.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        // A device that has gone away took its TC programs with it.
        let Ok(idx) = ifindex(iface) else {
            return Ok(());
        };
        let _ = self.netdevs()?.remove(&idx);
        for dir in ["ingress", "egress"] {
            let _ = fs::remove_file(netdev_pin(&self.gen, idx, dir));
        }
        for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
            let _ = tc::qdisc_detach_program(iface, ty, programs::ISOLATE_TC);
        }
        Ok(())
    }
}
