//! What is pending and what was decided, kept in `pending.json` in the
//! state dir. Every change is written with [`crate::kernel::durable`]
//! (temp file, fsync, rename, fsync of the dir) before the request that
//! made it is answered: a SIGKILL of the agent loses no acknowledged
//! proposal, and a restarted agent picks them up where they were.
use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::OnTimeout;
use crate::{
    error::{Error, Result},
    kernel::durable,
    state_dir::PENDING_FILE,
};

/// How many decided ids are remembered (for "already approved" errors).
const RESOLVED_KEPT: usize = 1000;

/// One pending action.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub id: u64,
    pub target: String,
    /// The target's cgroup when proposed: a released target re-created
    /// under the same name is another target.
    pub cgroup_id: u64,
    pub level: u32,
    pub origin: Value,
    pub evidence: Value,
    pub reason: Option<String>,
    pub timeout_ms: u64,
    pub on_timeout: OnTimeout,
    pub approver_group: Option<u32>,
    pub meanwhile: Option<u32>,
    /// What applying the meanwhile level did (`"ok"`, `"already at ..."`, an error).
    pub meanwhile_outcome: Option<String>,
    pub created_unix_us: u64,
    /// Timeout alerts sent so far (`hold` alerts once per period).
    pub timeout_alerts: u32,
    /// Why `apply` on timeout failed, if it did (the action then holds).
    pub last_error: Option<String>,
}

impl Pending {
    pub fn deadline_us(&self) -> u64 {
        self.created_unix_us.saturating_add(self.timeout_ms.saturating_mul(1000))
    }
}

/// How a pending action ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resolution {
    pub target: String,
    /// `approved`, `denied`, `applied on timeout`, `dropped on timeout`, `dropped: ...`.
    pub outcome: String,
    pub by: Value,
    pub at_unix_us: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    /// Ids are never reused, across restarts too.
    pub next_id: u64,
    pub pending: BTreeMap<u64, Pending>,
    pub resolved: BTreeMap<u64, Resolution>,
}

impl Store {
    /// Reads `pending.json` (none yet: empty). A file that does not parse
    /// stops the agent with its name: pending decisions must not vanish.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(PENDING_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::InvalidRequest(format!("{}: not a pending-actions file: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self { next_id: 1, ..Default::default() }),
            Err(e) => Err(Error::Io { what: format!("reading {}", path.display()), source: e }),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidRequest(format!("encoding pending actions: {e}")))?;
        durable::write(&state_dir.join(PENDING_FILE), &bytes)
    }

    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        id
    }

    /// Moves `id` from pending to resolved.
    pub fn resolve(&mut self, id: u64, outcome: &str, by: Value) {
        let Some(p) = self.pending.remove(&id) else { return };
        self.resolved.insert(id, Resolution { target: p.target, outcome: outcome.to_owned(), by, at_unix_us: crate::agent::now_us() });
        while self.resolved.len() > RESOLVED_KEPT {
            self.resolved.pop_first();
        }
    }

    /// The pending action `id`, or an error saying why it is not pending.
    pub fn get(&self, id: u64) -> Result<Pending> {
        if let Some(p) = self.pending.get(&id) {
            return Ok(p.clone());
        }
        let why = match self.resolved.get(&id) {
            Some(r) => format!("it was already decided: {} (target {}, by {})", r.outcome, r.target, r.by),
            None if id > 0 && id < self.next_id => "it was decided long ago (no longer remembered)".to_owned(),
            None => "no such pending action".to_owned(),
        };
        Err(Error::NotPending { id, why })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pending(id: u64) -> Pending {
        Pending {
            id,
            target: "web".into(),
            cgroup_id: 7,
            level: 3,
            origin: json!({"rule": "r"}),
            evidence: json!({"bytes": 1}),
            reason: None,
            timeout_ms: 1000,
            on_timeout: OnTimeout::Hold,
            approver_group: None,
            meanwhile: Some(1),
            meanwhile_outcome: None,
            created_unix_us: 5_000_000,
            timeout_alerts: 0,
            last_error: None,
        }
    }

    #[test]
    fn saved_and_loaded_ids_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::load(d.path()).unwrap();
        let a = s.take_id();
        s.pending.insert(a, pending(a));
        let b = s.take_id();
        s.pending.insert(b, pending(b));
        s.resolve(a, "approved", json!({"uid": 0}));
        s.save(d.path()).unwrap();
        let mut t = Store::load(d.path()).unwrap();
        assert_eq!(t.pending.keys().copied().collect::<Vec<_>>(), vec![b]);
        assert_eq!(t.pending[&b].deadline_us(), 6_000_000);
        assert!(t.take_id() > b);
        let e = t.get(a).unwrap_err().to_string();
        assert!(e.contains("already decided: approved"), "{e}");
        assert!(t.get(99).unwrap_err().to_string().contains("no such pending action"));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PENDING_FILE), b"{torn").unwrap();
        let e = Store::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("pending.json") && e.contains("not a pending-actions file"), "{e}");
    }
}
