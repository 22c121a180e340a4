//! The dead-man lease's kernel side (see killpath-common's `deadman` and
//! killpath-ebpf's `deadman.rs`): the pinned `KP_LEASES` array, and the
//! perf_event tick that enforces the deadlines, attached only while some
//! lease is live. Its link is pinned (and held by fd like every link of
//! the generation), so the tick outlives a SIGKILLed agent.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        links::FdLink,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent,
    },
    Ebpf,
};
use killpath_common::deadman::{Lease, MAP, MAX_LEASES, PROGRAM, TICK_NS};
use tracing::{info, warn};

use super::{
    links::LinkKeeper,
    object::{load_pinned, typed},
    pins::{link_pin, map_pin},
};
use crate::error::{Error, Result};

/// The leases map and the tick program (loaded; attached while needed).
pub struct Leases {
    map: Array<MapData, Lease>,
    /// The loaded program's pin, or why this kernel cannot load it.
    prog_pin: std::result::Result<PathBuf, String>,
    link_pin: PathBuf,
    links: LinkKeeper,
}

impl Leases {
    /// Takes the map out of the object and loads (and pins) the tick.
    /// Live leases of an older build's generation are copied in first, so
    /// an upgrade keeps every deadline.
    pub fn load(ebpf: &mut Ebpf, gen: &Path, old_generations: &[PathBuf], loaded: &mut Vec<&'static str>, links: LinkKeeper) -> Result<Self> {
        let mut map: Array<MapData, Lease> = typed(ebpf, MAP)?;
        for old in old_generations {
            let Ok(data) = MapData::from_pin(map_pin(old, MAP)) else { continue };
            let Ok(theirs) = Array::<MapData, Lease>::try_from(Map::Array(data)) else { continue };
            for slot in 0..MAX_LEASES {
                if let (Ok(l), Ok(mine)) = (theirs.get(&slot, 0), map.get(&slot, 0)) {
                    if l.cgroup_id != 0 && mine.cgroup_id == 0 {
                        map.set(slot, l, 0).map_err(Error::map(format!("copying {MAP}")))?;
                    }
                }
            }
        }
        let prog_pin =
            load_pinned::<PerfEvent>(ebpf, gen, PROGRAM, loaded, |p| p.load().map_err(Error::program(format!("loading {PROGRAM}")))).map_err(|e| e.to_string());
        if let Err(e) = &prog_pin {
            warn!("dead-man leases unavailable: {e}");
        }
        Ok(Self { map, prog_pin, link_pin: link_pin(gen, PROGRAM), links })
    }

    /// Why leases cannot be enforced here, if they cannot.
    pub fn error(&self) -> Option<&str> {
        self.prog_pin.as_ref().err().map(String::as_str)
    }

    /// Every occupied slot.
    pub fn all(&self) -> Vec<(u32, Lease)> {
        (0..MAX_LEASES).filter_map(|s| self.map.get(&s, 0).ok().filter(|l| l.cgroup_id != 0).map(|l| (s, l))).collect()
    }

    /// The slot of `cgroup_id`'s lease.
    pub fn find(&self, cgroup_id: u64) -> Option<(u32, Lease)> {
        self.all().into_iter().find(|(_, l)| l.cgroup_id == cgroup_id)
    }

    /// The lease in `slot`, if occupied.
    pub fn get(&self, slot: u32) -> Option<Lease> {
        self.map.get(&slot, 0).ok().filter(|l| l.cgroup_id != 0)
    }

    /// A free slot, or an error naming the limit.
    pub fn free_slot(&self) -> Result<u32> {
        (0..MAX_LEASES)
            .find(|s| self.map.get(s, 0).is_ok_and(|l| l.cgroup_id == 0))
            .ok_or_else(|| Error::InvalidRequest(format!("every one of the {MAX_LEASES} lease slots is taken: cancel a lease first")))
    }

    /// Writes `lease` into `slot`.
    pub fn set(&mut self, slot: u32, lease: Lease) -> Result<()> {
        self.map.set(slot, lease, 0).map_err(Error::map(format!("updating {MAP}")))
    }

    /// Frees `slot`.
    pub fn clear(&mut self, slot: u32) -> Result<()> {
        self.set(slot, Lease::default())
    }

    /// Every live (not expired) lease counted by its expiry level.
    pub fn armed(&self) -> super::raises::Armed {
        let mut a = super::raises::Armed::default();
        for (_, l) in self.all().into_iter().filter(|(_, l)| l.expired_ns == 0) {
            a.add(l.level, 0);
        }
        a
    }

    /// Whether the tick is attached.
    pub fn ticking(&self) -> bool {
        self.link_pin.exists()
    }

    /// Attaches the tick while `want` and detaches it otherwise.
    pub fn sync_tick(&mut self, want: bool) -> Result<()> {
        if want && !self.ticking() {
            self.attach()
        } else if !want && self.ticking() {
            // The pin and the agent's fd are the link's references:
            // dropping both detaches the tick and closes its perf event.
            self.links.release(&self.link_pin);
            fs::remove_file(&self.link_pin).map_err(Error::io(format!("removing {}", self.link_pin.display())))?;
            info!("dead-man lease tick detached: no live lease");
            Ok(())
        } else {
            Ok(())
        }
    }

    /// A software cpu-clock perf event on the first online CPU, sampling
    /// every TICK_NS (an hrtimer: it fires on an idle CPU too), with the
    /// tick attached through a bpf_link (Linux 5.15+) and pinned. An older
    /// kernel attaches through PERF_EVENT_IOC_SET_BPF, which cannot be
    /// pinned: that is refused, since such a tick would die with the agent.
    fn attach(&mut self) -> Result<()> {
        let pin = self.prog_pin.as_ref().map_err(|e| Error::Kernel(format!("dead-man leases unavailable: {e}")))?;
        let mut p = PerfEvent::from_pin(pin).map_err(Error::program(format!("opening {}", pin.display())))?;
        let cpu = aya::util::online_cpus().ok().and_then(|c| c.first().copied()).unwrap_or(0);
        let id = p
            .attach(PerfEventConfig::Software(SoftwareEvent::CpuClock), PerfEventScope::AllProcessesOneCpu { cpu }, SamplePolicy::Period(TICK_NS), false)
            .map_err(Error::program(format!("attaching {PROGRAM} to a cpu-clock perf event on cpu {cpu}")))?;
        let link = p.take_link(id).map_err(Error::program(PROGRAM))?;
        let link = FdLink::try_from(link)
            .map_err(Error::link("the lease tick cannot be pinned (kernel without perf_event bpf_link, Linux < 5.15): it would die with the agent"))?;
        link.pin(&self.link_pin).map_err(Error::pin(&self.link_pin))?;
        self.links.hold(&self.link_pin)?;
        info!(cpu, period_ns = TICK_NS, "dead-man lease tick attached and pinned");
        Ok(())
    }
}
