//! Targets come and go: `run` (create), `adopt` (a cgroup or a process
//! tree) and `release`.
use std::path::PathBuf;

use killpath_common::level;
use serde_json::json;

use super::{now_us, Done, State};
use crate::{
    error::{Error, Result},
    kernel::cgroup::{self, Cgroup},
    kernel::proctree as tree,
    target::Target,
};

impl State {
    pub(super) fn insert_target(&mut self, name: &str, cg: &Cgroup, created: bool, adopted: bool) -> Result<Target> {
        let cgroup_id = cg.id()?;
        // Two names for one cgroup would share one kernel entry: adopting
        // it again would reset a stopped target's guard to normal.
        if let Some(other) = self.registry.targets.values().find(|t| t.cgroup_id == cgroup_id) {
            return Err(Error::InvalidRequest(format!("cgroup {} is already target {:?}", cg.path().display(), other.name)));
        }
        let t = Target::new(name, cg.path().to_owned(), cgroup_id, cg.depth(&self.cgroup_mount)?, created, adopted, now_us());
        self.enforcer.maps.set(t.cgroup_id, t.state(t.level))?;
        // Attach the level-3 hooks now, so that isolating later is only a
        // map update.
        if let Err(e) = self.enforcer.isolate.attach_target(t.cgroup_id, &t.cgroup) {
            let _ = self.enforcer.maps.remove(t.cgroup_id);
            let _ = self.enforcer.isolate.detach_target(t.cgroup_id);
            return Err(e);
        }
        self.registry.insert(t.clone());
        // In the file before `run`/`adopt --pid` move a task into the
        // cgroup, even inside the transaction's deferred save: a crash
        // between the two must not leave tasks in a cgroup no registry knows.
        self.registry.save_now()?;
        // Tasks already inside (adopt --cgroup) become members; those that
        // enter later are marked by the kernel as they attach.
        self.mark_target(&t);
        Ok(t)
    }

    pub(super) fn ensure_new(&self, name: &str) -> Result<()> {
        if self.registry.targets.contains_key(name) {
            return Err(Error::TargetExists(name.to_owned()));
        }
        Ok(())
    }

    pub(super) fn create(&mut self, name: &str, move_pid: Option<i32>) -> Result<Done> {
        self.ensure_new(name)?;
        let cg = Cgroup::new(self.config.cgroup_parent.join(name));
        if cg.exists() && !cg.procs_recursive().is_empty() {
            return Err(Error::InvalidRequest(format!("cgroup {} already exists and holds tasks; use adopt --cgroup", cg.path().display())));
        }
        cg.create()?;
        let t = self.insert_target(name, &cg, true, false)?;
        if let Some(pid) = move_pid {
            cg.move_pid(pid)?;
            self.mark_moved(&t, &[pid as u32]);
        }
        // `run` judges its own privileges after dropping them (the caller
        // is still the unprivileged-to-be CLI now): it needs the kernel's
        // LSM state for that.
        Ok(Done {
            result: json!({"target": t, "lsm_error": self.enforcer.lsm_error, "protect_error": self.enforcer.protect_error}),
            to_level: Some(level::NORMAL),
            time_to_effect_us: None,
        })
    }

    /// What the tasks of `t` could do to leave its cgroup on this kernel.
    pub(super) fn privileges(&self, t: &Target) -> crate::privileges::Assessment {
        let guard = crate::privileges::Guard::from_state(self.enforcer.lsm_error.as_deref(), self.enforcer.protect_error.as_deref());
        crate::privileges::assess(&Cgroup::new(&t.cgroup).procs_recursive(), &t.cgroup, &self.cgroup_mount, &guard)
    }

    /// `adopt`, and with `trail` its activity trail switched on in the same
    /// transaction (`adopt --trail`, or the config's `[trail] record`): no
    /// event falls between the adoption and the recording.
    pub(super) fn adopt_recorded(&mut self, name: &str, cgroup_path: Option<&str>, pid: Option<i32>, trail: bool) -> Result<Done> {
        let mut done = self.adopt(name, cgroup_path, pid)?;
        if trail {
            done.result["trail"] = self.trail_set(name, true)?;
        }
        Ok(done)
    }

    pub(super) fn adopt(&mut self, name: &str, cgroup_path: Option<&str>, pid: Option<i32>) -> Result<Done> {
        self.ensure_new(name)?;
        match (cgroup_path, pid) {
            (Some(path), None) => {
                let p = PathBuf::from(path);
                let spelled = if p.starts_with(&self.cgroup_mount) { p } else { self.cgroup_mount.join(path.trim_start_matches('/')) };
                // Resolve `..` and symlinks before any check: the root and
                // "contains the agent" checks and the depth the guard keys
                // on must see the real directory.
                let abs =
                    std::fs::canonicalize(&spelled).map_err(|e| Error::InvalidRequest(format!("{} is not a cgroup2 directory: {e}", spelled.display())))?;
                if !abs.starts_with(&self.cgroup_mount) {
                    return Err(Error::InvalidRequest(format!("{} is not below the cgroup2 mount {}", abs.display(), self.cgroup_mount.display())));
                }
                let cg = Cgroup::new(&abs);
                if !cg.exists() {
                    return Err(Error::InvalidRequest(format!("{} is not a cgroup2 directory", abs.display())));
                }
                if abs == self.cgroup_mount {
                    return Err(Error::InvalidRequest("refusing to adopt the root cgroup".into()));
                }
                let own = self.cgroup_mount.join(cgroup::cgroup_of(std::process::id() as i32)?.trim_start_matches('/'));
                if own.starts_with(&abs) {
                    return Err(Error::InvalidRequest(format!("refusing to adopt {}: it contains the agent itself", abs.display())));
                }
                let t = self.insert_target(name, &cg, false, true)?;
                let privileges = self.privileges(&t);
                Ok(Done { result: json!({"target": t, "privileges": privileges}), to_level: Some(level::NORMAL), time_to_effect_us: None })
            }
            (None, Some(pid)) => {
                tree::check_adoptable(pid)?;
                let cg = Cgroup::new(self.config.cgroup_parent.join(name));
                cg.create()?;
                let t = self.insert_target(name, &cg, true, true)?;
                let moved = match tree::move_tree(pid, &cg) {
                    Ok(m) => m,
                    Err(e) => {
                        // Leave nothing half-made: forget the target, and
                        // remove its cgroup if nothing got in.
                        let _ = self.enforcer.maps.remove(t.cgroup_id);
                        self.registry.remove(name);
                        self.registry.save()?;
                        let _ = cg.remove();
                        return Err(e);
                    }
                };
                let tgids: Vec<u32> = moved.iter().map(|p| *p as u32).collect();
                self.mark_moved(&t, &tgids);
                let privileges = self.privileges(&t);
                Ok(Done { result: json!({"target": t, "moved_pids": moved, "privileges": privileges}), to_level: Some(level::NORMAL), time_to_effect_us: None })
            }
            _ => Err(Error::InvalidRequest("adopt needs exactly one of --cgroup PATH or --pid PID".into())),
        }
    }

    pub(super) fn release(&mut self, name: &str) -> Result<Done> {
        self.unthrottle(name)?;
        let t = self.registry.get(name)?.clone();
        // A target nested in another: its tasks stay the outer one's. Their
        // marks are handed over before the kernel forgets the target (a
        // mark of a target no longer listed is dropped at the task's next
        // move, which would then go unseen), and again after (a fork in
        // between marked its child with the old target).
        let heir = self.outer_targets(&t).into_iter().max_by_key(|o| o.depth).map(|o| o.cgroup_id);
        if let (Some(m), Some(_)) = (self.enforcer.maps.members.as_mut(), heir) {
            m.release_target(t.cgroup_id, heir);
        }
        self.enforcer.maps.remove(t.cgroup_id)?;
        // Adopted (journaled) by dispatch before the release: a record left
        // now would be merged into a later target on the same cgroup.
        self.enforcer.maps.drop_raise(t.cgroup_id);
        self.enforcer.isolate.detach_target(t.cgroup_id)?;
        // Nothing of the target stays in the kernel maps.
        self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
        self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
        self.enforcer.maps.clear_denials(t.cgroup_id);
        self.enforcer.maps.clear_audit_counts(t.cgroup_id);
        self.enforcer.maps.clear_guard_kills(t.cgroup_id);
        if let Some(m) = self.enforcer.maps.members.as_mut() {
            m.release_target(t.cgroup_id, heir);
        }
        // The trail's last counters written; its file stays.
        self.trail_release(name, t.cgroup_id);
        for d in &t.netdevs {
            self.enforcer.isolate.tc.detach(d)?;
        }
        let cg = Cgroup::new(&t.cgroup);
        let mut removed = false;
        if cg.exists() {
            if cg.has_freeze() {
                cg.freeze(false)?;
            }
            if t.created && cg.procs_recursive().is_empty() {
                cg.remove()?;
                removed = true;
            }
        }
        self.registry.remove(name);
        self.registry.save()?;
        Ok(Done {
            result: json!({"target": name, "cgroup_removed": removed, "tasks_left": if cg.exists() { cg.procs_recursive().len() } else { 0 }}),
            to_level: Some(level::NORMAL),
            time_to_effect_us: None,
        })
    }
}
