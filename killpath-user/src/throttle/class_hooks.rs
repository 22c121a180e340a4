//! Which kernel hook charges each syscall class here, and the fs-write
//! fexit programs (see `killpath_common::class_hooks` and the eBPF side's
//! `throttle/classes.rs`). Only `all`, and a class without a hook of its
//! own on this kernel, needs raw_tracepoint/sys_exit, which puts every
//! task on the host on the syscall-tracing slow path while attached.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData},
    programs::{links::FdLink, FExit, RawTracePoint},
    Btf, Ebpf,
};
use killpath_common::{class_hooks, compat, throttle as class};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::class_name;
use crate::{
    error::{Error, Result},
    kernel::{
        links::LinkKeeper,
        maps::Maps,
        object::{load_pinned, typed},
        pins::{link_pin, prog_pin},
    },
};

/// The hook that charges one syscall class on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassHook {
    /// raw_tracepoint sock_send_length and inet_sock_set_state, and the
    /// cgroup sock_addr connect hooks for UDP connects.
    SockEvents,
    /// raw_tracepoint/sched_process_fork.
    SchedFork,
    /// raw_tracepoint/sched_process_exec.
    SchedExec,
    /// fexit on each of the class's syscall functions.
    FExit,
    /// raw_tracepoint/sys_exit.
    SysExit,
}

impl ClassHook {
    pub fn name(self) -> &'static str {
        match self {
            Self::SockEvents => "raw_tracepoint sock_send_length + inet_sock_set_state (TCP connect) + cgroup sock_addr connect4/6 (UDP connect)",
            Self::SchedFork => "raw_tracepoint sched_process_fork",
            Self::SchedExec => "raw_tracepoint sched_process_exec",
            Self::FExit => {
                "fexit on each of the class's syscall functions (__x64_sys_*, and the 32-bit __ia32_* entries where the kernel runs 32-bit syscalls)"
            }
            Self::SysExit => "raw_tracepoint sys_exit",
        }
    }

    /// What the hook costs the tasks outside every target.
    pub fn host_cost(self) -> &'static str {
        match self {
            Self::SockEvents => "one map read per socket send and per TCP state change on the host while a net ceiling exists; no per-syscall cost",
            Self::SchedFork => "one map read per fork on the host (the hook is attached anyway, for membership); no per-syscall cost",
            Self::SchedExec => "one map read per successful exec on the host (the hook is attached anyway, for tripwires); no per-syscall cost",
            Self::FExit => {
                "one map read per call of these syscalls on the host (a BPF trampoline on each) while a ceiling on the class exists; other syscalls pay nothing"
            }
            Self::SysExit => "every syscall of every task on the host takes the syscall-tracing slow path while it is attached (+~250 ns, getppid ~2x)",
        }
    }

    /// What the hook counts, where that differs from "each syscall of the
    /// class, at its exit".
    pub fn counts(self, c: u32) -> &'static str {
        match (self, c) {
            (Self::SockEvents, _) => {
                "each message sent on a socket (send/sendto/sendmsg, each message of a sendmmsg, a write on a socket, an io_uring send when it runs) \
                 and each TCP or UDP connect (a UDP connect is paused by the agent's freeze only: the cgroup hook cannot send SIGSTOP); \
                 connects on unix sockets are not counted"
            }
            (Self::SchedFork, _) => "each fork/vfork/clone/clone3 that created a task (threads included), in the parent",
            (Self::SchedExec, _) => "each successful exec (a failed execve is not counted)",
            (Self::SysExit, class::ALL) => "each syscall",
            _ => "each call of the class's syscalls, at its exit",
        }
    }
}

/// One program of a class's own hook, loaded and pinned.
struct Prog {
    class: u32,
    name: &'static str,
    /// The kernel function (fexit) or tracepoint it attaches to.
    target: &'static str,
    prog_pin: PathBuf,
    link_pin: PathBuf,
}

/// The class-to-hook plan of this kernel and the programs it attaches on
/// demand.
pub struct ClassHooks {
    fork: bool,
    /// The fs-write and net fexit programs, or why this kernel cannot run them.
    fexits: std::result::Result<Vec<Prog>, String>,
    /// The net socket tracepoints (only loaded where fexit is refused), or why not.
    net_events: std::result::Result<Vec<Prog>, String>,
    /// Whether every fexit program is loaded (the first one is at start).
    all_loaded: bool,
    /// KP_CLASS_HOOKS (kept open while programs load).
    map: Array<MapData, u32>,
    links: LinkKeeper,
    /// What KP_CLASS_HOOKS holds (own hook, sees io_uring), once written:
    /// the agent's periodic check syncs every 0.5 s and rewrites nothing
    /// (and logs nothing) while the plan is unchanged.
    written: Option<(u32, u32)>,
}

/// The hook of each syscall class, given what runs here: `fork` whether
/// the sched_process_fork membership hook is attached, `fexit` whether
/// tracing programs load, `net_events` whether the socket tracepoints exist.
pub fn plan(fork: bool, fexit: bool, net_events: bool) -> Vec<(u32, ClassHook)> {
    let net = if fexit {
        ClassHook::FExit
    } else if net_events {
        ClassHook::SockEvents
    } else {
        ClassHook::SysExit
    };
    vec![
        (class::NET, net),
        (class::EXEC, ClassHook::SchedExec),
        (class::FORK, if fork { ClassHook::SchedFork } else { ClassHook::SysExit }),
        (class::FS_WRITE, if fexit { ClassHook::FExit } else { ClassHook::SysExit }),
        (class::ALL, ClassHook::SysExit),
    ]
}

/// The plan as JSON for `probe`, `throttle` and `status`, for `classes`
/// (all of them when None).
pub fn describe(plan: &[(u32, ClassHook)], classes: Option<&[u32]>) -> Value {
    let rows: Vec<Value> = plan
        .iter()
        .filter(|(c, _)| classes.is_none_or(|cs| cs.contains(c)))
        .map(|(c, h)| json!({"class": class_name(*c), "hook": h.name(), "counts": h.counts(*c), "host_cost": h.host_cost()}))
        .collect();
    Value::Array(rows)
}

/// Whether this kernel has the raw tracepoint `name` (its BTF typedef).
pub fn has_tracepoint(name: &str) -> bool {
    crate::kernel::btf::vmlinux().is_ok_and(|b| b.resolve_types_by_name(&format!("btf_trace_{name}")).is_ok())
}

/// Whether every net socket tracepoint exists here.
pub fn net_events_exist() -> bool {
    class_hooks::NET_EVENTS.iter().all(|(_, tp)| has_tracepoint(tp))
}

/// The syscall classes `c` has ceilings on.
pub fn classes_of(c: &super::Ceilings) -> Vec<u32> {
    c.syscalls.keys().filter_map(|n| super::class_of(n).ok()).collect()
}

/// The fs-write and net fexit programs (not loaded yet): on the x86_64
/// syscall functions, and on the 32-bit ones where this kernel runs 32-bit
/// syscalls (`ia32`, from [`ia32_fexits`]).
fn fexit_progs(gen: &Path, ia32: &[(u32, &'static str, &'static str)]) -> Vec<Prog> {
    let x64 = class_hooks::FS_WRITE_FEXITS.iter().map(|p| (class::FS_WRITE, p)).chain(class_hooks::NET_FEXITS.iter().map(|p| (class::NET, p)));
    let all = x64.map(|(c, (name, function))| (c, *name, *function)).chain(ia32.iter().copied());
    all.map(|(c, name, target)| Prog { class: c, name, target, prog_pin: prog_pin(gen, name), link_pin: link_pin(gen, name) }).collect()
}

/// The fexit programs on the 32-bit syscall entries (`int 0x80`), each with
/// the function this kernel names it by: none where the kernel has no IA32
/// emulation; an error (the classes then stay at sys_exit, which classes
/// 32-bit syscalls by their own numbers) where one entry is missing.
pub fn ia32_fexits() -> std::result::Result<Vec<(u32, &'static str, &'static str)>, String> {
    let btf = crate::kernel::btf::vmlinux().map_err(|e| format!("no kernel BTF: {e}"))?;
    let has = |f: &str| btf.resolve_types_by_name(f).is_ok();
    if !has(compat::PRESENCE) {
        return Ok(Vec::new());
    }
    let all = compat::FS_WRITE_FEXITS.iter().map(|p| (class::FS_WRITE, p)).chain(compat::NET_FEXITS.iter().map(|p| (class::NET, p)));
    all.map(|(c, (name, candidates))| {
        candidates
            .iter()
            .find(|f| has(f))
            .map(|f| (c, *name, *f))
            .ok_or_else(|| format!("32-bit syscalls run here but none of {} is in the kernel's BTF", candidates.join(", ")))
    })
    .collect()
}

/// Loads (and pins) the fexit programs in `progs` not loaded yet: one at
/// agent start, to learn whether this kernel runs them, the others when
/// the first ceiling that needs them comes (55 programs with the 32-bit entries take seconds to
/// verify under emulation, and most hosts never need them).
fn load_fexits(ebpf: &mut Ebpf, progs: &[Prog], only_first: bool, loaded: &mut Vec<&'static str>) -> std::result::Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
    let gen = progs.first().and_then(|p| p.prog_pin.parent()?.parent()).ok_or("no fexit program")?;
    for x in progs.iter().take(if only_first { 1 } else { progs.len() }) {
        let (function, name) = (x.target, x.name);
        load_pinned::<FExit>(ebpf, gen, name, loaded, |p| p.load(function, &btf).map_err(Error::program(format!("loading fexit/{function}"))))
            .map_err(|e| crate::error::chain(&e))?;
    }
    Ok(())
}

/// Loads the net socket tracepoint programs where the tracepoints exist.
fn load_net_events(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>) -> std::result::Result<Vec<Prog>, String> {
    if !net_events_exist() {
        return Err("no sock_send_length tracepoint (Linux 6.3+) or no inet_sock_set_state".into());
    }
    let mut out = Vec::new();
    for (name, tp) in class_hooks::NET_EVENTS {
        let prog_pin = load_pinned::<RawTracePoint>(ebpf, gen, name, loaded, |p| p.load().map_err(Error::program(format!("loading {name}"))))
            .map_err(|e| crate::error::chain(&e))?;
        out.push(Prog { class: class::NET, name, target: tp, prog_pin, link_pin: link_pin(gen, name) });
    }
    Ok(out)
}

impl ClassHooks {
    /// Fills KP_CLASS_HOOKS for this kernel and loads the programs of the
    /// classes' own hooks (attached on demand). `fork`: whether the
    /// membership sched_process_fork hook is attached here.
    pub fn load(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>, links: LinkKeeper, fork: bool) -> Result<Self> {
        let map: Array<MapData, u32> = typed(ebpf, class_hooks::MAP)?;
        let fexits = ia32_fexits().and_then(|ia32| {
            let progs = fexit_progs(gen, &ia32);
            load_fexits(ebpf, &progs, true, loaded).map(|()| progs)
        });
        let net_events = match &fexits {
            Ok(_) => Err("not needed: net is charged at fexit".to_owned()),
            Err(e) => {
                warn!("fexit refused here: fs-write ceilings are charged at sys_exit (every task on the host pays while one exists): {e}");
                load_net_events(ebpf, gen, loaded)
            }
        };
        let mut s = Self { fork, fexits, net_events, all_loaded: false, map, links, written: None };
        // No class with a ceiling yet as far as this map knows: sys_exit
        // (pinned by a previous agent, if one had a ceiling) keeps charging
        // the on-demand classes until `sync` has attached their programs.
        s.write_map(0)?;
        Ok(s)
    }

    /// Whether class `c`'s on-demand programs (fexit, socket tracepoints)
    /// are all attached now.
    fn attached(&self, c: u32) -> bool {
        let progs: Vec<&Prog> = self.fexits.iter().chain(self.net_events.iter()).flatten().filter(|x| x.class == c).collect();
        !progs.is_empty() && progs.iter().all(|x| x.link_pin.exists())
    }

    /// Writes KP_CLASS_HOOKS from the plan. A class whose own hook is
    /// attached on demand is marked as charged there only while it is in
    /// `used` and its programs are attached: until then sys_exit charges
    /// it (a moment of double charging while both run beats a ceiling
    /// nothing enforces, e.g. when an agent dies between the two steps).
    fn write_map(&mut self, used: u32) -> Result<()> {
        let p = self.plan();
        let own = p
            .iter()
            .filter(|(c, h)| match h {
                ClassHook::SysExit => false,
                ClassHook::FExit | ClassHook::SockEvents => used & (1 << c) != 0 && self.attached(*c),
                ClassHook::SchedFork | ClassHook::SchedExec => *c != class::ALL,
            })
            .fold(0u32, |m, (c, _)| m | (1 << c));
        let sees = p.iter().filter(|(_, h)| *h == ClassHook::SockEvents).fold(0u32, |m, (c, _)| m | (1 << c));
        if self.written == Some((own, sees)) {
            return Ok(());
        }
        for (slot, v) in [(class_hooks::OWN_HOOK, own), (class_hooks::SEES_IO_URING, sees)] {
            self.map.set(slot, v, 0).map_err(Error::map(format!("updating {}", class_hooks::MAP)))?;
        }
        self.written = Some((own, sees));
        info!(own_hook = own, "syscall classes charged by their own hooks");
        Ok(())
    }

    /// This kernel's class-to-hook plan.
    pub fn plan(&self) -> Vec<(u32, ClassHook)> {
        plan(self.fork, self.fexits.is_ok(), self.net_events.is_ok())
    }

    /// Whether some class in `used` (bitmask of classes with a bucket)
    /// needs sys_exit.
    pub fn needs_sys_exit(&self, used: u32) -> bool {
        self.plan().iter().any(|(c, h)| *h == ClassHook::SysExit && used & (1 << c) != 0)
    }

    /// Attaches each class's own programs while some target has a ceiling
    /// on that class, and detaches them when none has. The first ceiling
    /// that needs the fexit programs loads them (`ebpf`); if that fails,
    /// their classes go back to sys_exit (or net to its socket hooks' plan
    /// without them) and the caller attaches sys_exit.
    pub fn sync(&mut self, ebpf: &mut Ebpf, used: u32) -> Result<()> {
        let fexit_classes = (1 << class::FS_WRITE) | (1 << class::NET);
        if !self.all_loaded && used & fexit_classes != 0 {
            if let Ok(progs) = &self.fexits {
                if let Err(e) = load_fexits(ebpf, progs, false, &mut Vec::new()) {
                    warn!("fexit programs failed to load: fs-write and net ceilings are charged at sys_exit: {e}");
                    self.fexits = Err(e);
                }
            }
            self.all_loaded = true;
        }
        if let Err(e) = self.attach_wanted(used) {
            if self.fexits.is_err() {
                return Err(e);
            }
            // An fexit that loaded but does not attach: its classes go
            // back to sys_exit, and what did attach is detached (it would
            // charge the class a second time).
            warn!("fexit programs failed to attach: fs-write and net ceilings are charged at sys_exit: {e}");
            let attached: Vec<PathBuf> = self.fexits.iter().flatten().map(|x| x.link_pin.clone()).filter(|p| p.exists()).collect();
            self.fexits = Err(e.to_string());
            self.write_map(used)?;
            for pin in attached {
                self.links.release(&pin);
                fs::remove_file(&pin).map_err(Error::io(format!("removing {}", pin.display())))?;
            }
            return Ok(());
        }
        // Marked as charged at their own hooks once attached; unmarked
        // before their programs are detached below.
        self.write_map(used)?;
        let progs = self.fexits.iter().chain(self.net_events.iter()).flatten();
        for x in progs {
            let want = used & (1 << x.class) != 0;
            if !want && x.link_pin.exists() {
                self.links.release(&x.link_pin);
                fs::remove_file(&x.link_pin).map_err(Error::io(format!("removing {}", x.link_pin.display())))?;
                info!(prog = x.name, "{} ceiling hook detached", class_name(x.class));
            }
        }
        Ok(())
    }

    /// Attaches the programs of the classes in `used` that are not attached.
    fn attach_wanted(&mut self, used: u32) -> Result<()> {
        let progs = self.fexits.iter().chain(self.net_events.iter()).flatten();
        for x in progs {
            let want = used & (1 << x.class) != 0;
            if want && !x.link_pin.exists() {
                let link: FdLink = if self.fexits.is_ok() {
                    let mut p = FExit::from_pin(&x.prog_pin).map_err(Error::program(format!("opening {}", x.prog_pin.display())))?;
                    let id = p.attach().map_err(Error::program(format!("attaching {} to fexit/{}", x.name, x.target)))?;
                    p.take_link(id).map_err(Error::program(x.name))?.into()
                } else {
                    let mut p = RawTracePoint::from_pin(&x.prog_pin).map_err(Error::program(format!("opening {}", x.prog_pin.display())))?;
                    let id = p.attach(x.target).map_err(Error::program(format!("attaching {} to raw_tracepoint/{}", x.name, x.target)))?;
                    p.take_link(id).map_err(Error::program(x.name))?.into()
                };
                link.pin(&x.link_pin).map_err(Error::pin(&x.link_pin))?;
                self.links.hold(&x.link_pin)?;
                info!(prog = x.name, target = x.target, "{} ceiling hook attached", class_name(x.class));
            }
        }
        Ok(())
    }
}

impl Maps {
    /// Bitmask of the syscall classes some target has a bucket of.
    pub fn syscall_classes_in_use(&self) -> u32 {
        let Some(t) = self.throttle.as_ref() else { return 0 };
        t.buckets.keys().flatten().filter(|k| k.class <= class::ALL).fold(0, |m, k| m | (1 << k.class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_all_and_unhooked_classes_use_sys_exit() {
        // This host: no fexit, socket tracepoints.
        let p = plan(true, false, true);
        let sys: Vec<u32> = p.iter().filter(|(_, h)| *h == ClassHook::SysExit).map(|(c, _)| *c).collect();
        assert_eq!(sys, vec![class::FS_WRITE, class::ALL]);
        assert!(p.contains(&(class::NET, ClassHook::SockEvents)));
        // With trampolines only `all` is left to sys_exit.
        let p = plan(true, true, false);
        assert_eq!(p.iter().filter(|(_, h)| *h == ClassHook::SysExit).count(), 1);
        assert!(plan(false, true, true).contains(&(class::FORK, ClassHook::SysExit)));
        assert!(plan(true, false, false).contains(&(class::NET, ClassHook::SysExit)));
        let d = describe(&p, Some(&[class::NET]));
        assert_eq!(d.as_array().map(Vec::len), Some(1));
        assert!(d[0]["host_cost"].as_str().is_some_and(|s| s.contains("no per-syscall") || s.contains("other syscalls pay nothing")));
    }
}
