//! Which link pins need a look: a directory whose held pins were all there
//! and which has not changed since is not walked again.
//!
//! The agent looks for removed link pins every 0.5 s and before each
//! command (`links::LinkKeeper`). One `lstat` per pin is nine per target:
//! with 1,000 targets, ~18,000 a second, a tenth of a CPU for an agent
//! that does nothing (measured: 1.07 s of CPU in 10 s idle), and taken from
//! a stop on a two-core host. Instead each pin directory is looked at
//! once: its device, inode and ctime. Removing, renaming or adding an
//! entry sets the directory's ctime to the current time (bpffs
//! `simple_unlink`/`simple_rename`/`bpf_mkobj`, as every Linux
//! filesystem), and ctime cannot be set from user space (utimensat sets
//! only atime and mtime). A mount over the directory, or over any of its
//! parents, changes the device and inode that the path leads to. Either
//! way the directory's pins are looked at one by one again.
//!
//! The race it avoids: timestamps are coarse (a clock tick), so a pin
//! removed in the same tick as the directory's last change could leave
//! its ctime as it was. A stamp is therefore trusted only when its ctime
//! is more than [`SETTLE`] older than the check that found every pin
//! there: any later change then gives a later ctime. A wall clock stepped
//! back by more than that could, in principle, give a removal the very
//! ctime recorded (to the nanosecond); a root workload that can do that
//! can also stop the agent.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How much older than the check a directory's ctime must be for its
/// stamp to be trusted (many clock ticks; see the module doc).
const SETTLE: Duration = Duration::from_secs(1);

/// What a pin directory's path led to, and its last change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(dir: &Path) -> Option<Self> {
        let m = fs::symlink_metadata(dir).ok()?;
        Some(Self { dev: m.dev(), ino: m.ino(), ctime: m.ctime(), ctime_nsec: m.ctime_nsec() })
    }

    /// Whether the last change is at least [`SETTLE`] before `now`.
    fn settled(&self, now: Duration) -> bool {
        let changed = Duration::new(self.ctime.max(0) as u64, self.ctime_nsec.clamp(0, 999_999_999) as u32);
        changed + SETTLE <= now
    }
}

/// Stamps of the pin directories whose pins were all there (shared by
/// the keeper's clones, as its pin set is).
#[derive(Clone, Debug, Default)]
pub(super) struct PinStamps(Arc<Mutex<BTreeMap<PathBuf, Stamp>>>);

/// Directories whose stamp is gone or changed, with what they look like now.
pub(super) type Changed = Vec<(PathBuf, Option<Stamp>)>;

impl PinStamps {
    /// Those of `pins` that are missing, looking at each pin only in a
    /// directory that changed since its stamp (or has none).
    pub(super) fn missing(&self, pins: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = pins.iter().filter_map(|p| p.parent().map(Path::to_owned)).collect();
        dirs.sort();
        dirs.dedup();
        let changed = self.changed(dirs);
        self.look(changed, pins)
    }

    /// Those of `dirs` (each once) not unchanged since a stamp. Their
    /// stamps are read before any pin is: a change after this read is
    /// either seen by the pins' lstat or gives a later ctime.
    pub(super) fn changed(&self, dirs: Vec<PathBuf>) -> Changed {
        // No lock over the syscalls: the walk of thousands runs beside
        // the agent's commands, which check their own target's pins.
        let known: Vec<Option<Stamp>> = {
            let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            dirs.iter().map(|d| all.get(d).copied()).collect()
        };
        dirs.into_iter()
            .zip(known)
            .filter_map(|(dir, known)| {
                let now = Stamp::of(&dir);
                (now.is_none() || now != known).then_some((dir, now))
            })
            .collect()
    }

    /// Looks at those of `pins` in a `changed` directory one by one:
    /// returns the missing ones, and stamps each directory found whole
    /// and settled (any other forgets its stamp).
    pub(super) fn look(&self, changed: Changed, pins: Vec<PathBuf>) -> Vec<PathBuf> {
        if changed.is_empty() {
            return Vec::new();
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut of_dir: HashMap<&Path, Vec<&PathBuf>> = HashMap::new();
        for p in &pins {
            if let Some(d) = p.parent() {
                of_dir.entry(d).or_default().push(p);
            }
        }
        let mut missing = Vec::new();
        let mut settled = Vec::new();
        let mut unsettled = Vec::new();
        for (dir, stamp) in changed {
            let gone: Vec<PathBuf> =
                of_dir.get(dir.as_path()).into_iter().flatten().filter(|p| fs::symlink_metadata(p).is_err()).map(|p| (*p).clone()).collect();
            match stamp {
                Some(s) if gone.is_empty() && s.settled(now) => settled.push((dir, s)),
                _ => unsettled.push(dir),
            }
            missing.extend(gone);
        }
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for d in unsettled {
            all.remove(&d);
        }
        all.extend(settled);
        missing
    }

    /// Forgets the stamps of directories at or below `dir` (the agent
    /// released their pins).
    pub(super) fn forget(&self, dir: &Path) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for d in super::links::at_or_below(&all, dir) {
            all.remove(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_directory_is_not_walked_until_it_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("targets/42");
        fs::create_dir_all(&dir).expect("mkdir");
        let pins: Vec<PathBuf> = ["a", "b"].iter().map(|n| dir.join(n)).collect();
        for p in &pins {
            fs::write(p, b"").expect("pin");
        }
        let stamps = PinStamps::default();
        // Just made: not settled, so it is walked every time.
        assert!(stamps.missing(pins.clone()).is_empty());
        assert!(stamps.0.lock().unwrap().is_empty(), "a fresh directory is not trusted");
        // Older than SETTLE: stamped once every pin was seen.
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        assert!(stamps.missing(pins.clone()).is_empty());
        assert_eq!(stamps.0.lock().unwrap().len(), 1);
        // A removal right after the stamp changes ctime: found at once.
        fs::remove_file(&pins[0]).expect("rm");
        assert_eq!(stamps.missing(pins.clone()), vec![pins[0].clone()]);
        assert!(stamps.0.lock().unwrap().is_empty(), "a directory with a pin missing keeps no stamp");
        // Put back: walked again until it settles.
        fs::write(&pins[0], b"").expect("pin");
        assert!(stamps.missing(pins.clone()).is_empty());
        // A directory that is gone (or replaced) has another or no stamp.
        fs::remove_dir_all(&dir).expect("rm -r");
        assert_eq!(stamps.missing(pins.clone()).len(), 2);
    }

    #[test]
    fn a_stamp_is_settled_only_well_after_its_change() {
        let s = Stamp { dev: 1, ino: 2, ctime: 100, ctime_nsec: 500_000_000 };
        assert!(!s.settled(Duration::from_secs(100)));
        assert!(!s.settled(Duration::new(101, 499_999_999)));
        assert!(s.settled(Duration::new(101, 500_000_000)));
    }
}
