//! Agent start-up after a crash or a clean exit: close interrupted actions
//! in the journal, import what the CLI did while the agent was away, and
//! reconcile the registry with the kernel's pinned state. Reconciliation
//! only ever tightens: the higher of the two levels wins.
use serde_json::json;
use tracing::{info, warn};

use super::{State, FALLBACK_JOURNAL_FILE};
use crate::{
    error::Result,
    journal::{import_fallback, Actor, Entry, Phase, Recovery},
    kernel::cgroup::Cgroup,
    target::level_name,
};

fn recovery_actor() -> Actor {
    Actor::Source { source: "agent-recovery".into() }
}

impl State {
    pub(super) fn recover(&mut self, rec: Recovery) -> Result<()> {
        if let Some(first) = rec.hmac_problems.first() {
            let message = format!("journal HMAC check at start failed on {} record(s): {}", rec.hmac_problems.len(), first.message);
            warn!("{message}");
            let mut e = Entry::new(recovery_actor(), Phase::Event, "journal-hmac-failed");
            e.params = json!({"problems": rec.hmac_problems.iter().take(10).collect::<Vec<_>>()});
            e.outcome = Some(message.clone());
            e.high_priority = true;
            self.journal.append(e)?;
            self.send_alert(json!({"type": "alert", "priority": "high", "action": "journal-hmac-failed", "message": message, "time_unix_us": super::now_us()}));
        }
        for intent in &rec.dangling_intents {
            let mut e = Entry::new(recovery_actor(), Phase::Result, &intent.entry.action);
            e.target = intent.entry.target.clone();
            e.intent_seq = Some(intent.seq);
            e.from_level = intent.entry.from_level;
            e.outcome = Some("interrupted: the agent stopped before recording a result; state re-read from the kernel".into());
            self.journal.append(e)?;
        }
        let imported = import_fallback(&mut self.journal, &self.config.state_dir.join(FALLBACK_JOURNAL_FILE))?;
        let mut changes = Vec::new();
        let names: Vec<String> = self.registry.targets.keys().cloned().collect();
        for name in names {
            let Ok(t) = self.registry.get_mut(&name) else {
                continue;
            };
            let cg = Cgroup::new(&t.cgroup);
            if !cg.exists() {
                warn!(target = %name, cgroup = %t.cgroup.display(), "target cgroup no longer exists");
                changes.push(json!({"target": name, "change": "cgroup missing"}));
                continue;
            }
            // A path that leads elsewhere while the cgroup still exists by
            // its id is tampering (a mount over it), not a recreated cgroup:
            // keep the id (see kernel::cgroup_id).
            if let Some(why) = crate::kernel::cgroup_id::path_mismatch(&t.cgroup, t.cgroup_id).filter(|_| Cgroup::by_id(&t.cgroup, t.cgroup_id).is_ok()) {
                warn!(target = %name, "cgroup path tampered: {why}; keeping cgroup id {}", t.cgroup_id);
                changes.push(json!({"target": name, "change": "cgroup path tampered; kept its id", "why": why}));
            } else if cg.id().ok() != Some(t.cgroup_id) {
                warn!(target = %name, "target cgroup was recreated (new id)");
                changes.push(json!({"target": name, "change": "cgroup id changed; re-keyed"}));
                t.cgroup_id = cg.id()?;
            }
            if !self.enforcer.isolate.attached(t.cgroup_id) {
                self.enforcer.isolate.attach_target(t.cgroup_id, &t.cgroup)?;
                changes.push(json!({"target": name, "change": "isolation hooks attached"}));
            }
            // A level the kernel raised on its own while no agent ran is
            // adopted right after recovery (journaled with its cause, from
            // the level the agent had): not taken over silently here.
            if self.enforcer.maps.raise_of(t.cgroup_id).is_some() {
                changes.push(json!({"target": name, "change": "raised by the kernel; adopted next"}));
                continue;
            }
            let kernel = self.enforcer.maps.get(t.cgroup_id);
            let level = kernel.map_or(t.level, |k| k.level.max(t.level));
            // Revoked capabilities: the union, never fewer than either side.
            let revoked = kernel.map_or(t.revoked, |k| k.revoked | t.revoked);
            if revoked != t.revoked {
                changes.push(json!({"target": name, "change": "revoked capabilities taken from the kernel"}));
                t.revoked = revoked;
            }
            // Audit: likewise the union.
            let audit = kernel.map_or(t.audit, |k| k.audit | t.audit);
            if audit != t.audit {
                changes.push(json!({"target": name, "change": "audit set taken from the kernel"}));
                t.audit = audit;
            }
            if kernel != Some(t.state(level)) {
                self.enforcer.maps.set(t.cgroup_id, t.state(level))?;
            }
            if level != t.level {
                changes.push(json!({"target": name, "change": format!("level {} -> {} (kernel state wins)", level_name(t.level), level_name(level))}));
                t.level = level;
            }
        }
        changes.extend(self.recover_throttle()?);
        changes.extend(self.recover_drills()?);
        self.registry.save()?;
        // Every target now has this build's hooks: older builds' pins can go.
        let retired = self.enforcer.retire_old_generations()?;
        let mut e = Entry::new(recovery_actor(), Phase::Event, "agent-start");
        e.params = json!({
            "torn_bytes_truncated": rec.truncated_bytes,
            "interrupted_actions": rec.dangling_intents.len(),
            "fallback_records_imported": imported,
            "programs_attached_now": self.enforcer.attached_now,
            "reconciled": changes,
            "retired_pin_generations": retired,
            "targets": self.registry.targets.len(),
        });
        self.journal.append(e)?;
        info!(targets = self.registry.targets.len(), imported, "agent state recovered");
        Ok(())
    }
}
