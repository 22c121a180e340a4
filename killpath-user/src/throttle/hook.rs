//! The per-syscall throttle hook (`raw_tracepoint/sys_exit`), attached only
//! while some target has a syscall ceiling: every task on the host takes
//! the kernel's syscall-tracing slow path while it is attached (measured
//! +250 ns per syscall, see bench/RESULTS.md), so with nothing throttled no
//! per-syscall hook runs. Its link is pinned: a ceiling holds with the
//! agent dead.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, RawTracePoint},
    Ebpf,
};
use killpath_common::programs;
use tracing::info;

use crate::{
    error::{Error, Result},
    kernel::{links::LinkKeeper, maps::Maps, object::load_pinned, pins::link_pin},
};

/// The loaded (not necessarily attached) sys_exit throttle.
pub struct SyscallHook {
    /// Pin of the loaded program.
    prog_pin: PathBuf,
    /// Where its link is pinned while attached.
    link_pin: PathBuf,
    /// The agent's fds of the links (shared with the enforcer).
    links: LinkKeeper,
}

impl SyscallHook {
    /// Loads (and pins) the program now; attaching waits for the first
    /// syscall ceiling, which is then a map update plus one link creation.
    pub fn load(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>, links: LinkKeeper) -> Result<Self> {
        let prog_pin = load_pinned::<RawTracePoint>(ebpf, gen, programs::THROTTLE_SYS_EXIT, loaded, |p| {
            p.load().map_err(Error::program(format!("loading {}", programs::THROTTLE_SYS_EXIT)))
        })?;
        Ok(Self { prog_pin, link_pin: link_pin(gen, programs::THROTTLE_SYS_EXIT), links })
    }

    /// Attaches the hook while some target has a syscall ceiling and
    /// detaches it when none has. Returns whether attached.
    pub fn sync(&self, maps: &Maps) -> Result<bool> {
        let pin = &self.link_pin;
        let want = maps.any_syscall_throttle();
        if want && !pin.exists() {
            let mut p = RawTracePoint::from_pin(&self.prog_pin).map_err(Error::program(format!("opening {}", self.prog_pin.display())))?;
            let id = p.attach("sys_exit").map_err(Error::program(format!("attaching {} to raw_tracepoint/sys_exit", programs::THROTTLE_SYS_EXIT)))?;
            let link: FdLink = p.take_link(id).map_err(Error::program(programs::THROTTLE_SYS_EXIT))?.into();
            link.pin(pin).map_err(Error::pin(pin))?;
            self.links.hold(pin)?;
            info!("sys_exit throttle attached");
        } else if !want && pin.exists() {
            // The pin and the agent's fd are the link's references:
            // dropping both detaches the program.
            self.links.release(pin);
            fs::remove_file(pin).map_err(Error::io(format!("removing {}", pin.display())))?;
            info!("sys_exit throttle detached: no syscall ceiling left");
        }
        Ok(want)
    }

    /// Whether the hook is attached.
    pub fn attached(&self) -> bool {
        self.link_pin.exists()
    }
}
