//! The agent's registry of targets, persisted atomically to
//! `<state-dir>/targets.json` (write temp, fsync, rename, fsync dir) so a
//! crash never leaves a torn file. The CLI's fallback stop reads it too.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    stop::StopReport,
};

/// Longest accepted target name.
pub const MAX_NAME: usize = 64;

/// File name of the registry inside the state dir.
pub const TARGETS_FILE: &str = "targets.json";

/// Human name of a level number (see [`crate::level::Level`]).
pub use crate::level::name_of as level_name;

/// Checks a target name: it becomes a cgroup directory name, so no `/`, no
/// `.`/`..`, nothing a shell or a path would misread, and bounded length.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why| Err(Error::InvalidName { name: name.to_owned(), why });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 64 bytes");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("must not contain `..`");
    }
    if name.contains('/') {
        return bad("must not contain `/`");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return bad("must not start with `-` or `.`");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return bad("only ASCII letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}

/// One managed target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Target {
    pub name: String,
    /// Absolute path of the target's cgroup directory.
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// Depth of the cgroup below the cgroup2 root.
    pub depth: u32,
    /// killpath created the cgroup (and removes it on release when empty).
    pub created: bool,
    pub level: u32,
    pub since_unix_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<StopReport>,
    /// Host-side network devices bound to the target (`isolate --netdev`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netdevs: Vec<String>,
    /// Revoked capabilities (`killpath_common::cap` bits).
    #[serde(default)]
    pub revoked: u32,
    /// What runs in audit mode (`killpath_common::audit` bits: audited
    /// capabilities, and isolation): counted like refusals, not refused.
    #[serde(default)]
    pub audit: u32,
    /// `--allow-connect` entries, as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_connect: Vec<String>,
    /// `--allow-write` directories, resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_write: Vec<String>,
    /// Adopted (`adopt`), not started by `run`: its processes may hold
    /// sockets created before they joined the target.
    #[serde(default)]
    pub adopted: bool,
    /// Level-1 ceilings (empty: not throttled).
    #[serde(default, skip_serializing_if = "crate::throttle::Ceilings::is_empty")]
    pub throttle: crate::throttle::Ceilings,
    /// Level changes, oldest first (the last [`MAX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<LevelChange>,
}

/// Level changes kept per target.
pub const MAX_HISTORY: usize = 100;

/// One level change of a target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LevelChange {
    pub time_unix_us: u64,
    pub from: String,
    pub to: String,
    /// The command: escalate, throttle, degrade, isolate, stop, restore, ...
    pub action: String,
    pub actor: crate::journal::Actor,
}

impl Target {
    /// Appends a level change to the history.
    pub fn record_level(&mut self, from: u32, to: u32, action: &str, actor: crate::journal::Actor) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        self.history.push(LevelChange { time_unix_us: now, from: level_name(from).into(), to: level_name(to).into(), action: action.into(), actor });
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }

    /// The kernel map entry for this target at `level`, keeping its
    /// revoked capabilities and what it audits.
    pub fn state(&self, level: u32) -> killpath_common::TargetState {
        killpath_common::TargetState { level, depth: self.depth, revoked: self.revoked, audit: self.audit }
    }
}

/// All targets, by name.
#[derive(Debug, Default)]
pub struct Registry {
    path: PathBuf,
    pub targets: BTreeMap<String, Target>,
    /// Inside a journaled transaction, [`Registry::save`] only marks the
    /// registry changed and the transaction writes it once, after the
    /// action and its level history (see [`Registry::begin_deferred`]).
    /// Open [`Registry::begin_deferred`] calls (a transaction may run
    /// inside another: an escalation's steps).
    defer: u32,
    changed: bool,
}

impl Registry {
    /// Loads `<state_dir>/targets.json` (empty if absent).
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(TARGETS_FILE);
        let targets = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::InvalidRequest(format!("{} is corrupt: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::Io { what: format!("reading {}", path.display()), source: e }),
        };
        Ok(Self { path, targets, defer: 0, changed: false })
    }

    pub fn get(&self, name: &str) -> Result<&Target> {
        self.targets.get(name).ok_or_else(|| Error::UnknownTarget(name.to_owned()))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Target> {
        self.targets.get_mut(name).ok_or_else(|| Error::UnknownTarget(name.to_owned()))
    }

    /// Writes the registry durably: temp file, fsync, rename, fsync dir
    /// (or, inside [`Registry::begin_deferred`], marks it to be written at its end).
    pub fn save(&mut self) -> Result<()> {
        if self.defer > 0 {
            self.changed = true;
            return Ok(());
        }
        self.save_now()
    }

    /// Writes the registry durably now, deferred or not: a new target is in
    /// the file before any task is moved into its cgroup.
    pub fn save_now(&mut self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.targets).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        crate::kernel::durable::write(&self.path, &bytes)?;
        self.changed = false;
        Ok(())
    }

    /// From now on [`Registry::save`] only marks the registry changed,
    /// until [`Registry::end_deferred`] writes it once: a transaction
    /// whose action saves and then records the level history writes the
    /// whole file once, not twice (with many targets the file is large).
    pub fn begin_deferred(&mut self) {
        self.defer += 1;
    }

    /// Ends [`Registry::begin_deferred`]: writes the registry if anything
    /// saved meanwhile (before the transaction journals its result). Every
    /// end writes, nested or not: an inner transaction (an approval's
    /// escalation) journals its own result, which must not be ahead of the
    /// file. A failed write leaves the registry marked changed (the next end
    /// or save writes it).
    pub fn end_deferred(&mut self) -> Result<()> {
        self.defer = self.defer.saturating_sub(1);
        if self.changed {
            self.save_now()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use killpath_common::level;

    use super::*;

    /// Target "a" at `cgroup` (id `id`, depth 1, created) at `lvl`.
    fn sample(cgroup: &str, id: u64, lvl: u32) -> Target {
        Target {
            name: "a".into(),
            cgroup: cgroup.into(),
            cgroup_id: id,
            depth: 1,
            created: true,
            level: lvl,
            since_unix_us: 1,
            last_stop: None,
            netdevs: Vec::new(),
            revoked: 0,
            audit: 0,
            allow_connect: Vec::new(),
            allow_write: Vec::new(),
            adopted: false,
            throttle: Default::default(),
            history: Vec::new(),
        }
    }

    #[test]
    fn names() {
        for ok in ["web", "job-1", "a.b_c", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "a/b", "a..b", "-x", ".hidden", "sp ace", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::load(dir.path()).unwrap();
        assert!(r.targets.is_empty());
        let t = sample("/sys/fs/cgroup/a", 42, level::STOPPED);
        r.targets.insert("a".into(), t.clone());
        r.save().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap(), &t);
    }

    #[test]
    fn deferred_saves_are_written_once_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::load(dir.path()).unwrap();
        r.begin_deferred();
        r.begin_deferred();
        r.targets.insert("a".into(), sample("/c/a", 7, level::ISOLATE));
        r.save().unwrap();
        assert!(Registry::load(dir.path()).unwrap().targets.is_empty(), "nothing written while deferred");
        r.end_deferred().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap().level, level::ISOLATE, "written at the inner end (its result is journaled next)");
        r.get_mut("a").unwrap().level = level::DEGRADE;
        r.save().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap().level, level::ISOLATE, "still deferred by the outer transaction");
        r.end_deferred().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap().level, level::DEGRADE, "written at the outer end");
        r.get_mut("a").unwrap().level = level::STOPPED;
        r.save().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap().level, level::STOPPED, "not deferred: written at once");
    }
}
