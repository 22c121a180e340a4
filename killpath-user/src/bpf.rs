//! The kernel side as the agent sees it: the eBPF object, its pinned maps
//! and links, and the per-target state map the programs read.
//!
//! Fail-static: maps and links are pinned under bpffs, so killing the agent
//! leaves every program attached and every target's state in place. A
//! restarted agent reuses the pinned maps (aya `map_pin_path`) and, when a
//! program's link pin exists, does not load or attach that program again.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{links::FdLink, RawTracePoint},
    Ebpf, EbpfLoader,
};
use killpath_common::{
    cap, level, maps, programs, throttle as tclass, Bucket, ConnectAllow, DenialKey, GuardConfig, KernelOffsets, TargetState, ThrottleCounts,
    ThrottleKey, WriteAllow, MAX_CGROUP_DEPTH,
};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    isolate::IsolatePrograms,
};

/// The compiled eBPF object, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/killpath"));

/// Guard programs and the raw tracepoints they attach to. There is
/// deliberately no sys_enter guard: `cargo xtask bench` measured it at
/// ~125 ns on every syscall of every process on the host (about 1.5x on a
/// getppid loop) even with nothing stopped. A task of a stopped target is
/// caught at its next fork or context switch instead (a syscall-heavy or
/// CPU-bound task is switched out at the latest at the next tick), and
/// cgroup.kill has already sent it SIGKILL.
const GUARDS: &[(&str, &str)] = &[(programs::GUARD_FORK, "sched_process_fork"), (programs::GUARD_SWITCH, "sched_switch")];

/// Maps that outlive the agent.
const PINNED_MAPS: &[&str] = &[
    maps::TARGETS,
    maps::GUARD_CONFIG,
    maps::GUARD_KILLS,
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
];

/// Default bpffs directory for killpath's pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/killpath";

/// Mounts bpffs at /sys/fs/bpf unless some bpffs already covers `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(Error::io("reading /proc/self/mounts"))?;
    let covered = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_d, mnt, ty) = (f.next(), f.next(), f.next());
        ty == Some("bpf") && mnt.is_some_and(|m| dir.starts_with(m))
    });
    if covered {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Err(Error::Kernel(format!("{} is not on a bpffs mount", dir.display())));
    }
    fs::create_dir_all(root).map_err(Error::io("creating /sys/fs/bpf"))?;
    // bpffs is not mounted on the build hosts (see platform notes); pins need it.
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| Error::Kernel(format!("mounting bpffs at /sys/fs/bpf: {e}")))?;
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Typed handles on the pinned maps. Used by the agent, and by the CLI's
/// fallback stop when the agent does not answer.
pub struct Maps {
    targets: HashMap<MapData, u64, TargetState>,
    config: Array<MapData, GuardConfig>,
    kills: PerCpuArray<MapData, u64>,
    counters: Option<PerCpuArray<MapData, u64>>,
    /// Degrade maps: only the agent opens them.
    degrade: Option<DegradeMaps>,
    /// Throttle maps: only the agent opens them.
    throttle: Option<ThrottleMaps>,
}

/// The level-1 maps.
pub struct ThrottleMaps {
    buckets: HashMap<MapData, ThrottleKey, Bucket>,
    counts: PerCpuHashMap<MapData, ThrottleKey, ThrottleCounts>,
}

/// The level-2 maps.
pub struct DegradeMaps {
    allow: LpmTrie<MapData, ConnectAllow, u8>,
    write_allow: HashMap<MapData, WriteAllow, u8>,
    denials: PerCpuHashMap<MapData, DenialKey, u64>,
}

impl Maps {
    fn from_maps(targets: Map, config: Map, kills: Map) -> Result<Self> {
        Ok(Self {
            counters: None,
            degrade: None,
            throttle: None,
            targets: HashMap::try_from(targets).map_err(|e| Error::Kernel(format!("{}: {e}", maps::TARGETS)))?,
            config: Array::try_from(config).map_err(|e| Error::Kernel(format!("{}: {e}", maps::GUARD_CONFIG)))?,
            kills: PerCpuArray::try_from(kills).map_err(|e| Error::Kernel(format!("{}: {e}", maps::GUARD_KILLS)))?,
        })
    }

    /// Opens the maps pinned in one generation directory (see
    /// [`generations`]) by a running or dead agent.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let p = map_pin(pin_dir, name);
            let data = MapData::from_pin(&p).map_err(|e| Error::Kernel(format!("opening pinned map {}: {e}", p.display())))?;
            Ok(match name {
                n if n == maps::TARGETS => Map::HashMap(data),
                n if n == maps::GUARD_KILLS => Map::PerCpuArray(data),
                _ => Map::Array(data),
            })
        };
        let mut m = Self::from_maps(open(maps::TARGETS)?, open(maps::GUARD_CONFIG)?, open(maps::GUARD_KILLS)?)?;
        m.counters = open(maps::COUNTERS).ok().and_then(|c| PerCpuArray::try_from(c).ok());
        Ok(m)
    }

    /// Sum over CPUs of counter `index` (see `killpath_common::counter`).
    pub fn counter(&self, index: u32) -> u64 {
        self.counters.as_ref().and_then(|c| c.get(&index, 0).ok()).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// The target states pinned in generation `dir`, reading only the
    /// targets map (an older build's other maps may differ in layout).
    pub fn pinned_targets(dir: &Path) -> Result<Vec<(u64, TargetState)>> {
        let p = map_pin(dir, maps::TARGETS);
        let data = MapData::from_pin(&p).map_err(|e| Error::Kernel(format!("opening pinned map {}: {e}", p.display())))?;
        let map: HashMap<MapData, u64, TargetState> =
            HashMap::try_from(Map::HashMap(data)).map_err(|e| Error::Kernel(format!("{}: {e}", p.display())))?;
        Ok(map.iter().filter_map(|r| r.ok()).collect())
    }

    /// Every target the kernel knows, by cgroup id.
    pub fn targets(&self) -> Vec<(u64, TargetState)> {
        self.targets.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn get(&self, cgroup_id: u64) -> Option<TargetState> {
        self.targets.get(&cgroup_id, 0).ok()
    }

    /// Sets a target's state, then recomputes the guard's global switch.
    pub fn set(&mut self, cgroup_id: u64, state: TargetState) -> Result<()> {
        if state.depth >= MAX_CGROUP_DEPTH {
            return Err(Error::InvalidRequest(format!("cgroup depth {} exceeds {MAX_CGROUP_DEPTH}", state.depth)));
        }
        self.targets.insert(cgroup_id, state, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::TARGETS)))?;
        self.sync_config()
    }

    /// Removes a target's state (no-op if absent).
    pub fn remove(&mut self, cgroup_id: u64) -> Result<()> {
        let _ = self.targets.remove(&cgroup_id);
        self.sync_config()
    }

    /// Recomputes GuardConfig from the targets and throttle maps, the
    /// single source of truth. Without the throttle maps open (the CLI's
    /// fallback stop), the throttle switches are kept as they are.
    fn sync_config(&mut self) -> Result<()> {
        let mut cfg = GuardConfig::default();
        let targets = self.targets();
        match &self.throttle {
            Some(t) => {
                let mut syscall = std::collections::BTreeSet::new();
                let mut egress = std::collections::BTreeSet::new();
                for k in t.buckets.keys().filter_map(|k| k.ok()) {
                    let Some((_, st)) = targets.iter().find(|(id, _)| *id == k.cgroup_id) else { continue };
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
                if let Ok(cur) = self.config.get(&0, 0) {
                    cfg.syscall_throttled = cur.syscall_throttled;
                    cfg.egress_throttled = cur.egress_throttled;
                    cfg.throttle_depth_mask = cur.throttle_depth_mask;
                }
            }
        }
        for (_, st) in targets {
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
        }
        self.config.set(0, cfg, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::GUARD_CONFIG)))
    }

    fn degrade_maps(&mut self) -> Result<&mut DegradeMaps> {
        self.degrade.as_mut().ok_or_else(|| Error::Kernel("degrade maps not open".into()))
    }

    /// Adds an `--allow-connect` entry.
    pub fn allow_connect(&mut self, prefix_len: u32, key: ConnectAllow) -> Result<()> {
        let d = self.degrade_maps()?;
        d.allow.insert(&Key::new(prefix_len, key), 1, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::CONNECT_ALLOW)))
    }

    /// Removes every `--allow-connect` entry of a target.
    pub fn clear_allow_connect(&mut self, cgroup_id: u64) -> Result<()> {
        let d = self.degrade_maps()?;
        let mine: Vec<Key<ConnectAllow>> = d.allow.keys().filter_map(|k| k.ok()).filter(|k| k.data().cgroup_id == cgroup_id.to_ne_bytes()).collect();
        for k in mine {
            let _ = d.allow.remove(&k);
        }
        Ok(())
    }

    /// Adds an `--allow-write` directory.
    pub fn allow_write(&mut self, key: WriteAllow) -> Result<()> {
        let d = self.degrade_maps()?;
        d.write_allow.insert(key, 1, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::WRITE_ALLOW)))
    }

    /// Removes every `--allow-write` directory of a target.
    pub fn clear_allow_write(&mut self, cgroup_id: u64) -> Result<()> {
        let d = self.degrade_maps()?;
        let mine: Vec<WriteAllow> = d.write_allow.keys().filter_map(|k| k.ok()).filter(|k| k.cgroup_id == cgroup_id).collect();
        for k in mine {
            let _ = d.write_allow.remove(&k);
        }
        Ok(())
    }

    /// Removes a released target's denial counters.
    pub fn clear_denials(&mut self, cgroup_id: u64) {
        if let Some(d) = self.degrade.as_mut() {
            for cap in 0..cap::COUNT {
                let _ = d.denials.remove(&DenialKey { cgroup_id, cap, _pad: 0 });
            }
        }
    }

    /// Denials of a target per capability bit index (exact: summed over CPUs).
    pub fn denials(&self, cgroup_id: u64) -> Vec<(u32, u64)> {
        let Some(d) = self.degrade.as_ref() else { return Vec::new() };
        (0..cap::COUNT)
            .filter_map(|i| {
                let v = d.denials.get(&DenialKey { cgroup_id, cap: i, _pad: 0 }, 0).ok()?;
                Some((i, v.iter().sum()))
            })
            .collect()
    }

    fn throttle_maps(&mut self) -> Result<&mut ThrottleMaps> {
        self.throttle.as_mut().ok_or_else(|| Error::Kernel("throttle maps not open".into()))
    }

    /// Installs a target's buckets (replacing all of its old ones) and
    /// recomputes the global switches. Bucket state starts fresh (full).
    pub fn set_throttle(&mut self, cgroup_id: u64, buckets: &[(u32, Bucket)]) -> Result<()> {
        let t = self.throttle_maps()?;
        for class in 0..tclass::COUNT {
            if !buckets.iter().any(|(c, _)| *c == class) {
                let _ = t.buckets.remove(&ThrottleKey { cgroup_id, class, _pad: 0 });
            }
        }
        for (class, b) in buckets {
            t.buckets.insert(ThrottleKey { cgroup_id, class: *class, _pad: 0 }, *b, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::THROTTLE)))?;
        }
        self.sync_config()
    }

    /// Removes a target's buckets and counts.
    pub fn clear_throttle(&mut self, cgroup_id: u64) -> Result<()> {
        self.set_throttle(cgroup_id, &[])?;
        let t = self.throttle_maps()?;
        for class in 0..tclass::COUNT {
            let _ = t.counts.remove(&ThrottleKey { cgroup_id, class, _pad: 0 });
        }
        Ok(())
    }

    /// Classes with a bucket for this target.
    pub fn throttle_classes(&self, cgroup_id: u64) -> Vec<u32> {
        let Some(t) = self.throttle.as_ref() else { return Vec::new() };
        (0..tclass::COUNT).filter(|c| t.buckets.get(&ThrottleKey { cgroup_id, class: *c, _pad: 0 }, 0).is_ok()).collect()
    }

    /// Counts of one bucket, summed over CPUs.
    pub fn throttle_counts(&self, cgroup_id: u64, class: u32) -> ThrottleCounts {
        let Some(t) = self.throttle.as_ref() else { return ThrottleCounts::default() };
        let Ok(v) = t.counts.get(&ThrottleKey { cgroup_id, class, _pad: 0 }, 0) else { return ThrottleCounts::default() };
        v.iter().fold(ThrottleCounts::default(), |a, c| ThrottleCounts { passed: a.passed + c.passed, paced: a.paced + c.paced, denied: a.denied + c.denied })
    }

    /// Whether any target has a syscall ceiling (the sys_exit hook is needed).
    pub fn any_syscall_throttle(&self) -> bool {
        self.config.get(&0, 0).is_ok_and(|c| c.syscall_throttled != 0)
    }

    /// Tasks the guard has killed since its maps were created.
    pub fn guard_kills(&self) -> u64 {
        self.kills.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

pub(crate) fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

pub(crate) fn link_pin(pin_dir: &Path, prog: &str) -> PathBuf {
    pin_dir.join("links").join(prog)
}

/// Pins live in one directory per build of the eBPF object:
/// `<pin-dir>/gen-<sha256 of the object, 16 hex>`. A restart of the same
/// build reuses its generation; a new build (whose maps or programs may
/// differ in layout) gets a new generation, takes over the old one's
/// target states, attaches its own programs, and only then retires the
/// old generation, so enforcement never lapses across an upgrade.
pub fn generation_dir(pin_dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(OBJECT);
    pin_dir.join(format!("gen-{}", &hex::encode(hash)[..16]))
}

/// Every generation under `pin_dir` (the current build's first, if present),
/// plus `pin_dir` itself if it holds a pre-generation layout.
pub fn generations(pin_dir: &Path) -> Vec<PathBuf> {
    let current = generation_dir(pin_dir);
    let mut out: Vec<PathBuf> = current.exists().then(|| current.clone()).into_iter().collect();
    if let Ok(rd) = fs::read_dir(pin_dir) {
        let mut others: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p != &current && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gen-"))).collect();
        others.sort();
        out.extend(others);
    }
    if pin_dir.join("maps").exists() {
        out.push(pin_dir.to_owned());
    }
    out
}

/// Removes an old generation's pins (its programs detach as the last
/// references go). For the legacy layout only killpath's subdirectories go.
fn retire(dir: &Path, pin_dir: &Path) -> Result<()> {
    if dir == pin_dir {
        for sub in ["maps", "links", "progs", "targets", "netdevs"] {
            let d = dir.join(sub);
            if d.exists() {
                fs::remove_dir_all(&d).map_err(Error::io(format!("removing {}", d.display())))?;
            }
        }
        Ok(())
    } else {
        fs::remove_dir_all(dir).map_err(Error::io(format!("removing {}", dir.display())))
    }
}

/// The loaded (or re-found) kernel side.
pub struct Enforcer {
    pub maps: Maps,
    pin_dir: PathBuf,
    /// Generations of an older build, kept until the new one is in force.
    old_generations: Vec<PathBuf>,
    /// Programs this process loaded or attached (empty when all were found pinned).
    pub attached_now: Vec<&'static str>,
    /// Level-3 programs: per-target cgroup hooks and host-wide LSM hooks.
    pub isolate: IsolatePrograms,
    /// Sampled denials (level 2); the agent takes it to read events.
    pub denial_events: Option<RingBuf<MapData>>,
    /// Tasks paused by a pace ceiling (level 1); the agent's pacer takes it.
    pub throttle_events: Option<RingBuf<MapData>>,
    /// Pin of the loaded (not necessarily attached) sys_exit throttle.
    sys_exit_pin: PathBuf,
    /// Where its link is pinned while attached (in this generation; kept
    /// here because hashing the object for the generation name is slow).
    sys_exit_link_pin: PathBuf,
    /// Why fs.write cannot be enforced here (kernel BTF), if it cannot.
    pub fs_error: Option<String>,
    /// Why signal cannot be enforced here (kernel BTF), if it cannot.
    pub signal_error: Option<String>,
    // Keeps the object alive for the lifetime of the agent; the pins keep
    // the programs alive after it.
    _ebpf: Ebpf,
}

impl Enforcer {
    /// Loads the object reusing pinned maps, and attaches and pins every
    /// guard program whose link is not pinned yet.
    pub fn open(base: &Path) -> Result<Self> {
        ensure_bpffs(base)?;
        let old_generations: Vec<PathBuf> = generations(base).into_iter().filter(|g| g != &generation_dir(base)).collect();
        let gen = generation_dir(base);
        let pin_dir = gen.as_path();
        for sub in ["maps", "links", "progs", "targets", "netdevs"] {
            fs::create_dir_all(pin_dir.join(sub)).map_err(Error::io(format!("creating {}", pin_dir.join(sub).display())))?;
        }
        let pins: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|n| (*n, map_pin(pin_dir, n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Kernel(format!("loading the eBPF object: {e}")))?;
        let mut attached_now = Vec::new();
        for (prog, tp) in GUARDS {
            let pin = link_pin(pin_dir, prog);
            if pin.exists() {
                debug!(prog, "link already pinned; not loading a second copy");
                continue;
            }
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| Error::Kernel(format!("program {prog} missing from the object")))?
                .try_into()
                .map_err(|e| Error::Kernel(format!("{prog}: {e}")))?;
            p.load().map_err(|e| Error::Kernel(format!("loading {prog}: {e}")))?;
            let id = p.attach(tp).map_err(|e| Error::Kernel(format!("attaching {prog} to raw_tracepoint/{tp}: {e}")))?;
            let link: FdLink = p.take_link(id).map_err(|e| Error::Kernel(format!("{prog}: {e}")))?.into();
            link.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
            attached_now.push(*prog);
            info!(prog, tp, "guard attached and pinned");
        }
        let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| Error::Kernel(format!("map {name} missing from the object")));
        let isolate = IsolatePrograms::open(&mut ebpf, pin_dir, &mut attached_now)?;
        let mut maps = Maps::from_maps(take(&mut ebpf, maps::TARGETS)?, take(&mut ebpf, maps::GUARD_CONFIG)?, take(&mut ebpf, maps::GUARD_KILLS)?)?;
        maps.counters = Some(
            PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::COUNTERS)))?,
        );
        // Struct offsets for the pointer-following hooks (fs.write, signal).
        let btf = crate::kernel_btf::resolve();
        let mut offsets: Array<MapData, KernelOffsets> =
            Array::try_from(take(&mut ebpf, maps::OFFSETS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::OFFSETS)))?;
        offsets.set(0, btf.offsets, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::OFFSETS)))?;
        maps.degrade = Some(DegradeMaps {
            write_allow: HashMap::try_from(take(&mut ebpf, maps::WRITE_ALLOW)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::WRITE_ALLOW)))?,
            allow: LpmTrie::try_from(take(&mut ebpf, maps::CONNECT_ALLOW)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::CONNECT_ALLOW)))?,
            denials: PerCpuHashMap::try_from(take(&mut ebpf, maps::DENIALS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::DENIALS)))?,
        });
        let mut classes: Array<MapData, u32> =
            Array::try_from(take(&mut ebpf, maps::SYSCALL_CLASS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::SYSCALL_CLASS)))?;
        if let Ok(table) = crate::throttle::syscall_class_table() {
            for (nr, c) in table {
                classes.set(nr, c, 0).map_err(|e| Error::Kernel(format!("updating {}: {e}", maps::SYSCALL_CLASS)))?;
            }
        }
        maps.throttle = Some(ThrottleMaps {
            buckets: HashMap::try_from(take(&mut ebpf, maps::THROTTLE)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::THROTTLE)))?,
            counts: PerCpuHashMap::try_from(take(&mut ebpf, maps::THROTTLE_COUNTS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::THROTTLE_COUNTS)))?,
        });
        let throttle_events = Some(
            RingBuf::try_from(take(&mut ebpf, maps::THROTTLE_EVENTS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::THROTTLE_EVENTS)))?,
        );
        // Loaded (and pinned) now, attached only while something is
        // throttled: throttling is then a map update plus, for the first
        // syscall ceiling on the host, one link creation.
        let sys_exit_pin = crate::isolate::load_pinned::<RawTracePoint>(&mut ebpf, pin_dir, programs::THROTTLE_SYS_EXIT, &mut attached_now, |p| {
            p.load().map_err(|e| Error::Kernel(format!("loading {}: {e}", programs::THROTTLE_SYS_EXIT)))
        })?;
        let denial_events = Some(
            RingBuf::try_from(take(&mut ebpf, maps::DENIAL_EVENTS)?).map_err(|e| Error::Kernel(format!("{}: {e}", maps::DENIAL_EVENTS)))?,
        );
        // Take over target states from an older build's maps (the higher
        // level wins), so the new programs enforce what the old ones did.
        for old in &old_generations {
            match Maps::pinned_targets(old) {
                Ok(entries) => {
                    for (id, st) in entries {
                        if maps.get(id).is_none_or(|cur| cur.level < st.level) {
                            maps.set(id, st)?;
                        }
                    }
                }
                Err(e) => warn!(generation = %old.display(), "cannot read an old generation's targets: {e}"),
            }
        }
        Ok(Self {
            maps,
            pin_dir: base.to_owned(),
            old_generations,
            attached_now,
            isolate,
            denial_events,
            throttle_events,
            sys_exit_pin,
            sys_exit_link_pin: link_pin(pin_dir, programs::THROTTLE_SYS_EXIT),
            fs_error: btf.fs_error,
            signal_error: btf.signal_error,
            _ebpf: ebpf,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches the sys_exit throttle while some target has a syscall
    /// ceiling and detaches it when none has, so that with nothing
    /// throttled no per-syscall hook runs on the host. The link is pinned:
    /// the ceiling holds with the agent dead. Returns whether attached.
    pub fn sync_syscall_hook(&mut self) -> Result<bool> {
        let pin = self.sys_exit_link_pin.clone();
        let want = self.maps.any_syscall_throttle();
        if want && !pin.exists() {
            let mut p = RawTracePoint::from_pin(&self.sys_exit_pin).map_err(|e| Error::Kernel(format!("opening {}: {e}", self.sys_exit_pin.display())))?;
            let id = p.attach("sys_exit").map_err(|e| Error::Kernel(format!("attaching {} to raw_tracepoint/sys_exit: {e}", programs::THROTTLE_SYS_EXIT)))?;
            let link: FdLink = p.take_link(id).map_err(|e| Error::Kernel(format!("{}: {e}", programs::THROTTLE_SYS_EXIT)))?.into();
            link.pin(&pin).map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?;
            info!("sys_exit throttle attached");
        } else if !want && pin.exists() {
            // The pin holds the last reference to the link: removing it
            // detaches the program.
            fs::remove_file(&pin).map_err(Error::io(format!("removing {}", pin.display())))?;
            info!("sys_exit throttle detached: no syscall ceiling left");
        }
        Ok(want)
    }

    /// Whether the sys_exit throttle is attached.
    pub fn syscall_hook_attached(&self) -> bool {
        self.sys_exit_link_pin.exists()
    }

    /// Removes older generations' pins. Call once this generation's
    /// programs are attached for every target.
    pub fn retire_old_generations(&mut self) -> Result<Vec<PathBuf>> {
        for g in &self.old_generations {
            retire(g, &self.pin_dir)?;
            info!(generation = %g.display(), "retired pins of an older build");
        }
        Ok(std::mem::take(&mut self.old_generations))
    }
}

/// Removes every pin under `pin_dir`: detaches the programs and frees the
/// maps once no process holds them. Used by `agent --unpin` and tests.
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).map_err(Error::io(format!("removing {}", pin_dir.display())))?;
    }
    Ok(())
}
