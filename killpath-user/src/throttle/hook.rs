//! The per-syscall throttle hook (`raw_tracepoint/sys_exit`), attached only
//! while some target has a ceiling on `all` or on a class without a hook
//! of its own on this kernel (`class_hooks.rs`: net, exec and fork always
//! have one, fs-write where fexit loads), or a `syscalls` tripwire exists:
//! every task on the host takes the kernel's syscall-tracing slow path
//! while it is attached (measured +250 ns per syscall, see
//! bench/RESULTS.md). Its link is pinned: a ceiling holds with the agent
//! dead.
//!
//! With it, and under the same rule, the io_uring hook
//! (`raw_tracepoint/io_uring_submit_req`, or `io_uring_submit_sqe` on
//! 5.19–6.2, whichever BTF shows taking the request): one charge per
//! submitted io_uring operation, SQPOLL rings included. Where this kernel
//! lacks the tracepoint or the BTF offset it needs, syscall ceilings still
//! work and `probe`/`status` say io_uring is counted per io_uring_enter.
//!
//! A hook no longer needed is detached [`LINGER`] later (the agent's
//! periodic check), not at once: attaching a raw tracepoint again soon
//! after its last probe left waits in the kernel for an RCU grace period
//! (`tracepoint_add_func`, the 1->0->1 transition, `tp_rcu_cond_sync`,
//! 5.15+), measured 0.8 ms p50 and up to 25 ms on a loaded host: a
//! `throttle` right after a `restore` paid it in its time to effect.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    programs::{links::FdLink, RawTracePoint},
    Ebpf,
};
use killpath_common::programs;
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    kernel::{links::LinkKeeper, maps::Maps, object::load_pinned, pins::link_pin},
    throttle::class_hooks::{ClassHook, ClassHooks},
};

/// One loaded raw tracepoint program and where its link is pinned.
struct Hook {
    name: &'static str,
    tracepoint: &'static str,
    prog_pin: PathBuf,
    link_pin: PathBuf,
}

/// The loaded (not necessarily attached) sys_exit and io_uring throttles.
pub struct SyscallHook {
    sys_exit: Hook,
    /// The io_uring hook, or why this kernel cannot count io_uring
    /// operations one by one.
    io_uring: std::result::Result<Hook, String>,
    /// The agent's fds of the links (shared with the enforcer).
    links: LinkKeeper,
    /// Which hook charges each class here, and the fs-write fexits.
    classes: ClassHooks,
    /// Since when sys_exit / io_uring are attached but no longer needed.
    idle_since: [Option<Instant>; 2],
}

/// How long a hook no longer needed stays attached (see the module doc).
pub const LINGER: Duration = Duration::from_secs(1);

fn load(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>, name: &'static str, tracepoint: &'static str) -> Result<Hook> {
    let prog_pin = load_pinned::<RawTracePoint>(ebpf, gen, name, loaded, |p| p.load().map_err(Error::program(format!("loading {name}"))))?;
    Ok(Hook { name, tracepoint, prog_pin, link_pin: link_pin(gen, name) })
}

impl SyscallHook {
    /// Loads (and pins) the programs now; attaching waits for the first
    /// syscall ceiling, which is then a map update plus link creations.
    /// `iouring`: the io_uring submission tracepoint this kernel has, or
    /// why none fits (see `kernel::btf::iouring_submit`).
    pub fn load(
        ebpf: &mut Ebpf,
        gen: &Path,
        loaded: &mut Vec<&'static str>,
        links: LinkKeeper,
        iouring: std::result::Result<&'static str, String>,
        fork_hook: bool,
    ) -> Result<Self> {
        let classes = ClassHooks::load(ebpf, gen, loaded, links.clone(), fork_hook)?;
        let sys_exit = load(ebpf, gen, loaded, programs::THROTTLE_SYS_EXIT, "sys_exit")?;
        let io_uring = iouring.and_then(|tp| load(ebpf, gen, loaded, programs::THROTTLE_IO_URING, tp).map_err(|e| e.to_string()));
        if let Err(e) = &io_uring {
            warn!("io_uring operations are counted per io_uring_enter only: {e}");
        }
        Ok(Self { sys_exit, io_uring, links, classes, idle_since: [None, None] })
    }

    fn attach(&self, h: &Hook) -> Result<()> {
        let mut p = RawTracePoint::from_pin(&h.prog_pin).map_err(Error::program(format!("opening {}", h.prog_pin.display())))?;
        let id = p.attach(h.tracepoint).map_err(Error::program(format!("attaching {} to raw_tracepoint/{}", h.name, h.tracepoint)))?;
        let link: FdLink = p.take_link(id).map_err(Error::program(h.name))?.into();
        link.pin(&h.link_pin).map_err(Error::pin(&h.link_pin))?;
        self.links.hold(&h.link_pin)?;
        info!(prog = h.name, "{} throttle attached", h.tracepoint);
        Ok(())
    }

    fn detach(&self, h: &Hook) -> Result<()> {
        // The pin and the agent's fd are the link's references: dropping
        // both detaches the program.
        self.links.release(&h.link_pin);
        fs::remove_file(&h.link_pin).map_err(Error::io(format!("removing {}", h.link_pin.display())))?;
        info!(prog = h.name, "{} throttle detached: no ceiling left that needs it", h.tracepoint);
        Ok(())
    }

    /// Attaches the hooks the ceilings need and detaches the others
    /// ([`LINGER`] later, see [`SyscallHook::detach_idle`]):
    /// sys_exit while a ceiling is on `all` or on a class without its own
    /// hook here (or a `syscalls` tripwire exists), the fs-write fexits
    /// while an fs-write ceiling exists, io_uring while any syscall
    /// ceiling does. Returns whether sys_exit is attached. An io_uring
    /// hook that fails to attach is reported, not fatal: the syscall
    /// ceilings hold without it.
    pub fn sync(&mut self, maps: &Maps, ebpf: &mut Ebpf) -> Result<bool> {
        self.sync_at(maps, ebpf, None)
    }

    /// Detaches the hooks unneeded for at least [`LINGER`] (called by the
    /// agent's periodic check).
    pub fn detach_idle(&mut self, maps: &Maps, ebpf: &mut Ebpf) -> Result<()> {
        self.sync_at(maps, ebpf, Some(Instant::now())).map(|_| ())
    }

    /// [`SyscallHook::sync`]; an unneeded hook is only marked idle, and
    /// detached when `now` is given and it has been idle [`LINGER`].
    fn sync_at(&mut self, maps: &Maps, ebpf: &mut Ebpf, now: Option<Instant>) -> Result<bool> {
        let used = maps.syscall_classes_in_use();
        self.classes.sync(ebpf, used)?;
        // A `syscalls` tripwire needs sys_exit (it counts there).
        let sys_exit = self.classes.needs_sys_exit(used) || maps.tripwire_syscalls;
        let expired = |since: &mut Option<Instant>, wanted: bool, attached: bool| {
            if wanted || !attached {
                *since = None;
                return false;
            }
            let idle = *since.get_or_insert_with(Instant::now);
            now.is_some_and(|n| n.saturating_duration_since(idle) >= LINGER)
        };
        if sys_exit && !self.sys_exit.link_pin.exists() {
            self.attach(&self.sys_exit)?;
        } else if expired(&mut self.idle_since[0], sys_exit, self.sys_exit.link_pin.exists()) {
            self.detach(&self.sys_exit)?;
            self.idle_since[0] = None;
        }
        let want = maps.any_syscall_throttle() || maps.tripwire_syscalls;
        if let Ok(h) = &self.io_uring {
            if want && !h.link_pin.exists() {
                if let Err(e) = self.attach(h) {
                    warn!("io_uring operations are counted per io_uring_enter only: {e}");
                    self.io_uring = Err(e.to_string());
                }
            } else if expired(&mut self.idle_since[1], want, h.link_pin.exists()) {
                self.detach(h)?;
                self.idle_since[1] = None;
            }
        }
        Ok(sys_exit)
    }

    /// Which hook charges each syscall class on this kernel.
    pub fn class_plan(&self) -> Vec<(u32, ClassHook)> {
        self.classes.plan()
    }

    /// Whether the sys_exit hook is attached.
    pub fn attached(&self) -> bool {
        self.sys_exit.link_pin.exists()
    }

    /// The tracepoint io_uring operations are charged at on this kernel,
    /// or why they are not charged one by one.
    pub fn iouring(&self) -> std::result::Result<&'static str, &str> {
        self.io_uring.as_ref().map(|h| h.tracepoint).map_err(String::as_str)
    }
}
