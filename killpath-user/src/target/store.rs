//! The registry on disk: one file per target, `<state-dir>/targets/<name>.json`,
//! so a command that changes one target writes one small file whatever the
//! number of targets (the whole-registry file it replaces made a stop at
//! 1,000 targets 2.6× a stop at one).
//!
//! Crash safety, per file: write `.<name>.json.tmp`, fdatasync it, rename it
//! over `<name>.json`, fsync the directory (the rename is durable once that
//! returns). A kill -9 or a power cut at any point leaves each target's file
//! whole, old or new; a removed target's file is unlinked, then the
//! directory fsynced. Temp files (names starting with `.`, which a target
//! name cannot) are ignored on load and swept by the agent.
//!
//! The former single file `targets.json` is read when present and, by the
//! agent only, migrated: every target written, synced, then the old file
//! unlinked and the state dir fsynced. Until that unlink is durable the old
//! file stays the authority, so a crash mid-migration loses nothing.
use std::{
    collections::{hash_map::DefaultHasher, BTreeMap},
    fs,
    hash::{Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
};

use super::{validate_name, Target};
use crate::error::{Error, Result};

/// Directory of the per-target files inside the state dir.
pub const TARGETS_DIR: &str = "targets";

/// What a load found: the targets, and the hash of each target's file as
/// it is on disk (a save skips a target whose bytes did not change).
pub(super) struct Loaded {
    pub targets: BTreeMap<String, Target>,
    pub written: BTreeMap<String, u64>,
    /// Read from the former `targets.json` (the agent migrates it).
    pub legacy: bool,
}

/// Hash of a file's bytes.
pub(super) fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The bytes of `t`'s file.
pub(super) fn encode(t: &Target) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(t).map_err(|e| Error::InvalidRequest(format!("encoding target {}: {e}", t.name)))
}

/// Reads the registry under `state_dir`: the former single file if it is
/// still there (a migration not finished), else the per-target files.
pub(super) fn load(state_dir: &Path) -> Result<Loaded> {
    let legacy = state_dir.join(super::TARGETS_FILE);
    match fs::read(&legacy) {
        Ok(bytes) => {
            let targets: BTreeMap<String, Target> =
                serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("{} is corrupt: {e}", legacy.display())))?;
            return Ok(Loaded { targets, written: BTreeMap::new(), legacy: true });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io { what: format!("reading {}", legacy.display()), source: e }),
    }
    let dir = state_dir.join(TARGETS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded { targets: BTreeMap::new(), written: BTreeMap::new(), legacy: false }),
        Err(e) => return Err(Error::Io { what: format!("reading {}", dir.display()), source: e }),
    };
    let mut targets = BTreeMap::new();
    let mut written = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("reading {}", dir.display())))?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else { continue };
        // Temp files of an interrupted write start with `.`: never a target.
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let corrupt = |why: String| Error::InvalidRequest(format!("{} is corrupt: {why}", path.display()));
        validate_name(name).map_err(|e| corrupt(e.to_string()))?;
        let bytes = fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
        let t: Target = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if t.name != name {
            return Err(corrupt(format!("it holds target `{}`", t.name)));
        }
        written.insert(name.to_owned(), digest(&bytes));
        targets.insert(name.to_owned(), t);
    }
    Ok(Loaded { targets, written, legacy: false })
}

/// The per-target files' directory, created (and made durable in the state
/// dir) if missing; temp files a crash left behind are removed.
pub(super) fn open_dir(state_dir: &Path) -> Result<PathBuf> {
    let dir = state_dir.join(TARGETS_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        sync_dir(state_dir)?;
    }
    for entry in fs::read_dir(&dir).map_err(Error::io(format!("reading {}", dir.display())))?.flatten() {
        if entry.file_name().to_str().is_some_and(|f| f.starts_with('.') && f.ends_with(".tmp")) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(dir)
}

/// Replaces the former single file by per-target files: each written (one
/// syncfs for all), the directory fsynced, then `targets.json` unlinked and
/// the state dir fsynced. Files of targets the old file does not hold go.
pub(super) fn migrate(state_dir: &Path, dir: &Path, targets: &BTreeMap<String, Target>) -> Result<BTreeMap<String, u64>> {
    let mut written = BTreeMap::new();
    for t in targets.values() {
        let bytes = encode(t)?;
        let path = file_of(dir, &t.name);
        fs::write(&path, &bytes).map_err(Error::io(format!("writing {}", path.display())))?;
        written.insert(t.name.clone(), digest(&bytes));
    }
    for entry in fs::read_dir(dir).map_err(Error::io(format!("reading {}", dir.display())))?.flatten() {
        let stale = entry.file_name().to_str().and_then(|f| f.strip_suffix(".json")).is_some_and(|n| !n.starts_with('.') && !targets.contains_key(n));
        if stale {
            fs::remove_file(entry.path()).map_err(Error::io(format!("removing {}", entry.path().display())))?;
        }
    }
    // One flush for every file written above (instead of one each).
    let d = fs::File::open(dir).map_err(Error::io(format!("opening {}", dir.display())))?;
    nix::unistd::syncfs(&d).map_err(|e| Error::Io { what: format!("syncfs {}", dir.display()), source: e.into() })?;
    d.sync_all().map_err(Error::io(format!("fsync {}", dir.display())))?;
    let legacy = state_dir.join(super::TARGETS_FILE);
    fs::remove_file(&legacy).map_err(Error::io(format!("removing {}", legacy.display())))?;
    sync_dir(state_dir)?;
    Ok(written)
}

/// `<dir>/<name>.json`.
fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Writes one target's file (not yet durable: the rename is, after
/// [`sync_dir`]): temp file, fdatasync, rename over the file.
pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = file_of(dir, name);
    let tmp = dir.join(format!(".{name}.json.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(Error::io(format!("writing {}", path.display())))
}

/// Unlinks one target's file (durable after [`sync_dir`]).
pub(super) fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = file_of(dir, name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { what: format!("removing {}", path.display()), source: e }),
        _ => Ok(()),
    }
}

/// fsync of a directory: the renames and unlinks in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(format!("fsync {}", dir.display())))
}
