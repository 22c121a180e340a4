//! `adopt NAME --unit/--container/--pod`: the name resolved to a cgroup
//! (or a container's init pid) by [`crate::resolve`], read-only, before
//! the journaled transaction; the adopt itself is `--cgroup`'s (or
//! `--pid`'s), with what was named and what it resolved to in the intent.
use serde_json::{json, Value};

use super::{Caller, State};
use crate::{
    error::{Error, Result},
    resolve::{self, Found, Selector},
};

impl State {
    pub(super) fn adopt_named(&mut self, caller: Caller, name: &str, also_path_or_pid: bool, sel: &Selector) -> Result<Value> {
        if also_path_or_pid {
            return Err(Error::InvalidRequest("adopt takes exactly one of --cgroup, --pid, --unit, --container, --pod".into()));
        }
        self.ensure_new(name)?;
        let resolved = resolve::resolve(&self.cgroup_mount, Some(&self.config.cgroup_parent), sel)?;
        tracing::info!(target_name = name, kind = resolved.kind, id = %resolved.id, found = ?resolved.found, via = %resolved.via, "adopt: name resolved");
        let params = json!({ sel.kind(): sel.id(), "resolved": resolved });
        let mut out = match &resolved.found {
            Found::Cgroup(path) => {
                let path = path.display().to_string();
                self.execute(caller, "adopt", Some(name), params, |s| s.adopt(name, Some(&path), None))?
            }
            Found::Pid(pid) => {
                let pid = *pid;
                self.execute(caller, "adopt", Some(name), params, |s| s.adopt(name, None, Some(pid)))?
            }
        };
        if let Some(o) = out.as_object_mut() {
            o.insert("resolved".into(), json!(resolved));
        }
        Ok(out)
    }
}
