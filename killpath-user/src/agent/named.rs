//! `adopt NAME --unit/--container/--pod`: the name resolved to a cgroup
//! (or a container's init pid) by [`crate::resolve`], read-only, before
//! the state lock is taken (a walk of up to 50,000 cgroups must not hold
//! what a stop needs); the adopt itself is `--cgroup`'s (or `--pid`'s),
//! with what was named and what it resolved to in the intent.
use serde_json::{json, Value};

use super::{stop_first::Unlocked, Caller, State};
use crate::{
    client::protocol::Command,
    error::{Error, Result},
    resolve::{self, Found, Resolved, Selector},
};

/// What a request needs that is read before the state lock.
#[derive(Default)]
pub struct Prepared {
    /// An adopt's name, resolved (or why not).
    resolved: Option<Result<Resolved>>,
}

impl Prepared {
    /// Resolves an `adopt --unit/--container/--pod` without the lock;
    /// anything else needs nothing. A request that is not well formed is
    /// left to `handle`, which names the problem.
    pub(super) fn before_lock(unlocked: &Unlocked, cmd: &Command) -> Self {
        let Command::Adopt { unit, container, pod, cgroup: None, pid: None, .. } = cmd else {
            return Self::default();
        };
        let Ok(Some(sel)) = Selector::from_request(unit.clone(), container.clone(), pod.clone()) else {
            return Self::default();
        };
        Self { resolved: Some(resolve::resolve(&unlocked.cgroup_mount, Some(&unlocked.cgroup_parent), &sel)) }
    }
}

impl State {
    pub(super) fn adopt_named(&mut self, caller: Caller, name: &str, also_path_or_pid: bool, sel: &Selector, pre: Prepared, trail: bool) -> Result<Value> {
        if also_path_or_pid {
            return Err(Error::InvalidRequest("adopt takes exactly one of --cgroup, --pid, --unit, --container, --pod".into()));
        }
        self.ensure_new(name)?;
        let resolved = match pre.resolved {
            Some(r) => r?,
            None => resolve::resolve(&self.cgroup_mount, Some(&self.config.cgroup_parent), sel)?,
        };
        tracing::info!(target_name = name, kind = resolved.kind, id = %resolved.id, found = ?resolved.found, via = %resolved.via, "adopt: name resolved");
        let params = json!({ sel.kind(): sel.id(), "resolved": resolved, "trail": trail });
        let mut out = match &resolved.found {
            Found::Cgroup(path) => {
                let path = path.display().to_string();
                self.execute(caller, "adopt", Some(name), params, |s| s.adopt_recorded(name, Some(&path), None, trail))?
            }
            Found::Pid(pid) => {
                let pid = *pid;
                self.execute(caller, "adopt", Some(name), params, |s| s.adopt_recorded(name, None, Some(pid), trail))?
            }
        };
        if let Some(o) = out.as_object_mut() {
            o.insert("resolved".into(), json!(resolved));
        }
        Ok(out)
    }
}
