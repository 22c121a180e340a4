//! Typed handles on the pinned maps, and the per-target state map every
//! program reads. Each level adds its own methods in its folder
//! (`throttle::maps`, `degrade::maps`); this file owns the handles and the
//! global switches ([`GuardConfig`]) that let hooks exit early.
use std::path::Path;

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use killpath_common::{
    level, maps, throttle as tclass, Bucket, ConnectAllow, DenialKey, GuardConfig, TargetState, ThrottleCounts, ThrottleKey, WriteAllow, MAX_CGROUP_DEPTH,
};

use super::{members::MemberMaps, object::typed, pins::map_pin};
use crate::error::{Error, Result};

/// Maps that outlive the agent: every map the object declares is pinned,
/// so a restarted agent (or the CLI's fallback stop) finds the same state.
pub const PINNED: &[&str] = &[
    maps::TARGETS,
    maps::GUARD_CONFIG,
    maps::GUARD_KILLS,
    maps::GUARD_KILLS_BY_TARGET,
    maps::GUARD_OUTSIDE_KILLED_AT,
    maps::COUNTERS,
    maps::NETDEVS,
    maps::DENIALS,
    maps::DENIAL_RATE,
    maps::DENIAL_EVENTS,
    maps::CONNECT_ALLOW,
    maps::OFFSETS,
    maps::WRITE_ALLOW,
    maps::THROTTLE,
    maps::THROTTLE_COUNTS,
    maps::SYSCALL_CLASS,
    maps::THROTTLE_EVENTS,
    maps::IOURING_CLASS,
    maps::IOURING_OPCODE_OFFSET,
    maps::MEMBERS,
    maps::ESCAPES,
    maps::ESCAPE_EVENTS,
    maps::MEMBER_LOST,
    maps::MEMBER_AGENT,
    maps::RELEASED,
    maps::MARK_SEQ,
    maps::MARKS_RECENT,
    maps::MARKS_RECENT_LOST,
    maps::PROTECTED_PIDS,
    maps::PROTECTED_DIRS,
    maps::RAISES,
    killpath_common::tripwire::maps::RULES,
    killpath_common::tripwire::maps::WINDOWS,
    killpath_common::tripwire::maps::DESTS,
    killpath_common::tripwire::maps::EVENTS,
    killpath_common::tripwire::maps::ACTIVE,
    killpath_common::trail_net::LISTENING,
    killpath_common::trail_net::CONNECTED_OUT,
    killpath_common::trail_net::OFFSETS,
    killpath_common::deadman::MAP,
    killpath_common::class_hooks::MAP,
    killpath_common::trail::EVENTS,
    killpath_common::trail::ON,
    killpath_common::trail::CONFIG,
    killpath_common::trail::LOST,
    killpath_common::trail_loss::BY_TARGET,
    killpath_common::trail::FLOWS,
    killpath_common::trail::FILE_WRITES,
    killpath_common::trail::OFFSETS,
];

/// Typed handles on the pinned maps. Used by the agent, and by the CLI's
/// fallback stop when the agent does not answer.
pub struct Maps {
    targets: HashMap<MapData, u64, TargetState>,
    /// What KP_TARGETS holds, as this process last wrote or read it: the
    /// global switches are recomputed from it on every write (a walk of
    /// the kernel map costs two syscalls per target, milliseconds with a
    /// thousand targets, on every command's path). Levels the kernel
    /// raises on its own are counted through the armed counts until the
    /// agent adopts them (`Maps::set`), and [`Maps::reload_mirror`] reads
    /// the kernel's again.
    mirror: std::collections::HashMap<u64, TargetState>,
    config: Array<MapData, GuardConfig>,
    kills: PerCpuArray<MapData, u64>,
    /// Guard kills per target; None when the pins predate it.
    kills_by_target: Option<PerCpuHashMap<MapData, u64, u64>>,
    counters: Option<PerCpuArray<MapData, u64>>,
    /// Degrade maps: only the agent opens them.
    pub(crate) degrade: Option<DegradeMaps>,
    /// Throttle maps: only the agent opens them.
    pub(crate) throttle: Option<ThrottleMaps>,
    /// Membership marks (`kernel::members`); None when the pins predate them.
    pub members: Option<MemberMaps>,
    /// Levels the kernel raised on its own (`kernel::raises`); None when
    /// the pins predate them.
    pub(crate) raises: Option<HashMap<MapData, u64, killpath_common::raise::Raise>>,
    /// Targets the kernel may raise on its own, per feature that arms them
    /// (`kernel::raises`); counted into the global switches.
    /// None in the CLI's no-agent stop, which keeps what the agent armed.
    pub(crate) armed: Option<std::collections::BTreeMap<&'static str, super::raises::Armed>>,
    /// Targets with a tripwire rule counted in the kernel (`agent/tripwire`);
    /// None in the CLI's no-agent stop, which keeps what the agent set.
    pub(crate) tripwire_targets: Option<u32>,
    /// Some `syscalls` tripwire exists: the sys_exit hook stays attached.
    pub(crate) tripwire_syscalls: bool,
}

/// The level-1 maps (methods in `throttle::maps`).
pub struct ThrottleMaps {
    pub(crate) buckets: HashMap<MapData, ThrottleKey, Bucket>,
    pub(crate) counts: PerCpuHashMap<MapData, ThrottleKey, ThrottleCounts>,
}

/// The level-2 maps (methods in `degrade::maps`).
pub struct DegradeMaps {
    pub(crate) allow: LpmTrie<MapData, ConnectAllow, u8>,
    pub(crate) write_allow: HashMap<MapData, WriteAllow, u8>,
    pub(crate) denials: PerCpuHashMap<MapData, DenialKey, u64>,
}

fn open_pin(gen: &Path, name: &str, wrap: fn(MapData) -> Map) -> Result<Map> {
    let p = map_pin(gen, name);
    let data = MapData::from_pin(&p).map_err(Error::map(format!("opening pinned map {}", p.display())))?;
    Ok(wrap(data))
}

impl Maps {
    /// Takes every map's handle out of a freshly loaded object.
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self> {
        let maps = Self {
            targets: typed(ebpf, maps::TARGETS)?,
            config: typed(ebpf, maps::GUARD_CONFIG)?,
            kills: typed(ebpf, maps::GUARD_KILLS)?,
            kills_by_target: Some(typed(ebpf, maps::GUARD_KILLS_BY_TARGET)?),
            counters: Some(typed(ebpf, maps::COUNTERS)?),
            degrade: Some(DegradeMaps {
                write_allow: typed(ebpf, maps::WRITE_ALLOW)?,
                allow: typed(ebpf, maps::CONNECT_ALLOW)?,
                denials: typed(ebpf, maps::DENIALS)?,
            }),
            throttle: Some(ThrottleMaps { buckets: typed(ebpf, maps::THROTTLE)?, counts: typed(ebpf, maps::THROTTLE_COUNTS)? }),
            members: Some(MemberMaps {
                members: typed(ebpf, maps::MEMBERS)?,
                escapes: Some(typed(ebpf, maps::ESCAPES)?),
                lost: Some(typed(ebpf, maps::MEMBER_LOST)?),
                agent: Some(typed(ebpf, maps::MEMBER_AGENT)?),
                released: Some(typed(ebpf, maps::RELEASED)?),
                seq: Some(typed(ebpf, maps::MARK_SEQ)?),
                outside_killed_at: Some(typed(ebpf, maps::GUARD_OUTSIDE_KILLED_AT)?),
                cache: Default::default(),
                recent: Some(super::mark_index::RecentMaps::new(typed(ebpf, maps::MARKS_RECENT)?, typed(ebpf, maps::MARKS_RECENT_LOST)?)),
            }),
            raises: Some(typed(ebpf, maps::RAISES)?),
            armed: None,
            tripwire_targets: Some(0),
            tripwire_syscalls: false,
            mirror: Default::default(),
        };
        let mut maps = maps.seed_armed();
        maps.reload_mirror();
        Ok(maps)
    }

    /// Opens the maps pinned in one generation directory (see
    /// [`super::pins::generations`]) by a running or dead agent: only the
    /// ones a stop needs.
    pub fn open_pinned(gen: &Path) -> Result<Self> {
        let mut maps = Self {
            targets: HashMap::try_from(open_pin(gen, maps::TARGETS, Map::HashMap)?).map_err(Error::map(maps::TARGETS))?,
            config: Array::try_from(open_pin(gen, maps::GUARD_CONFIG, Map::Array)?).map_err(Error::map(maps::GUARD_CONFIG))?,
            kills: PerCpuArray::try_from(open_pin(gen, maps::GUARD_KILLS, Map::PerCpuArray)?).map_err(Error::map(maps::GUARD_KILLS))?,
            kills_by_target: open_pin(gen, maps::GUARD_KILLS_BY_TARGET, Map::PerCpuHashMap).ok().and_then(|m| PerCpuHashMap::try_from(m).ok()),
            counters: open_pin(gen, maps::COUNTERS, Map::PerCpuArray).ok().and_then(|c| PerCpuArray::try_from(c).ok()),
            degrade: None,
            throttle: None,
            // An older build's pins may lack the membership maps: the stop
            // then acts on the cgroup only, as before.
            members: open_pin(gen, maps::MEMBERS, Map::HashMap).ok().and_then(|m| HashMap::try_from(m).ok()).map(|members| MemberMaps {
                members,
                escapes: open_pin(gen, maps::ESCAPES, Map::PerCpuHashMap).ok().and_then(|m| PerCpuHashMap::try_from(m).ok()),
                lost: open_pin(gen, maps::MEMBER_LOST, Map::PerCpuArray).ok().and_then(|m| PerCpuArray::try_from(m).ok()),
                agent: None,
                released: None,
                seq: open_pin(gen, maps::MARK_SEQ, Map::Array).ok().and_then(|m| Array::try_from(m).ok()),
                outside_killed_at: open_pin(gen, maps::GUARD_OUTSIDE_KILLED_AT, Map::PerCpuHashMap).ok().and_then(|m| PerCpuHashMap::try_from(m).ok()),
                cache: Default::default(),
                recent: open_pin(gen, maps::MARKS_RECENT, Map::HashMap)
                    .ok()
                    .and_then(|m| HashMap::try_from(m).ok())
                    .zip(open_pin(gen, maps::MARKS_RECENT_LOST, Map::Array).ok().and_then(|m| Array::try_from(m).ok()))
                    .map(|(log, lost)| super::mark_index::RecentMaps::new(log, lost)),
            }),
            raises: open_pin(gen, maps::RAISES, Map::HashMap).ok().and_then(|m| HashMap::try_from(m).ok()),
            armed: None,
            tripwire_targets: None,
            tripwire_syscalls: false,
            mirror: Default::default(),
        };
        maps.reload_mirror();
        Ok(maps)
    }

    /// Reads KP_TARGETS into the mirror the global switches are counted
    /// from (at open, and periodically: levels the kernel raised).
    pub fn reload_mirror(&mut self) {
        self.mirror = self.targets().into_iter().collect();
    }

    /// Sum over CPUs of counter `index` (see `killpath_common::counter`).
    pub fn counter(&self, index: u32) -> u64 {
        self.counters.as_ref().and_then(|c| c.get(&index, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// The target states pinned in generation `gen`, reading only the
    /// targets map (an older build's other maps may differ in layout).
    pub fn pinned_targets(gen: &Path) -> Result<Vec<(u64, TargetState)>> {
        let map: HashMap<MapData, u64, TargetState> =
            HashMap::try_from(open_pin(gen, maps::TARGETS, Map::HashMap)?).map_err(Error::map(map_pin(gen, maps::TARGETS).display()))?;
        Ok(map.iter().filter_map(|r| r.ok()).collect())
    }

    /// Every target the kernel knows, by cgroup id.
    pub fn targets(&self) -> Vec<(u64, TargetState)> {
        // In batches: the agent reads it every few seconds (`levels_check`).
        super::batch::lookup_all(&self.targets).unwrap_or_else(|| self.targets.iter().filter_map(|r| r.ok()).collect())
    }

    /// A target's state as last read by [`Maps::reload_mirror`] or written
    /// by this process.
    pub fn mirrored(&self, cgroup_id: u64) -> Option<TargetState> {
        self.mirror.get(&cgroup_id).copied()
    }

    pub fn get(&self, cgroup_id: u64) -> Option<TargetState> {
        self.targets.get(&cgroup_id, 0).ok()
    }

    /// Sets a target's state, then recomputes the guard's global switch.
    pub fn set(&mut self, cgroup_id: u64, state: TargetState) -> Result<()> {
        if state.depth >= MAX_CGROUP_DEPTH {
            return Err(Error::InvalidRequest(format!("cgroup depth {} exceeds {MAX_CGROUP_DEPTH}", state.depth)));
        }
        // A raise the agent has not adopted yet is never written over, not
        // even for a moment.
        let state = self.raise_of(cgroup_id).and_then(|r| super::raises::merge(state, &r)).unwrap_or(state);
        self.targets.insert(cgroup_id, state, 0).map_err(Error::map(format!("updating {}", maps::TARGETS)))?;
        // The kernel may have raised this target on its own (a tripwire, a
        // lease) between the read above and this write: it records the
        // raise in KP_RAISES before it writes KP_TARGETS, so reading the
        // record now sees every raise the write above may have overwritten.
        let mut written = state;
        if let Some(merged) = self.raise_of(cgroup_id).and_then(|r| super::raises::merge(state, &r)) {
            self.targets.insert(cgroup_id, merged, 0).map_err(Error::map(format!("updating {}", maps::TARGETS)))?;
            written = merged;
        }
        self.mirror.insert(cgroup_id, written);
        self.sync_config()
    }

    /// Removes a target's state (no-op if absent).
    pub fn remove(&mut self, cgroup_id: u64) -> Result<()> {
        let _ = self.targets.remove(&cgroup_id);
        self.mirror.remove(&cgroup_id);
        self.sync_config()
    }

    /// The global switches as the kernel sees them now.
    pub fn config(&self) -> Option<GuardConfig> {
        self.config.get(&0, 0).ok()
    }

    /// Recomputes GuardConfig from the targets and throttle maps, the
    /// single source of truth. Without the throttle maps open (the CLI's
    /// fallback stop), the throttle switches are kept as they are.
    pub(crate) fn sync_config(&mut self) -> Result<()> {
        let mut cfg = GuardConfig::default();
        let targets = &self.mirror;
        match &self.throttle {
            Some(t) => {
                let mut syscall = std::collections::BTreeSet::new();
                let mut egress = std::collections::BTreeSet::new();
                for k in t.buckets.keys().filter_map(|k| k.ok()) {
                    let Some(st) = targets.get(&k.cgroup_id) else {
                        continue;
                    };
                    cfg.throttle_depth_mask |= 1u32 << st.depth.min(MAX_CGROUP_DEPTH - 1);
                    if k.class < tclass::SYSCALL_CLASSES {
                        syscall.insert(k.cgroup_id);
                    } else {
                        egress.insert(k.cgroup_id);
                    }
                }
                cfg.syscall_throttled = syscall.len() as u32;
                cfg.egress_throttled = egress.len() as u32;
            }
            None => {
                if let Some(cur) = self.config() {
                    cfg.syscall_throttled = cur.syscall_throttled;
                    cfg.egress_throttled = cur.egress_throttled;
                    cfg.throttle_depth_mask = cur.throttle_depth_mask;
                }
            }
        }
        // Armed counts: the agent's own, or (the CLI's no-agent stop)
        // whatever the agent left.
        let armed = match &self.armed {
            Some(by_feature) => by_feature.values().fold(super::raises::Armed::default(), |a, b| a.plus(*b)),
            None => self.config().map(super::raises::Armed::of).unwrap_or_default(),
        };
        cfg.armed_isolate = armed.isolate;
        cfg.armed_stop = armed.stop;
        cfg.armed_degrade = armed.degrade;
        cfg.isolated_targets += armed.isolate;
        cfg.stopped_targets += armed.stop;
        cfg.degraded_targets += armed.degrade;
        cfg.tripwire_targets = self.tripwire_targets.unwrap_or_else(|| self.config().map_or(0, |c| c.tripwire_targets));
        // Dead-man leases: the targets the agent's lease feature arms
        // (agent/deadman.rs); the no-agent stop keeps what the agent set.
        cfg.leased_targets = match &self.armed {
            Some(by_feature) => by_feature.get("lease").map_or(0, |a| a.isolate + a.stop + a.degrade),
            None => self.config().map_or(0, |c| c.leased_targets),
        };
        for st in targets.values() {
            cfg.depth_mask |= 1u32 << st.depth.min(MAX_CGROUP_DEPTH - 1);
            if st.level >= level::STOPPED {
                cfg.stopped_targets += 1;
            }
            if st.level >= level::ISOLATE {
                cfg.isolated_targets += 1;
            }
            if st.revoked != 0 {
                cfg.degraded_targets += 1;
            }
            if st.audit != 0 {
                cfg.audited_targets += 1;
            }
        }
        self.config.set(0, cfg, 0).map_err(Error::map(format!("updating {}", maps::GUARD_CONFIG)))
    }

    /// Tasks the guard has killed since its maps were created.
    pub fn guard_kills(&self) -> u64 {
        self.kills.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Tasks the guard has killed for one target (its cgroup id); None
    /// when the pinned maps predate the per-target count.
    pub fn guard_kills_of(&self, target: u64) -> Option<u64> {
        let m = self.kills_by_target.as_ref()?;
        Some(m.get(&target, 0).map(|v| v.iter().sum()).unwrap_or(0))
    }

    /// Forgets a released target's guard kills.
    pub fn clear_guard_kills(&mut self, target: u64) {
        if let Some(m) = self.kills_by_target.as_mut() {
            let _ = m.remove(&target);
        }
    }
}
