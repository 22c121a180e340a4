//! The agent's side of a drill: a lease that remembers what the target
//! looked like when the drill began, so whatever happens to the drill —
//! it ends, its client dies or is interrupted (the connection closes), or
//! the agent itself restarts — the target is put back. The drill's own
//! commands are journaled with actor `drill`.
use std::{path::PathBuf, time::Instant};

use killpath_common::level;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{now_us, Caller, State};
use crate::{
    error::{Error, Result},
    journal::{Actor, Entry, Phase},
    target::level_name,
    throttle::Ceilings,
};

/// What a drill may change, as it was when the drill began.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub drill: u64,
    pub target: String,
    pub level: u32,
    pub revoked: u32,
    #[serde(default)]
    pub throttle: Ceilings,
}

impl State {
    fn drills_dir(&self) -> PathBuf {
        self.config.state_dir.join("drills")
    }

    fn drill_file(&self, id: u64) -> PathBuf {
        self.drills_dir().join(format!("{id}.json"))
    }

    /// Starts a drill on `target`: records the snapshot durably, so an
    /// agent restart can still put the target back.
    pub(super) fn drill_begin(&mut self, caller: Caller, target: &str) -> Result<Value> {
        let t = self.registry.get(target)?.clone();
        if let Some(d) = self.drills.values().find(|d| d.target == target) {
            return Err(Error::InvalidRequest(format!("drill {} is already running on {target}", d.drill)));
        }
        let id = now_us().max(self.drills.keys().max().map_or(0, |m| m + 1));
        let snap = Snapshot { drill: id, target: target.to_owned(), level: t.level, revoked: t.revoked, throttle: t.throttle.clone() };
        std::fs::create_dir_all(self.drills_dir()).map_err(Error::io("creating the drills dir"))?;
        let bytes = serde_json::to_vec(&snap).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        crate::kernel::durable::write(&self.drill_file(id), &bytes)?;
        let mut e = Entry::new(Caller { drill: Some(id), ..caller }.actor(), Phase::Event, "drill-begin");
        e.target = Some(target.to_owned());
        e.from_level = Some(t.level);
        e.params = json!({"drill": id, "snapshot": snap});
        self.journal.append(e)?;
        self.drills.insert(id, snap.clone());
        Ok(json!({"drill": id, "snapshot": snap}))
    }

    /// Ends the caller's drill: puts the target back (unless `restore` is
    /// false) and journals the report.
    pub(super) fn drill_end(&mut self, caller: Caller, report: &Value, restore: bool) -> Result<Value> {
        let id = caller.drill.ok_or_else(|| Error::InvalidRequest("drill-end: no drill began on this connection".into()))?;
        let snap = self.drills.get(&id).cloned().ok_or_else(|| Error::InvalidRequest(format!("drill {id} is not running")))?;
        let restored = if restore { self.restore_snapshot(caller, &snap)? } else { Vec::new() };
        let mut e = Entry::new(caller.actor(), Phase::Event, "drill-end");
        e.target = Some(snap.target.clone());
        e.params = json!({"drill": id, "passed": report["passed"], "failed_checks": report["failed_checks"], "left_out": report["left_out"], "restored": restored, "report": report});
        e.high_priority = report["passed"] != Value::Bool(true);
        self.journal.append(e)?;
        self.drills.remove(&id);
        let _ = std::fs::remove_file(self.drill_file(id));
        Ok(json!({"drill": id, "restored": restored, "level": self.registry.get(&snap.target).map(|t| level_name(t.level)).ok()}))
    }

    /// The drill's client went away without ending it: put the target back.
    pub fn abandon_drill(&mut self, id: u64, why: &str) {
        let Some(snap) = self.drills.remove(&id) else {
            return;
        };
        let caller = Caller { uid: 0, gid: 0, pid: 0, drill: Some(id), pidfd: None };
        let restored = self.restore_snapshot(caller, &snap).unwrap_or_else(|e| vec![format!("restore failed: {e}")]);
        warn!(drill = id, target = %snap.target, "drill abandoned ({why}); restored: {restored:?}");
        let mut e = Entry::new(caller.actor(), Phase::Event, "drill-abandoned");
        e.target = Some(snap.target.clone());
        e.params = json!({"drill": id, "why": why, "restored": restored});
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            warn!("journaling an abandoned drill failed: {err}");
        }
        let _ = std::fs::remove_file(self.drill_file(id));
    }

    /// At start: drills that were running when the agent went down.
    pub(super) fn recover_drills(&mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.drills_dir()) else {
            return Ok(out);
        };
        for f in rd.flatten() {
            let Ok(snap) = std::fs::read(f.path()).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Snapshot>(&b).map_err(|e| e.to_string()))
            else {
                warn!(file = %f.path().display(), "unreadable drill lease; removed");
                let _ = std::fs::remove_file(f.path());
                continue;
            };
            self.drills.insert(snap.drill, snap.clone());
            self.abandon_drill(snap.drill, "the agent restarted during the drill");
            out.push(json!({"target": snap.target, "change": format!("drill {} abandoned by the restart; target restored", snap.drill)}));
        }
        Ok(out)
    }

    /// Puts a target back to its snapshot: level first, then the ceilings
    /// and capabilities the drill changed. Each change is journaled.
    fn restore_snapshot(&mut self, caller: Caller, snap: &Snapshot) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let name = snap.target.as_str();
        let Ok(t) = self.registry.get(name).cloned() else {
            return Ok(done);
        };
        let params = json!({"drill": snap.drill, "to": level_name(snap.level)});
        if t.level > snap.level {
            self.execute(caller, "restore", Some(name), params.clone(), |s| s.restore(name, snap.level, Instant::now()))?;
            done.push(format!("level {} -> {}", level_name(t.level), level_name(snap.level)));
        }
        let t = self.registry.get(name)?.clone();
        if snap.level >= level::THROTTLE && t.throttle != snap.throttle && !snap.throttle.is_empty() {
            let c = snap.throttle.clone();
            self.execute(caller, "throttle", Some(name), params.clone(), |s| s.throttle(name, c, &[], Instant::now()))?;
            done.push("ceilings put back".into());
        }
        if snap.level >= level::DEGRADE && t.revoked & !snap.revoked != 0 {
            let extra = t.revoked & !snap.revoked;
            self.execute(caller, "restore", Some(name), params, |s| s.grant(name, extra, Instant::now()))?;
            done.push(format!("granted back {}", crate::degrade::names(extra).join(", ")));
        }
        if !done.is_empty() {
            info!(target = name, drill = snap.drill, "target restored after drill: {done:?}");
        }
        Ok(done)
    }
}

/// The actor of drill records (kept here so the journal names it once).
pub fn actor(drill: u64, uid: u32, pid: i32) -> Actor {
    Actor::Drill { drill, uid, pid }
}
