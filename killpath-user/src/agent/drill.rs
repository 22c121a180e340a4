//! The agent's side of a drill: a lease that remembers what the target
//! looked like when the drill began, so whatever happens to the drill —
//! it ends, its client dies or is interrupted (the connection closes), or
//! the agent itself restarts — the target is put back. The drill's own
//! commands are journaled with actor `drill`.
//!
//! A drill never loosens what someone else set: the lease also records the
//! state the drill's own last command left (level, revoked capabilities,
//! allow-lists, ceilings). If the target is not in that state when the drill
//! acts again or ends, someone else changed it during the drill: the drill
//! stops touching it, restores nothing, and journals a `drill-conflict`
//! record (high priority) naming who changed what.
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
    /// Audit set when the drill began (`drill --audit` ends what it adds).
    #[serde(default)]
    pub audit: u32,
    #[serde(default)]
    pub throttle: Ceilings,
    /// Allow-lists when the drill began.
    #[serde(default)]
    pub allow_connect: Vec<String>,
    #[serde(default)]
    pub allow_write: Vec<String>,
    /// The target as the drill's own last command left it (None: the drill
    /// has not changed it yet).
    #[serde(default)]
    pub last_set: Option<Mark>,
    /// Seq of the `drill-begin` record: changes by others are looked up from there.
    #[serde(default)]
    pub begin_seq: u64,
    /// Set once someone else changed the target during the drill: from then
    /// on the drill neither acts on it nor restores it.
    #[serde(default)]
    pub conflict: Option<Value>,
}

/// What a drill sets on a target and compares at its end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Mark {
    pub level: u32,
    pub revoked: u32,
    pub throttle: Ceilings,
    pub allow_connect: Vec<String>,
    pub allow_write: Vec<String>,
}

impl Mark {
    fn of(t: &crate::target::Target) -> Self {
        Mark { level: t.level, revoked: t.revoked, throttle: t.throttle.clone(), allow_connect: t.allow_connect.clone(), allow_write: t.allow_write.clone() }
    }

    /// What differs from `other` (the drill's mark), named for the journal.
    fn diff(&self, drill: &Mark) -> Value {
        let mut d = serde_json::Map::new();
        if self.level != drill.level {
            d.insert("level".into(), json!({"drill_set": level_name(drill.level), "now": level_name(self.level)}));
        }
        if self.revoked != drill.revoked {
            d.insert("revoked".into(), json!({"drill_set": crate::degrade::names(drill.revoked), "now": crate::degrade::names(self.revoked)}));
        }
        if self.throttle != drill.throttle {
            d.insert("ceilings".into(), json!({"drill_set": drill.throttle, "now": self.throttle}));
        }
        if self.allow_connect != drill.allow_connect || self.allow_write != drill.allow_write {
            d.insert(
                "allow_lists".into(),
                json!({"drill_set": {"connect": drill.allow_connect, "write": drill.allow_write}, "now": {"connect": self.allow_connect, "write": self.allow_write}}),
            );
        }
        Value::Object(d)
    }
}

impl Snapshot {
    /// The state the target should be in if only the drill changed it.
    fn expected(&self) -> Mark {
        self.last_set.clone().unwrap_or_else(|| Mark {
            level: self.level,
            revoked: self.revoked,
            throttle: self.throttle.clone(),
            allow_connect: self.allow_connect.clone(),
            allow_write: self.allow_write.clone(),
        })
    }
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
        let mut snap = Snapshot {
            drill: id,
            target: target.to_owned(),
            level: t.level,
            revoked: t.revoked,
            audit: t.audit,
            throttle: t.throttle.clone(),
            allow_connect: t.allow_connect.clone(),
            allow_write: t.allow_write.clone(),
            last_set: None,
            begin_seq: self.journal.last_seq() + 1,
            conflict: None,
        };
        std::fs::create_dir_all(self.drills_dir()).map_err(Error::io("creating the drills dir"))?;
        self.save_lease(&snap)?;
        let mut e = Entry::new(Caller { drill: Some(id), ..caller }.actor(), Phase::Event, "drill-begin");
        e.target = Some(target.to_owned());
        e.from_level = Some(t.level);
        e.params = json!({"drill": id, "snapshot": snap});
        snap.begin_seq = self.journal.append(e)?.seq;
        self.drills.insert(id, snap.clone());
        Ok(json!({"drill": id, "snapshot": snap}))
    }

    /// Ends the caller's drill: puts the target back (unless `restore` is
    /// false) and journals the report.
    pub(super) fn drill_end(&mut self, caller: Caller, report: &Value, restore: bool) -> Result<Value> {
        let id = caller.drill.ok_or_else(|| Error::InvalidRequest("drill-end: no drill began on this connection".into()))?;
        let snap = self.drills.get(&id).cloned().ok_or_else(|| Error::InvalidRequest(format!("drill {id} is not running")))?;
        let restored = if restore { self.restore_snapshot(caller, &snap)? } else { Vec::new() };
        let conflict = self.drills.get(&id).and_then(|d| d.conflict.clone());
        let mut e = Entry::new(caller.actor(), Phase::Event, "drill-end");
        e.target = Some(snap.target.clone());
        e.params = json!({"drill": id, "passed": report["passed"], "failed_checks": report["failed_checks"], "left_out": report["left_out"], "restored": restored, "conflict": conflict, "report": report});
        e.high_priority = report["passed"] != Value::Bool(true) || conflict.is_some();
        self.journal.append(e)?;
        self.drills.remove(&id);
        let _ = std::fs::remove_file(self.drill_file(id));
        let trail = self.registry.get(&snap.target).map(|t| self.trail_pointer(t)).unwrap_or_default();
        Ok(
            json!({"drill": id, "restored": restored, "conflict": conflict, "level": self.registry.get(&snap.target).map(|t| level_name(t.level)).ok(), "trail": trail}),
        )
    }

    /// The drill's client went away without ending it: put the target back.
    pub fn abandon_drill(&mut self, id: u64, why: &str) {
        let Some(snap) = self.drills.get(&id).cloned() else {
            return;
        };
        let caller = Caller { uid: 0, gid: 0, pid: 0, drill: Some(id), pidfd: None, source: None };
        let restored = self.restore_snapshot(caller, &snap).unwrap_or_else(|e| vec![format!("restore failed: {e}")]);
        let conflict = self.drills.remove(&id).and_then(|d| d.conflict);
        warn!(drill = id, target = %snap.target, "drill abandoned ({why}); restored: {restored:?}");
        let mut e = Entry::new(caller.actor(), Phase::Event, "drill-abandoned");
        e.target = Some(snap.target.clone());
        e.params = json!({"drill": id, "why": why, "restored": restored, "conflict": conflict});
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
            out.push(json!({"target": snap.target, "change": format!("drill {} abandoned by the restart; what it changed was put back", snap.drill)}));
        }
        Ok(out)
    }

    /// Puts a target back to its snapshot: level first, then the ceilings
    /// and capabilities the drill changed. Each change is journaled. Nothing
    /// is put back if someone else changed the target during the drill (the
    /// conflict is journaled), nor if the drill changed nothing.
    fn restore_snapshot(&mut self, caller: Caller, snap: &Snapshot) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let name = snap.target.as_str();
        let Ok(t) = self.registry.get(name).cloned() else {
            return Ok(done);
        };
        if self.drill_conflict(snap.drill, &t).is_some() || snap.last_set.is_none() {
            return Ok(done);
        }
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
            self.execute(caller, "restore", Some(name), params.clone(), |s| s.grant(name, extra, Instant::now()))?;
            done.push(format!("granted back {}", crate::degrade::names(extra).join(", ")));
        }
        if snap.audit == 0 && self.registry.get(name)?.audit != 0 {
            self.execute(caller, "audit-off", Some(name), params, |s| s.apply_audit_off(name, Instant::now()))?;
            done.push("audit ended".into());
        }
        if !done.is_empty() {
            info!(target = name, drill = snap.drill, "target restored after drill: {done:?}");
        }
        Ok(done)
    }
}

impl State {
    fn save_lease(&self, snap: &Snapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snap).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        crate::kernel::durable::write(&self.drill_file(snap.drill), &bytes)
    }

    /// Before a drill's command on its own target: refused once someone
    /// else has changed the target during the drill.
    pub(super) fn drill_guard(&mut self, caller: Caller, target: Option<&str>) -> Result<()> {
        let (Some(id), Some(name)) = (caller.drill, target) else { return Ok(()) };
        if self.drills.get(&id).is_none_or(|d| d.target != name) {
            return Ok(());
        }
        let Ok(t) = self.registry.get(name).cloned() else { return Ok(()) };
        match self.drill_conflict(id, &t) {
            Some(what) => Err(Error::DrillConflict { drill: id, target: name.to_owned(), what }),
            None => Ok(()),
        }
    }

    /// After a drill's command on its own target: remember what it left.
    pub(super) fn drill_mark(&mut self, caller: Caller, target: Option<&str>) {
        let (Some(id), Some(name)) = (caller.drill, target) else { return };
        let Some(mark) = self.registry.get(name).ok().map(Mark::of) else { return };
        let Some(snap) = self.drills.get_mut(&id).filter(|d| d.target == name && d.conflict.is_none()) else { return };
        snap.last_set = Some(mark);
        let snap = snap.clone();
        if let Err(e) = self.save_lease(&snap) {
            warn!(drill = id, "saving the drill lease failed: {e}");
        }
    }

    /// `Some(summary)` if someone else changed the target during drill
    /// `id`. The first time, journals a high-priority `drill-conflict`
    /// record naming what differs and the records (with their callers) that
    /// changed it, and alerts.
    fn drill_conflict(&mut self, id: u64, t: &crate::target::Target) -> Option<String> {
        let snap = self.drills.get(&id)?.clone();
        if let Some(c) = &snap.conflict {
            return Some(c["summary"].as_str().unwrap_or("changed by someone else").to_owned());
        }
        let now = Mark::of(t);
        let expected = snap.expected();
        if now == expected {
            return None;
        }
        let diff = now.diff(&expected);
        let by: Vec<Value> = crate::journal::read_records(self.journal.path(), snap.begin_seq.saturating_sub(1))
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.entry.target.as_deref() == Some(&snap.target) && r.entry.phase == Phase::Result)
            .filter(|r| !matches!(r.entry.actor, Actor::Drill { drill, .. } if drill == id))
            .map(|r| json!({"seq": r.seq, "actor": r.entry.actor, "action": r.entry.action, "from_level": r.entry.from_level.map(level_name), "to_level": r.entry.to_level.map(level_name), "outcome": r.entry.outcome}))
            .collect();
        let fields: Vec<&String> = diff.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        let who: Vec<String> = by.iter().map(|b| format!("{} by {} (seq {})", b["action"].as_str().unwrap_or("?"), b["actor"], b["seq"])).collect();
        let summary = format!(
            "{} changed since the drill's last command{}",
            fields.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "),
            if who.is_empty() { String::new() } else { format!(": {}", who.join("; ")) }
        );
        warn!(drill = id, target = %snap.target, "drill conflict: {summary}; the drill leaves the target alone");
        let conflict = json!({"summary": summary, "differs": diff, "changed_by": by, "drill_set": expected, "now": now});
        let mut e = Entry::new(super::drill::actor(id, 0, 0), Phase::Event, "drill-conflict");
        e.target = Some(snap.target.clone());
        e.from_level = Some(expected.level);
        e.to_level = Some(now.level);
        e.params = json!({"drill": id, "conflict": conflict});
        e.outcome = Some(format!("left alone: {summary}"));
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            warn!("journaling a drill conflict failed: {err}");
        }
        self.send_alert(json!({"type": "alert", "priority": "high", "action": "drill-conflict", "target": snap.target, "drill": id,
            "message": format!("drill {id} on {}: {summary}; the drill restores nothing", snap.target), "details": conflict, "time_unix_us": now_us()}));
        if let Some(d) = self.drills.get_mut(&id) {
            d.conflict = Some(conflict);
            let d = d.clone();
            if let Err(err) = self.save_lease(&d) {
                warn!(drill = id, "saving the drill lease failed: {err}");
            }
        }
        Some(summary)
    }
}

/// The actor of drill records (kept here so the journal names it once).
pub fn actor(drill: u64, uid: u32, pid: i32) -> Actor {
    Actor::Drill { drill, uid, pid }
}
