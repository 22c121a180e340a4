//! The compiled eBPF object and the generic ways killpath loads, pins and
//! attaches its programs. Each level's module says which of its programs
//! go where; this file only knows how.
use std::path::{Path, PathBuf};

use aya::{
    maps::Map,
    programs::{links::FdLink, Lsm, RawTracePoint},
    Btf, Ebpf,
};
use tracing::debug;

use super::pins::{link_pin, prog_pin};
use crate::error::{Error, Result};

/// The compiled eBPF object, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/killpath"));

/// Takes a map out of the loaded object, naming it if it is missing.
pub fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| Error::Kernel(format!("map {name} missing from the object")))
}

/// Converts a taken map into its typed handle, naming it on a mismatch.
pub fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    T::try_from(take_map(ebpf, name)?).map_err(Error::map(name))
}

/// The program `name` of the object as its type `P`.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name).ok_or_else(|| Error::Kernel(format!("program {name} missing from the object")))?.try_into().map_err(Error::program(name))
}

/// Loads and pins `name` unless its pin exists (a restarted agent opens the
/// pin instead of loading a second copy). Returns the pin's path.
pub fn load_pinned<P>(
    ebpf: &mut Ebpf,
    gen: &Path,
    name: &'static str,
    loaded: &mut Vec<&'static str>,
    load: impl FnOnce(&mut P) -> Result<()>,
) -> Result<PathBuf>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let pin = prog_pin(gen, name);
    if pin.exists() {
        return Ok(pin);
    }
    load(program::<P>(ebpf, name)?)?;
    let prog: &mut aya::programs::Program = ebpf.program_mut(name).ok_or_else(|| Error::Kernel(name.into()))?;
    prog.pin(&pin).map_err(Error::pin(&pin))?;
    loaded.push(name);
    Ok(pin)
}

/// A cgroup link as a pinnable bpf_link. aya falls back to the legacy
/// BPF_PROG_ATTACH on kernels without cgroup bpf_link (< 5.7); such an
/// attachment cannot be pinned and would vanish with the agent, so it is an
/// error rather than a silent loss of fail-static enforcement.
pub fn fd_link<L>(link: L) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(Error::link("cgroup link cannot be pinned (kernel without cgroup bpf_link?)"))
}

/// Loads, attaches and pins a raw tracepoint program unless its link is
/// pinned already. Returns whether it was attached now.
pub fn attach_raw_tracepoint(ebpf: &mut Ebpf, gen: &Path, prog: &'static str, tracepoint: &str) -> Result<bool> {
    let pin = link_pin(gen, prog);
    if pin.exists() {
        debug!(prog, "link already pinned; not loading a second copy");
        return Ok(false);
    }
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(Error::program(format!("loading {prog}")))?;
    let id = p.attach(tracepoint).map_err(Error::program(format!("attaching {prog} to raw_tracepoint/{tracepoint}")))?;
    let link: FdLink = p.take_link(id).map_err(Error::program(prog))?.into();
    link.pin(&pin).map_err(Error::pin(&pin))?;
    Ok(true)
}

/// Loads, attaches and pins one host-wide BPF LSM program (`lsm/<hook>`)
/// unless its link is pinned already. Returns whether it was attached now.
pub fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, gen: &Path, name: &'static str, hook: &str) -> Result<bool> {
    let pin = link_pin(gen, name);
    if pin.exists() {
        return Ok(false);
    }
    let p: &mut Lsm = program(ebpf, name)?;
    p.load(hook, btf).map_err(Error::program(format!("loading lsm/{hook}")))?;
    let id = p.attach().map_err(Error::program(format!("attaching lsm/{hook}")))?;
    let link: FdLink = p.take_link(id).map_err(Error::program(format!("lsm/{hook} link")))?.into();
    link.pin(&pin).map_err(Error::pin(&pin))?;
    Ok(true)
}
