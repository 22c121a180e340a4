//! The agent's registry of targets, one crash-safe file per target under
//! `<state-dir>/targets/` (see [`store`]): a command writes only what it
//! changed. The CLI's fallback stop reads it too.
mod index;
mod store;

pub use store::TARGETS_DIR;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    stop::StopReport,
};

/// Longest accepted target name.
pub const MAX_NAME: usize = 64;

/// The former single-file registry inside the state dir (read and migrated
/// to [`TARGETS_DIR`] when found).
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
    /// The activity trail records this target (`run --trail`, `trail --on`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trail: bool,
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
    /// A new target at normal since `since_unix_us`: nothing revoked,
    /// audited, throttled or recorded yet.
    pub fn new(name: &str, cgroup: PathBuf, cgroup_id: u64, depth: u32, created: bool, adopted: bool, since_unix_us: u64) -> Self {
        Self {
            name: name.to_owned(),
            cgroup,
            cgroup_id,
            depth,
            created,
            level: killpath_common::level::NORMAL,
            since_unix_us,
            last_stop: None,
            netdevs: Vec::new(),
            revoked: 0,
            audit: 0,
            allow_connect: Vec::new(),
            allow_write: Vec::new(),
            adopted,
            throttle: Default::default(),
            trail: false,
            history: Vec::new(),
        }
    }

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

/// All targets, by name: read freely through `targets`; changed only
/// through [`Registry::get_mut`], [`Registry::insert`] and
/// [`Registry::remove`], which remember what to write.
#[derive(Debug, Default)]
pub struct Registry {
    /// `<state-dir>/targets`, once the agent opened it ([`Registry::open`]);
    /// a registry only loaded (the CLI's fallback) cannot be saved.
    dir: Option<PathBuf>,
    pub targets: Targets,
    /// Names changed (or removed) since their file was last written.
    dirty: BTreeSet<String>,
    /// Hash of each target's file as on disk: a save skips an unchanged one.
    written: BTreeMap<String, u64>,
    /// Inside a journaled transaction, [`Registry::save`] only keeps what
    /// changed and the transaction writes it once, after the action and
    /// its level history (see [`Registry::begin_deferred`]). Open
    /// [`Registry::begin_deferred`] calls (a transaction may run inside
    /// another: an escalation's steps).
    defer: u32,
    /// The targets by cgroup path and id (see `index`).
    index: index::Index,
}

/// The targets, by name, read-only (see [`Registry`]).
#[derive(Debug, Default)]
pub struct Targets(BTreeMap<String, Target>);

impl std::ops::Deref for Targets {
    type Target = BTreeMap<String, Target>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Registry {
    /// Reads the registry under `state_dir` (empty if none), without
    /// writing anything: the CLI's fallback.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let l = store::load(state_dir)?;
        let index = index::Index::of(l.targets.values());
        Ok(Self { dir: None, targets: Targets(l.targets), dirty: BTreeSet::new(), written: l.written, defer: 0, index })
    }

    /// Reads the registry under `state_dir` for the agent, which writes it:
    /// the per-target files' directory is made, a former `targets.json`
    /// migrated to it.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let l = store::load(state_dir)?;
        let dir = store::open_dir(state_dir)?;
        let written = if l.legacy { store::migrate(state_dir, &dir, &l.targets)? } else { l.written };
        let index = index::Index::of(l.targets.values());
        Ok(Self { dir: Some(dir), targets: Targets(l.targets), dirty: BTreeSet::new(), written, defer: 0, index })
    }

    pub fn get(&self, name: &str) -> Result<&Target> {
        self.targets.get(name).ok_or_else(|| Error::UnknownTarget(name.to_owned()))
    }

    /// Cgroup ids of the targets whose cgroup is `cgroup` or below it (a
    /// stopped target and those nested in it): the agent's stop and the
    /// CLI's fallback stop.
    pub fn nested_ids(&self, cgroup: &Path) -> Vec<u64> {
        self.index.nested(&self.targets, cgroup).into_iter().map(|o| o.cgroup_id).collect()
    }

    /// The targets whose cgroup is `cgroup` or one of its ancestors,
    /// innermost first: a lookup per ancestor, whatever the number of
    /// targets.
    pub fn enclosing(&self, cgroup: &Path) -> Vec<&Target> {
        self.index.enclosing(&self.targets, cgroup)
    }

    /// A target whose cgroup id is one of `ids`, if any.
    pub fn with_cgroup_id(&self, ids: &[u64]) -> Option<&Target> {
        self.index.with_id(&self.targets, ids)
    }

    /// Target `name`, to change: written at the next [`Registry::save`]
    /// (and indexed again then).
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Target> {
        let t = self.targets.0.get_mut(name).ok_or_else(|| Error::UnknownTarget(name.to_owned()))?;
        self.dirty.insert(name.to_owned());
        self.index.touch(name);
        Ok(t)
    }

    /// Adds or replaces a target (written at the next [`Registry::save`]).
    pub fn insert(&mut self, t: Target) {
        self.dirty.insert(t.name.clone());
        self.index.add(&t);
        self.targets.0.insert(t.name.clone(), t);
    }

    /// Removes a target (its file goes at the next [`Registry::save`]).
    pub fn remove(&mut self, name: &str) -> Option<Target> {
        self.dirty.insert(name.to_owned());
        self.index.drop_name(name);
        self.targets.0.remove(name)
    }

    /// Files again the targets handed out by [`Registry::get_mut`].
    fn reindex(&mut self) {
        for name in self.index.touched() {
            match self.targets.0.get(&name) {
                Some(t) => self.index.add(t),
                None => self.index.drop_name(&name),
            }
        }
    }

    /// Writes what changed durably: per changed target, its file (temp,
    /// fdatasync, rename) or its removal, then one fsync of the directory
    /// (or, inside [`Registry::begin_deferred`], keeps it for its end).
    pub fn save(&mut self) -> Result<()> {
        if self.defer > 0 {
            self.reindex();
            return Ok(());
        }
        self.save_now()
    }

    /// Writes what changed durably now, deferred or not: a new target is in
    /// its file before any task is moved into its cgroup. What fails to be
    /// written stays pending (the next save writes it).
    pub fn save_now(&mut self) -> Result<()> {
        self.reindex();
        if self.dirty.is_empty() {
            return Ok(());
        }
        let Some(dir) = self.dir.clone() else {
            return Err(Error::InvalidRequest("the registry was loaded read-only; nothing can be saved".into()));
        };
        // Names whose file changed here: durable only after the fsync of
        // the directory below.
        let mut touched = Vec::new();
        // Taken out one by one: what is not reached after a failure stays
        // pending.
        while let Some(name) = self.dirty.pop_first() {
            let wrote = match self.targets.get(&name) {
                Some(t) => store::encode(t).and_then(|bytes| {
                    let d = store::digest(&bytes);
                    if self.written.get(&name) == Some(&d) {
                        return Ok(false);
                    }
                    store::write(&dir, &name, &bytes)?;
                    self.written.insert(name.clone(), d);
                    Ok(true)
                }),
                // A removal always syncs the directory (a retry after a
                // failed sync finds the file gone already).
                None => store::remove(&dir, &name).map(|()| {
                    self.written.remove(&name);
                    true
                }),
            };
            match wrote {
                Ok(true) => touched.push(name),
                Ok(false) => {}
                Err(e) => {
                    touched.push(name);
                    self.forget(touched);
                    return Err(e);
                }
            }
        }
        if !touched.is_empty() {
            if let Err(e) = store::sync_dir(&dir) {
                self.forget(touched);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `names` are not known durable: written again by the next save.
    fn forget(&mut self, names: Vec<String>) {
        for name in names {
            self.written.remove(&name);
            self.dirty.insert(name);
        }
    }

    /// From now on [`Registry::save`] only keeps what changed, until
    /// [`Registry::end_deferred`] writes it once: a transaction whose
    /// action saves and then records the level history writes each
    /// changed target's file once, not twice.
    pub fn begin_deferred(&mut self) {
        self.defer += 1;
    }

    /// Ends [`Registry::begin_deferred`]: writes what changed meanwhile
    /// (before the transaction journals its result). Every end writes,
    /// nested or not: an inner transaction (an approval's escalation)
    /// journals its own result, which must not be ahead of the files. A
    /// failed write stays pending (the next end or save writes it).
    pub fn end_deferred(&mut self) -> Result<()> {
        self.defer = self.defer.saturating_sub(1);
        self.save_now()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use killpath_common::level;

    use super::*;

    /// Target "a" at `cgroup` (id `id`, depth 1, created) at `lvl`.
    fn sample(cgroup: &str, id: u64, lvl: u32) -> Target {
        Target { level: lvl, ..Target::new("a", cgroup.into(), id, 1, true, false, 1) }
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

    /// Target `name` at level `lvl`.
    fn named(name: &str, lvl: u32) -> Target {
        Target { name: name.into(), ..sample(&format!("/c/{name}"), 7, lvl) }
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        assert!(r.targets.is_empty());
        let t = sample("/sys/fs/cgroup/a", 42, level::STOPPED);
        r.insert(t.clone());
        r.save().unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("a").unwrap(), &t);
        assert!(dir.path().join("targets/a.json").is_file(), "one file per target");
        assert!(Registry::load(dir.path()).unwrap().save_now().is_ok(), "nothing changed: nothing to write");
        let mut ro = Registry::load(dir.path()).unwrap();
        ro.get_mut("a").unwrap().level = level::NORMAL;
        assert!(ro.save().is_err(), "a registry only loaded is never written");
    }

    /// A save writes the changed target's file only; a removal unlinks it.
    #[test]
    fn a_save_writes_only_what_changed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        for i in 0..20 {
            r.insert(named(&format!("t{i}"), level::NORMAL));
        }
        r.save().unwrap();
        let inode = |n: &str| fs::metadata(dir.path().join(format!("targets/{n}.json"))).unwrap().ino();
        let before: Vec<u64> = (0..20).map(|i| inode(&format!("t{i}"))).collect();
        r.get_mut("t3").unwrap().level = level::ISOLATE;
        r.get_mut("t4").unwrap(); // looked at, not changed
        r.remove("t5");
        r.save().unwrap();
        for (i, was) in before.iter().enumerate() {
            let name = format!("t{i}");
            match i {
                3 => assert_ne!(inode(&name), *was, "t3 rewritten (a new file renamed over it)"),
                5 => assert!(!dir.path().join("targets/t5.json").exists(), "t5's file removed"),
                _ => assert_eq!(inode(&name), *was, "{name} untouched"),
            }
        }
        let back = Registry::open(dir.path()).unwrap();
        assert_eq!(back.targets.len(), 19);
        assert_eq!(back.get("t3").unwrap().level, level::ISOLATE);
    }

    /// What a crash leaves: a temp file (torn or whole) next to the old
    /// file. The old file is the target's state; the temp file is ignored
    /// by a read and swept by the agent.
    #[test]
    fn a_crash_mid_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        r.insert(named("web", level::ISOLATE));
        r.save().unwrap();
        let tmp = dir.path().join("targets/.web.json.tmp");
        fs::write(&tmp, b"{\"name\": \"web\", \"lev").unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap().get("web").unwrap().level, level::ISOLATE);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.get("web").unwrap().level, level::ISOLATE);
        assert!(!tmp.exists(), "the agent sweeps temp files");
        fs::write(dir.path().join("targets/web.json"), b"{").unwrap();
        let e = Registry::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("web.json is corrupt"), "{e}");
        fs::write(dir.path().join("targets/web.json"), serde_json::to_vec(&named("db", 0)).unwrap()).unwrap();
        let e = Registry::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("holds target `db`"), "a file must hold the target it is named for: {e}");
    }

    /// The former single file is read as it is (the fallback) and migrated
    /// by the agent: one file per target, the old file gone, nothing lost.
    #[test]
    fn the_former_single_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old: BTreeMap<String, Target> = (0..3).map(|i| (format!("t{i}"), named(&format!("t{i}"), level::DEGRADE))).collect();
        fs::write(dir.path().join(TARGETS_FILE), serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        // A crash during an earlier migration left a stray file behind.
        fs::create_dir(dir.path().join(TARGETS_DIR)).unwrap();
        fs::write(dir.path().join("targets/gone.json"), serde_json::to_vec(&named("gone", 0)).unwrap()).unwrap();
        assert_eq!(*Registry::load(dir.path()).unwrap().targets, old, "the fallback reads the old file");
        assert!(dir.path().join(TARGETS_FILE).exists(), "a read changes nothing");
        assert_eq!(*Registry::open(dir.path()).unwrap().targets, old);
        assert!(!dir.path().join(TARGETS_FILE).exists(), "migrated");
        assert_eq!(*Registry::load(dir.path()).unwrap().targets, old, "read back from the per-target files");
    }

    #[test]
    fn deferred_saves_are_written_once_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(dir.path()).unwrap();
        r.begin_deferred();
        r.begin_deferred();
        r.insert(sample("/c/a", 7, level::ISOLATE));
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
