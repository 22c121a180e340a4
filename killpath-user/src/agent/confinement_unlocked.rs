//! Confinement checked before a request is queued, without the state lock.
//!
//! A task inside a target may only read (`confinement`). The full check
//! runs under the state lock, so a target flooding `stop` (or any other
//! change) would have each request queued on the stop thread, or take a
//! blocking-pool thread, and wait for the lock at the stop's priority only
//! to be refused there: an operator's stop queued behind them, background
//! work held off. Here the connection answers such a request at once, from
//! the kernel's own view, before anything is queued:
//! - the caller's cgroup (read now from /proc/PID/cgroup, then the pidfd
//!   checked: the pid was not recycled during the read) and each of its
//!   ancestors, by cgroup id (the directory's inode number on cgroup2),
//!   looked up in `KP_TARGETS`, the kernel's list of targets;
//! - the caller's membership mark in `KP_MEMBERS` (a task that left its
//!   target's cgroup is still the target's), its target looked up the same
//!   way.
//!
//! Both maps are opened from their pins once, when the server starts; the
//! lookups are a handful of bpf(2) and stat(2) calls, no lock. A caller
//! found inside is refused here; one not found goes on to the full check
//! under the lock, which stays as it was (by path and id against the
//! registry, and the mark). Refusals are journaled at the same rate limit
//! as the locked path's (10 a second per target, the rest counted), each
//! journaled one through the background lock, which waits for any stop.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::maps::{HashMap, Map, MapData};
use killpath_common::{maps, Member, TargetState};
use tracing::{debug, warn};

use super::{confinement::pidfd_alive, Caller, State};
use crate::{
    client::protocol::Command,
    error::{Error, Result},
    kernel::{cgroup, pins},
};

/// The kernel's targets and membership marks, held by fd for the server.
pub(super) struct Early {
    targets: HashMap<MapData, u64, TargetState>,
    members: Option<HashMap<MapData, u32, Member>>,
    cgroup_mount: PathBuf,
    /// Target names by cgroup id, as the registry had them (see [`refuse`]).
    names: Mutex<std::collections::HashMap<u64, String>>,
}

fn open_hash<K: aya::Pod, V: aya::Pod>(gen: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    let p = pins::map_pin(gen, name);
    let data = MapData::from_pin(&p).map_err(Error::map(format!("opening pinned map {}", p.display())))?;
    HashMap::try_from(Map::HashMap(data)).map_err(Error::map(name.to_owned()))
}

impl Early {
    /// Opens the maps this agent's generation pinned; None (the locked
    /// check alone, as before) when they cannot be opened.
    pub(super) fn open(s: &State) -> Option<Self> {
        let gen = s.enforcer.generation();
        let targets = open_hash(gen, maps::TARGETS).map_err(|e| warn!("confinement before queueing is off (the locked check stays): {e}")).ok()?;
        let members = open_hash(gen, maps::MEMBERS).map_err(|e| debug!("confinement before queueing: no membership marks: {e}")).ok();
        let names = s.registry.targets.values().map(|t| (t.cgroup_id, t.name.clone())).collect();
        Some(Self { targets, members, cgroup_mount: s.cgroup_mount.clone(), names: Mutex::new(names) })
    }

    /// The target (its cgroup id) the caller is inside, if any; an error
    /// when the caller cannot be resolved (it is gone).
    pub(super) fn target_of(&self, caller: Caller) -> Result<Option<u64>> {
        let gone = || Error::CallerUnknown { pid: caller.pid };
        let Ok(pid) = u32::try_from(caller.pid) else { return Err(gone()) };
        if pid == 0 {
            return Err(gone());
        }
        let rel = cgroup::cgroup_of(caller.pid).map_err(|_| gone())?;
        // A mark naming another process is stale (left under an id since
        // reused, see `members::of` in the eBPF crate): not this caller's.
        let mark = self.members.as_ref().and_then(|m| m.get(&pid, 0).ok()).filter(|m| m.tgid == pid);
        // Read first, then check the pidfd: alive after the reads, the pid
        // was not recycled during them.
        if caller.pidfd.is_some_and(|fd| !pidfd_alive(fd)) {
            return Err(gone());
        }
        if let Some(m) = mark.filter(|m| self.is_target(m.target)) {
            return Ok(Some(m.target));
        }
        let rel = rel.strip_suffix(" (deleted)").unwrap_or(&rel);
        let dir = self.cgroup_mount.join(rel.trim_start_matches('/'));
        // Innermost first: a target nested in another is the one named.
        let found = dir
            .ancestors()
            .take_while(|d| d.starts_with(&self.cgroup_mount) && *d != self.cgroup_mount)
            .filter_map(|d| std::fs::metadata(d).ok())
            .map(|m| m.ino())
            .find(|id| self.is_target(*id));
        Ok(found)
    }

    fn name_of(&self, id: u64) -> Option<String> {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    fn is_target(&self, id: u64) -> bool {
        self.targets.get(&id, 0).is_ok()
    }
}

/// Refuses `cmd` now if it is one a target may not send and the caller is
/// inside a target (or gone): the error to answer, after the refusal is
/// journaled (rate-limited). None: go on (the locked check still runs).
///
/// The refusal names the target: its name is cached by cgroup id, read
/// from the registry (under the background lock, which waits for any stop)
/// the first time a target's task is refused. Past that, a refusal that
/// the rate limit does not journal is answered with no thread and no lock.
pub(super) async fn refuse(early: Option<&Early>, cmd: &Command, caller: Caller, state: &std::sync::Arc<Mutex<State>>) -> Option<Error> {
    let early = early.filter(|_| cmd.confined())?;
    let id = match early.target_of(caller) {
        Ok(None) => return None,
        Ok(Some(id)) => Some(id),
        Err(e) => {
            // Gone: nothing to name. The locked path's window for callers
            // that could not be resolved.
            let left_out = super::confinement::journal_refusal_now(None);
            journal(state, caller, cmd.name(), &e, None, left_out).await;
            return Some(e);
        }
    };
    let cached = id.and_then(|id| early.name_of(id));
    // The locked path's rate limit, on the same key (the target's name)
    // once the name is known: a flood costs at most that many journaled
    // refusals a second, whichever path refuses it.
    let key = cached.clone().or_else(|| id.map(|id| format!("cgroup {id}")));
    let left_out = super::confinement::journal_refusal_now(key.as_deref());
    if let (Some(name), None) = (&cached, left_out) {
        return Some(Error::InsideTarget { pid: caller.pid, target: name.clone() });
    }
    let name = match (cached, id) {
        (Some(name), _) => Some(name),
        (None, Some(id)) => {
            let state = state.clone();
            let name = tokio::task::spawn_blocking(move || {
                let s = super::stop_first::background(&state);
                s.registry.targets.values().find(|t| t.cgroup_id == id).map(|t| t.name.clone())
            })
            .await
            .ok()
            .flatten();
            if let Some(n) = &name {
                early.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, n.clone());
            }
            name
        }
        (None, None) => None,
    };
    let error = match (&name, id) {
        (Some(n), _) => Error::InsideTarget { pid: caller.pid, target: n.clone() },
        // In the kernel's list but not the registry's (another
        // generation's target): named by its cgroup id.
        (None, id) => Error::InsideTargetCgroup { pid: caller.pid, cgroup_id: id.unwrap_or_default() },
    };
    journal(state, caller, cmd.name(), &error, name, left_out).await;
    Some(error)
}

/// Journals one refusal (when the rate limit let it: `left_out` is Some)
/// through the background lock; a failure is logged, the refusal stands.
async fn journal(state: &std::sync::Arc<Mutex<State>>, caller: Caller, cmd: &'static str, error: &Error, target: Option<String>, left_out: Option<u64>) {
    let Some(left_out) = left_out else { return };
    let (state, message) = (state.clone(), error.to_string());
    let journaled = tokio::task::spawn_blocking(move || {
        // The background lock: it waits while a stop is announced.
        let mut s = super::stop_first::background(&state);
        s.journal_confined_refusal_counted(caller, cmd, &message, target.as_deref(), left_out)
    })
    .await;
    match journaled {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(cmd, "journaling a refusal before queueing: {e}"),
        Err(e) => warn!(cmd, "journaling a refusal before queueing panicked: {e}"),
    }
}
