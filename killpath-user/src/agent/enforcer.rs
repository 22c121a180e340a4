//! The kernel side as the agent holds it: the loaded object with every
//! level's programs attached and pinned, and the maps. Composes the levels
//! (each level's folder says what it loads); the kernel layer below says
//! how to load, pin and find things.
//!
//! Fail-static: maps and links are pinned under bpffs, so killing the agent
//! leaves every program attached and every target's state in place. A
//! restarted agent reuses the pinned maps (aya `map_pin_path`) and, when a
//! program's link pin exists, does not load or attach that program again.
use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, MapData, RingBuf},
    Btf, Ebpf, EbpfLoader,
};
use killpath_common::{maps, programs, KernelOffsets};
use tracing::{info, warn};

use crate::{
    degrade,
    error::{Error, Result},
    isolate::IsolatePrograms,
    kernel::{
        btf,
        links::LinkKeeper,
        maps::{Maps, PINNED},
        object::{self, typed, OBJECT},
        pins,
    },
    protect::ProtectMaps,
    throttle,
};

/// Stop guard programs and the raw tracepoints they attach to. There is
/// deliberately no sys_enter guard: `cargo xtask bench` measured it at
/// ~125 ns on every syscall of every process on the host (about 1.5x on a
/// getppid loop) even with nothing stopped. A task of a stopped target is
/// caught at its next fork or context switch instead (a syscall-heavy or
/// CPU-bound task is switched out at the latest at the next tick), and
/// cgroup.kill has already sent it SIGKILL.
const STOP_GUARDS: &[(&str, &str)] = &[(programs::GUARD_FORK, "sched_process_fork"), (programs::GUARD_SWITCH, "sched_switch")];

/// Membership programs (killpath-ebpf/src/members.rs) and their raw
/// tracepoints: cgroup_attach_task exists since Linux 4.x, the sched ones
/// forever; all three load where raw tracepoints do (no BPF LSM needed).
const MEMBER_HOOKS: &[(&str, &str)] =
    &[(programs::MEMBER_EXIT, "sched_process_exit"), (programs::MEMBER_FORK, "sched_process_fork"), (programs::MEMBER_ATTACH, "cgroup_attach_task")];

/// The loaded (or re-found) kernel side.
pub struct Enforcer {
    pub maps: Maps,
    pin_dir: PathBuf,
    /// This agent's pin generation (`pins::generation_for`).
    gen: PathBuf,
    /// Generations of an older build, kept until the new one is in force.
    old_generations: Vec<PathBuf>,
    /// Programs this process loaded or attached (empty when all were found pinned).
    pub attached_now: Vec<&'static str>,
    /// Level-3 programs: per-target cgroup hooks and the TC program.
    pub isolate: IsolatePrograms,
    /// Level-1 sys_exit hook, attached only while a syscall ceiling exists.
    pub syscall_hook: throttle::hook::SyscallHook,
    /// Dead-man leases: their map and the tick that enforces them.
    pub leases: crate::kernel::deadman::Leases,
    /// Why BPF LSM hooks are not attached (None: attached and running).
    pub lsm_error: Option<String>,
    /// Sampled denials (level 2); the agent takes it to read events.
    pub denial_events: Option<RingBuf<MapData>>,
    /// Tasks paused by a pace ceiling (level 1); the agent's pacer takes it.
    pub throttle_events: Option<RingBuf<MapData>>,
    /// Why fs.write cannot be enforced here (kernel BTF), if it cannot.
    pub fs_error: Option<String>,
    /// Why signal cannot be enforced here (kernel BTF), if it cannot.
    pub signal_error: Option<String>,
    /// Why membership tracking cannot run here (kernel BTF), if it cannot.
    pub members_error: Option<String>,
    /// Escape attempts (membership); the agent takes it to read events.
    pub escape_events: Option<RingBuf<MapData>>,
    /// Tripwire rules and windows, and their crossings (the agent takes the ring).
    pub tripwire: crate::tripwire::maps::TripwireMaps,
    pub tripwire_events: Option<RingBuf<MapData>>,
    /// The activity trail's maps, and its event ring (the agent takes it).
    pub trail: crate::trail::maps::TrailMaps,
    pub trail_events: Option<RingBuf<MapData>>,
    /// Maps filled at load (struct offsets, x86_64 and i386 syscall classes), kept open
    /// like the others.
    _filled: (Array<MapData, KernelOffsets>, [Array<MapData, u32>; 2]),
    /// The io_uring opcode classes and opcode offset, kept open likewise.
    _filled_iouring: (Array<MapData, u32>, Array<MapData, u32>),
    /// Handles for the pacer thread (it takes them).
    pub pacer_maps: Option<throttle::pacer::PacerMaps>,
    // Keeps the object alive for the lifetime of the agent; the pins keep
    // the programs alive after it.
    _ebpf: Ebpf,
    /// Every link of this generation held by fd as well as by pin (see
    /// `kernel::links`): the agent's periodic check re-pins a removed pin.
    pub links: LinkKeeper,
    /// What the self-protection hooks treat as killpath's.
    pub protect: ProtectMaps,
    /// Why the self-protection hooks are off here (None: attached and
    /// running, with the struct offsets they follow).
    pub protect_error: Option<String>,
    /// The trail's file hooks (BPF LSM) and why they are off, if they are.
    pub trail_files: crate::trail::files::FileHooks,
}

/// Attaches the self-protection LSM hooks (BPF LSM known to run here).
fn attach_protect(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>) -> std::result::Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    crate::protect::attach_lsm(ebpf, &btf, gen, loaded).map_err(|e| e.to_string())
}

/// Attaches the host-wide LSM hooks of isolate and degrade, after checking
/// that a BPF LSM hook really runs here (an LSM program can attach where
/// `bpf` is not an active LSM and then never be called).
fn attach_lsm(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>) -> std::result::Result<(), String> {
    crate::kernel::probe::lsm_runs()?;
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    crate::isolate::programs::attach_lsm(ebpf, &btf, gen, loaded).map_err(|e| e.to_string())?;
    degrade::programs::attach_lsm(ebpf, &btf, gen, loaded).map_err(|e| e.to_string())
}

impl Enforcer {
    /// Loads the object reusing pinned maps, and attaches and pins every
    /// program whose link is not pinned yet.
    pub fn open(base: &Path) -> Result<Self> {
        pins::ensure_bpffs(base)?;
        // The marks map's size is part of the generation (`pins`): one
        // pinned smaller than the kernel now needs is taken over by a new one.
        let marks_capacity = crate::kernel::marks_capacity::capacity_for(crate::kernel::marks_capacity::TaskLimit::read());
        let gen = pins::generation_for(base, marks_capacity);
        let old_generations: Vec<PathBuf> = pins::generations(base).into_iter().filter(|g| g != &gen).collect();
        pins::create_generation(&gen)?;
        let map_pins: Vec<(&str, PathBuf)> = PINNED.iter().map(|n| (*n, pins::map_pin(&gen, n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        // A mark for every task the kernel can run (`kernel::marks_capacity`).
        loader.map_max_entries(killpath_common::maps::MEMBERS, marks_capacity);
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
        let mut attached_now = Vec::new();
        let links = LinkKeeper::default();
        for (prog, tp) in STOP_GUARDS {
            if object::attach_raw_tracepoint(&mut ebpf, &gen, prog, tp)? {
                attached_now.push(*prog);
                info!(prog, tp, "guard attached and pinned");
            }
        }
        let isolate = IsolatePrograms::open(&mut ebpf, &gen, &mut attached_now, links.clone())?;
        let lsm_error = attach_lsm(&mut ebpf, &gen, &mut attached_now).err();
        if let Some(e) = &lsm_error {
            warn!("BPF LSM hooks unavailable: {e}");
        }
        // Self-protection: its own error, so a hook this kernel lacks does
        // not take degrade's and isolate's hooks down with it.
        let mut protect_error = match &lsm_error {
            Some(e) => Some(e.clone()),
            None => attach_protect(&mut ebpf, &gen, &mut attached_now).err(),
        };
        if let Some(e) = &protect_error {
            warn!("self-protection hooks unavailable: {e}");
        }
        let protect = ProtectMaps::from_object(&mut ebpf)?;
        let mut maps = Maps::from_object(&mut ebpf)?;
        let marks = crate::kernel::marks_capacity::status(maps.members.as_ref().and_then(|m| m.capacity()));
        if let Some(short) = marks["capacity_short"].as_str() {
            warn!("membership marks: {short}");
        }
        // Struct offsets for the pointer-following hooks (fs.write, signal).
        let btf = btf::resolve();
        if protect_error.is_none() {
            protect_error = btf.protect_error.clone().map(|e| format!("kernel BTF: {e}"));
        }
        // Both handles stay open while programs load: a program loaded
        // after its map's last fd closed fails with "fd N is not pointing
        // to valid bpf_map" (aya relocated the fd into its instructions).
        let offsets = degrade::maps::fill_offsets(&mut ebpf, btf.offsets)?;
        let syscall_classes = throttle::maps::fill_syscall_classes(&mut ebpf)?;
        // After degrade's and protect's LSM programs: a refused operation ends the chain before the trail sees it.
        let trail_files = crate::trail::files::FileHooks::attach(&mut ebpf, &gen, &mut attached_now, lsm_error.as_deref(), btf.fs_error.as_deref())?;
        let iouring = btf::iouring_submit();
        let iouring_filled = throttle::maps::fill_iouring(&mut ebpf, iouring.as_ref().ok().map(|i| i.opcode_offset))?;
        // The fork class is charged at the membership fork hook where it runs.
        let syscall_hook =
            throttle::hook::SyscallHook::load(&mut ebpf, &gen, &mut attached_now, links.clone(), iouring.map(|i| i.tracepoint), btf.members_error.is_none())?;
        let leases = crate::kernel::deadman::Leases::load(&mut ebpf, &gen, &old_generations, &mut attached_now, links.clone())?;
        // A previous agent's live leases stay counted in the global switches
        // from the first write on (the agent re-counts them once its
        // registry is loaded): a gap would let the tick skip a deadline.
        maps.set_armed("lease", leases.armed())?;
        // The pacer's own handles on the buckets and the targets' levels
        // (it runs on its own thread, outside the agent's state lock).
        let pacer_maps = throttle::pacer::PacerMaps::open(&gen)
            .map_err(|e| warn!("the pacer cannot read the buckets: paused targets are thawed on their first event's time: {e}"))
            .ok();
        // Tripwires' `execs`: one config read per exec on the host while no
        // rule exists. Before the membership hooks: it also moves the mark
        // of a thread that exec'd to the pid it took (members::on_exec).
        if object::attach_raw_tracepoint(&mut ebpf, &gen, killpath_common::tripwire::programs::EXEC, "sched_process_exec")? {
            attached_now.push(killpath_common::tripwire::programs::EXEC);
        }
        // Membership: exit first, so no mark is ever set without the hook
        // that drops it when its task dies.
        if btf.members_error.is_none() {
            for (prog, tp) in MEMBER_HOOKS {
                if object::attach_raw_tracepoint(&mut ebpf, &gen, prog, tp)? {
                    attached_now.push(*prog);
                    info!(prog, tp, "membership hook attached and pinned");
                }
            }
        }
        let escape_events = Some(typed(&mut ebpf, maps::ESCAPE_EVENTS)?);
        let throttle_events = Some(typed(&mut ebpf, maps::THROTTLE_EVENTS)?);
        let denial_events = Some(typed(&mut ebpf, maps::DENIAL_EVENTS)?);
        let tripwire = crate::tripwire::maps::TripwireMaps::from_object(&mut ebpf)?;
        let tripwire_events = Some(typed(&mut ebpf, killpath_common::tripwire::maps::EVENTS)?);
        // The trail's LISTEN/ACCEPT hook (one config read per TCP state change while no target records).
        crate::trail::net::attach(&mut ebpf, &gen, &mut attached_now)?;
        // The activity trail: its maps, the argv offsets of its exec event
        // (sched_process_exec, attached above) and its signal hook
        // (one config read per signal on the host while no target records).
        let mut trail = crate::trail::maps::TrailMaps::from_object(&mut ebpf)?;
        trail.fill_offsets(btf::trail_offsets())?;
        trail.set_files(trail_files.error.is_none())?;
        let trail_events = Some(typed(&mut ebpf, killpath_common::trail::EVENTS)?);
        if object::attach_raw_tracepoint(&mut ebpf, &gen, killpath_common::trail::programs::SIGNAL, "signal_generate")? {
            attached_now.push(killpath_common::trail::programs::SIGNAL);
        }
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
                Err(e) => {
                    warn!(generation = %old.display(), "cannot read an old generation's targets: {e}")
                }
            }
        }
        // Marks too: a task that escaped under the old build stays a member.
        for old in &old_generations {
            if let (Some(mine), Ok(Some(theirs))) = (maps.members.as_mut(), Maps::open_pinned(old).map(|m| m.members)) {
                mine.copy_from(&theirs);
            }
        }
        // Hold what is pinned now: the host-wide links just attached or left
        // by a previous agent, and every target's cgroup links.
        links.hold_generation(&gen);
        Ok(Self {
            maps,
            pin_dir: base.to_owned(),
            gen: gen.clone(),
            old_generations,
            attached_now,
            isolate,
            syscall_hook,
            leases,
            lsm_error,
            denial_events,
            throttle_events,
            fs_error: btf.fs_error,
            signal_error: btf.signal_error,
            members_error: btf.members_error,
            escape_events,
            tripwire,
            tripwire_events,
            trail,
            trail_events,
            _filled: (offsets, syscall_classes),
            _filled_iouring: iouring_filled,
            pacer_maps,
            _ebpf: ebpf,
            links,
            protect,
            protect_error,
            trail_files,
        })
    }

    /// Tells the self-protection hooks what is killpath's: this process,
    /// the pin directory and `state_dir`. Failing here leaves them on for
    /// cgroupfs, bpf(2) and mounts, not for the agent or its files.
    pub fn protect_self(&mut self, state_dir: &Path) -> Result<()> {
        self.protect.protect_process(std::process::id())?;
        self.protect.protect_dirs(&[self.pin_dir.as_path(), state_dir])
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// This agent's pin generation directory.
    pub fn generation(&self) -> &Path {
        &self.gen
    }

    /// Attaches or detaches the sys_exit throttle to match the ceilings.
    pub fn sync_syscall_hook(&mut self) -> Result<bool> {
        self.syscall_hook.sync(&self.maps, &mut self._ebpf)
    }

    /// Detaches the syscall hooks no ceiling has needed for a while
    /// (`throttle::hook::LINGER`).
    pub fn detach_idle_syscall_hooks(&mut self) -> Result<()> {
        self.syscall_hook.detach_idle(&self.maps, &mut self._ebpf)
    }

    /// Whether the sys_exit throttle is attached.
    pub fn syscall_hook_attached(&self) -> bool {
        self.syscall_hook.attached()
    }

    /// Which hook charges each of `classes` (all when None) here, and
    /// what it costs the host (see [`throttle::class_hooks`]).
    pub fn class_hooks(&self, classes: Option<&[u32]>) -> serde_json::Value {
        throttle::class_hooks::describe(&self.syscall_hook.class_plan(), classes)
    }

    /// What syscall ceilings see of io_uring on this kernel (see
    /// [`throttle::iouring_coverage`]).
    pub fn iouring_coverage(&self) -> serde_json::Value {
        throttle::iouring_coverage(self.syscall_hook.iouring())
    }

    /// Removes older generations' pins. Call once this generation's
    /// programs are attached for every target.
    pub fn retire_old_generations(&mut self) -> Result<Vec<PathBuf>> {
        for g in &self.old_generations {
            pins::retire(g, &self.pin_dir)?;
            info!(generation = %g.display(), "retired pins of an older build");
        }
        Ok(std::mem::take(&mut self.old_generations))
    }
}
