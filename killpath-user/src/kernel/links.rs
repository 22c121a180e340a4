//! Links held by fd as well as by pin.
//!
//! A pinned bpf_link stays attached while any reference to it exists: the
//! pin file under bpffs, or an open fd. With the pin as the only reference,
//! a root task that unlinks the pin detaches the program. The agent
//! therefore keeps an fd of every link of its generation (host-wide links
//! under `links/`, per-target cgroup links under `targets/<cgroup id>/`):
//! unlinking a pin no longer detaches anything while the agent runs, and
//! [`LinkKeeper::check`] puts a missing pin back from the fd it holds, so
//! the link survives the agent again (fail-static) if it dies afterwards.
//!
//! The agent's own detaches ([`LinkKeeper::release`]) drop the fd in the
//! same critical section as they remove the pin, so the keeper never
//! mistakes them for tampering.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use tracing::warn;

use crate::error::{Error, Result};

/// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// The `BPF_OBJ_*` part of `union bpf_attr`. The kernel accepts a shorter
/// attr than its own as long as it is a prefix (the rest is taken as zero).
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Kernel(format!("pin path {} has a NUL byte", path.display())))
}

/// BPF_OBJ_GET: a new fd referring to the object pinned at `path`.
fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = cpath(path)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: attr is a valid prefix of union bpf_attr and outlives the call;
    // the pathname pointer is a NUL-terminated string alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjAttr, std::mem::size_of::<ObjAttr>()) };
    if fd < 0 {
        return Err(Error::io(format!("BPF_OBJ_GET {}", path.display()))(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: pins the object behind `fd` at `path`.
fn obj_pin(fd: &OwnedFd, path: &Path) -> Result<()> {
    let c = cpath(path)?;
    let attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    // SAFETY: as in obj_get; the fd is open for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &attr as *const ObjAttr, std::mem::size_of::<ObjAttr>()) };
    if r < 0 {
        return Err(Error::io(format!("BPF_OBJ_PIN {}", path.display()))(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// BPF_LINK_CREATE (include/uapi/linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;

/// The `link_create` part of `union bpf_attr` (a prefix: the rest is zero).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// BPF_LINK_CREATE of program `prog` on cgroup `cgroup` for `attach_type`
/// (flags 0: cgroup bpf_links always run alongside the other programs on
/// the cgroup, as BPF_F_ALLOW_MULTI). For the program types aya 0.14
/// attaches without a pinnable link (cgroup device, cgroup sockopt).
pub fn cgroup_link_create(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<OwnedFd> {
    let attr = LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target_fd: cgroup.as_raw_fd() as u32, attach_type, flags: 0 };
    // SAFETY: attr is a valid prefix of union bpf_attr and outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &attr as *const LinkCreateAttr, std::mem::size_of::<LinkCreateAttr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the link (or any bpf object) behind `fd` at `path`.
pub fn pin_fd(fd: &OwnedFd, path: &Path) -> Result<()> {
    obj_pin(fd, path)
}

/// A pin the agent found missing and put back (or could not).
#[derive(Clone, Debug)]
pub struct Repinned {
    pub pin: PathBuf,
    /// The target's cgroup id, for a per-target link.
    pub cgroup_id: Option<u64>,
    /// None when re-pinned; the error otherwise (the link stays attached
    /// through the fd while the agent runs).
    pub error: Option<String>,
}

/// Every link of one generation, held by fd. Cloning shares the same set
/// (the level modules that attach and detach hold a clone).
#[derive(Clone, Debug, Default)]
pub struct LinkKeeper {
    held: Arc<Mutex<BTreeMap<PathBuf, OwnedFd>>>,
    /// The held pins by target (its cgroup id as the pin directory names
    /// it; `None`: host-wide): an action on one target looks at its own
    /// pins without a walk of every target's.
    by_target: Arc<Mutex<BTreeMap<Option<String>, std::collections::BTreeSet<PathBuf>>>>,
    /// Pin directories found whole and unchanged since (see `pin_stamps`):
    /// their pins are not looked at one by one.
    stamps: super::pin_stamps::PinStamps,
    /// The pin directories of the held pins (one per target), made again
    /// only after a hold or release changed the set: the watch reads them
    /// every tick.
    dirs: Arc<Mutex<Option<Vec<PathBuf>>>>,
}

impl LinkKeeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, OwnedFd>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<Option<String>, std::collections::BTreeSet<PathBuf>>> {
        self.by_target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the link pinned at `pin` (no-op if already held).
    pub fn hold(&self, pin: &Path) -> Result<()> {
        let mut held = self.lock();
        if !held.contains_key(pin) {
            held.insert(pin.to_owned(), obj_get(pin)?);
            self.index().entry(target_of(pin).map(str::to_owned)).or_default().insert(pin.to_owned());
            self.forget_dirs();
        }
        Ok(())
    }

    /// Holds every link pinned in generation `gen`: `links/*` and
    /// `targets/*/*` (opened from the pins a previous agent left).
    pub fn hold_generation(&self, gen: &Path) {
        let mut pins: Vec<PathBuf> = files(&gen.join("links"));
        if let Ok(rd) = fs::read_dir(gen.join("targets")) {
            for d in rd.flatten() {
                pins.extend(files(&d.path()));
            }
        }
        for p in pins {
            if let Err(e) = self.hold(&p) {
                warn!(pin = %p.display(), "cannot hold link by fd: {e}");
            }
        }
    }

    /// Drops the fd of `pin` and of every link below it (a target's
    /// directory): the caller has removed or is removing the pins, and the
    /// links detach once both references are gone.
    pub fn release(&self, pin: &Path) {
        let mut held = self.lock();
        let gone = at_or_below(&held, pin);
        let mut index = self.index();
        for p in &gone {
            held.remove(p);
            let key = target_of(p).map(str::to_owned);
            if let Some(pins) = index.get_mut(&key) {
                pins.remove(p);
                if pins.is_empty() {
                    index.remove(&key);
                }
            }
        }
        self.stamps.forget(pin);
        self.forget_dirs();
    }

    fn forget_dirs(&self) {
        *self.dirs.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How many links are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no link is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts back every pin that disappeared, from the fd held. A removed
    /// target directory is recreated. Returns what was found missing.
    pub fn check(&self) -> Vec<Repinned> {
        self.check_matching(|_| true)
    }

    /// [`LinkKeeper::check`] of the host-wide links and those of the target
    /// whose cgroup id is `cgroup_id` only: what an action on that target
    /// looks at, without a walk of every target's pins.
    pub fn check_target(&self, cgroup_id: Option<u64>) -> Vec<Repinned> {
        let pins: Vec<PathBuf> = {
            let index = self.index();
            let own = cgroup_id.and_then(|id| index.get(&Some(id.to_string())));
            index.get(&None).into_iter().chain(own).flatten().cloned().collect()
        };
        self.check_list(pins)
    }

    /// The held pins missing now, found without putting anything back:
    /// the walk (thousands of pins with many targets) can run without the
    /// agent's state lock; [`LinkKeeper::check_pins`] then repairs under it.
    pub fn missing(&self) -> Vec<PathBuf> {
        // The directories first (one per target), from the index: a pin
        // list is made only for those that changed (see `pin_stamps`).
        let cached = self.dirs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let dirs: Vec<PathBuf> = match cached {
            Some(d) => d,
            None => {
                let index = self.index();
                let mut dirs = Vec::with_capacity(index.len());
                for pins in index.values() {
                    let mut last: Option<&Path> = None;
                    for d in pins.iter().filter_map(|p| p.parent()) {
                        if last != Some(d) {
                            dirs.push(d.to_owned());
                            last = Some(d);
                        }
                    }
                }
                // Kept unless a hold or release since made it stale (both
                // take the index lock, held here).
                let mut cache = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
                *cache = Some(dirs.clone());
                dirs
            }
        };
        let changed = self.stamps.changed(dirs);
        if changed.is_empty() {
            return Vec::new();
        }
        let wanted: std::collections::HashSet<&Path> = changed.iter().map(|(d, _)| d.as_path()).collect();
        let pins: Vec<PathBuf> = self.lock().keys().filter(|p| p.parent().is_some_and(|d| wanted.contains(d))).cloned().collect();
        self.stamps.look(changed, pins)
    }

    /// [`LinkKeeper::check`] of `pins` only (those [`LinkKeeper::missing`]
    /// found): each is looked at again, a pin released meanwhile is left.
    pub fn check_pins(&self, pins: &[PathBuf]) -> Vec<Repinned> {
        let wanted: std::collections::BTreeSet<&PathBuf> = pins.iter().collect();
        self.check_matching(|p| wanted.contains(&p.to_path_buf()))
    }

    /// Checks the held pins that `select` picks. The pins are stat'ed
    /// without holding the set (thousands with many targets): attaching
    /// and detaching do not wait for the walk.
    fn check_matching(&self, select: impl Fn(&Path) -> bool) -> Vec<Repinned> {
        let pins: Vec<PathBuf> = self.lock().keys().filter(|p| select(p)).cloned().collect();
        self.check_list(pins)
    }

    /// Puts back those of `pins` that are missing (and still held).
    fn check_list(&self, pins: Vec<PathBuf>) -> Vec<Repinned> {
        // Only a missing pin is put back. Known gap: a path that exists
        // is not checked to be our link (a foreign pin or file put in
        // its place is left alone; the link stays held by our fd).
        let missing: Vec<PathBuf> = self.stamps.missing(pins);
        if missing.is_empty() {
            return Vec::new();
        }
        let held = self.lock();
        let mut out = Vec::new();
        for pin in &missing {
            // Released meanwhile (the target went away): nothing to put back.
            let Some(fd) = held.get(pin) else { continue };
            let error = pin
                .parent()
                .map_or(Ok(()), |d| fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display()))))
                .and_then(|()| obj_pin(fd, pin))
                .err()
                .map(|e| e.to_string());
            let cgroup_id = target_of(pin).and_then(|d| d.parse().ok());
            out.push(Repinned { pin: pin.clone(), cgroup_id, error });
        }
        out
    }
}

/// The target directory name (its cgroup id) of a per-target pin
/// (`<gen>/targets/<id>/<link>`); `None` for a host-wide one.
fn target_of(pin: &Path) -> Option<&str> {
    let dir = pin.parent()?;
    dir.parent().and_then(Path::file_name).is_some_and(|n| n == "targets").then(|| dir.file_name()?.to_str()).flatten()
}

/// The keys of `map` at or below `dir`. A path orders by its components,
/// so those are one run of keys from `dir` on: a release looks at its own
/// pins, not at every target's (a target's release at 1,000 targets walked
/// ~10,000 pins).
pub(super) fn at_or_below<V>(map: &BTreeMap<PathBuf, V>, dir: &Path) -> Vec<PathBuf> {
    use std::ops::Bound;
    map.range::<Path, _>((Bound::Included(dir), Bound::Unbounded)).map(|(p, _)| p).take_while(|p| p.starts_with(dir)).cloned().collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| e.path()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_or_below_is_the_run_of_keys_under_a_directory() {
        let gen = Path::new("/sys/fs/bpf/kp/gen-1");
        let keys = ["links/kp_guard_fork", "targets/42/a", "targets/42/b", "targets/421/a", "targets/41/a", "targets/42x", "targets/42"];
        let map: BTreeMap<PathBuf, ()> = keys.iter().map(|k| (gen.join(k), ())).collect();
        let mut want: Vec<PathBuf> = map.keys().filter(|p| p.starts_with(gen.join("targets/42"))).cloned().collect();
        want.sort();
        assert_eq!(at_or_below(&map, &gen.join("targets/42")), want);
        assert_eq!(want.len(), 3);
        assert_eq!(at_or_below(&map, &gen.join("links/kp_guard_fork")), vec![gen.join("links/kp_guard_fork")]);
        assert!(at_or_below(&map, &gen.join("targets/43")).is_empty());
    }

    #[test]
    fn target_of_names_a_per_target_pin_only() {
        let gen = Path::new("/sys/fs/bpf/kp/gen-1");
        assert_eq!(target_of(&gen.join("targets/4242/kp_isolate_connect4")), Some("4242"));
        assert_eq!(target_of(&gen.join("links/kp_guard_fork")), None);
        assert_eq!(target_of(&gen.join("targets")), None);
    }
}
