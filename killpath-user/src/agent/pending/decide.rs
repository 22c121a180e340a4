//! `approve` and `deny`, and who may decide. The approver is the socket
//! peer (SO_PEERCRED: uid, gid, pid), journaled with its user name. When
//! the proposal (or the agent's `--approver-group`) names a group, the
//! approver must hold it as primary or supplementary group, root
//! included; a refusal is journaled as high priority and leaves the
//! action pending.
use std::time::Instant;

use serde_json::{json, Value};

use super::store::Pending;
use crate::{
    agent::{transaction::Done, Caller, State},
    error::{Error, Result},
    target::level_name,
};

/// Who decided: peer credentials and the user name, if it resolves.
pub(super) fn approver(caller: Caller) -> Value {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller.uid)).ok().flatten().map(|u| u.name);
    json!({"uid": caller.uid, "gid": caller.gid, "pid": caller.pid, "user": user})
}

/// Whether the caller holds `group`: its SO_PEERCRED gid, or a
/// supplementary group from /proc/PID/status `Groups:`. The file is read
/// first and the caller's pidfd checked after: if the process is still
/// alive then, the pid was not recycled during the read.
fn holds_group(caller: Caller, group: u32) -> std::result::Result<bool, String> {
    if caller.gid == group {
        return Ok(true);
    }
    if caller.pid <= 0 {
        return Err("the caller's pid is unknown".into());
    }
    // Without a pidfd a recycled pid cannot be told apart: fail closed.
    let Some(pidfd) = caller.pidfd else { return Err(format!("no pidfd for the caller (pid {}): its groups cannot be read safely", caller.pid)) };
    let status = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)).map_err(|e| format!("reading /proc/{}/status: {e}", caller.pid))?;
    if !crate::agent::confinement::pidfd_alive(pidfd) {
        return Err(format!("the caller (pid {}) is gone", caller.pid));
    }
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or_default();
    Ok(groups.split_whitespace().any(|g| g.parse() == Ok(group)))
}

impl State {
    /// Refuses (journaled, high priority, alerted) a caller who may not
    /// decide on `p`.
    fn check_approver(&mut self, caller: Caller, p: &Pending, cmd: &str) -> Result<()> {
        // The agent's approver group always applies; a proposal's (or a
        // rule's) group is required on top of it, never instead of it.
        let mut groups: Vec<u32> = [self.config.approver_group, p.approver_group].into_iter().flatten().collect();
        groups.dedup();
        let mut refusal = None;
        for group in groups {
            match holds_group(caller, group) {
                Ok(true) => continue,
                Ok(false) => refusal = Some((group, format!("uid {} (gid {}) is not in approver group {group}", caller.uid, caller.gid))),
                Err(e) => refusal = Some((group, format!("cannot tell whether the caller is in approver group {group}: {e}"))),
            }
            break;
        }
        let Some((group, why)) = refusal else { return Ok(()) };
        let alert = json!({"id": p.id, "cmd": cmd, "approver": approver(caller), "approver_group": group,
            "message": format!("{cmd} of pending action {} refused: {why}; it stays pending", p.id)});
        self.pending_alert(caller.actor(), "approval-refused", &p.target.clone(), alert);
        Err(Error::NotApprover { id: p.id, why })
    }

    /// A pending action whose target is gone is dropped here (the
    /// background check would drop it within 250 ms anyway).
    fn pending_target_ok(&mut self, p: &Pending) -> Result<()> {
        match self.registry.targets.get(&p.target) {
            Some(t) if t.cgroup_id == p.cgroup_id => Ok(()),
            _ => {
                self.drop_pending(p, "dropped: target released");
                Err(Error::NotPending { id: p.id, why: format!("its target {} was released; dropped", p.target) })
            }
        }
    }

    /// `approve ID`: applies the proposed level through `escalate` (the
    /// approval is the skip reason when levels are skipped).
    pub(in crate::agent) fn approve(&mut self, caller: Caller, id: u64, reason: Option<&str>, received: Instant) -> Result<Value> {
        let p = self.pending.get(id)?;
        self.check_approver(caller, &p, "approve")?;
        self.pending_target_ok(&p)?;
        let who = approver(caller);
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        let params = json!({"id": id, "level": level_name(p.level), "approver": who, "reason": reason, "origin": p.origin});
        let r = self.execute(caller, "approve", Some(&p.target), params, |s| {
            let skip = format!("approved pending action {id}{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
            let applied = s.apply_pending(caller, &p, &skip, reason, received)?;
            s.pending.resolve(id, "approved", who.clone());
            s.pending.save(&s.config.state_dir.clone())?;
            let tte = applied["time_to_effect_us"].as_u64();
            Ok(Done {
                result: json!({"id": id, "target": p.target, "level": level_name(p.level), "approver": who, "applied": applied}),
                to_level: None,
                time_to_effect_us: tte,
            })
        })?;
        let message = format!("pending action {id} approved: {} {} by uid {} (pid {})", level_name(p.level), p.target, caller.uid, caller.pid);
        self.pending_alert(
            caller.actor(),
            "approved",
            &p.target,
            json!({"id": id, "level": level_name(p.level), "approver": who, "reason": reason, "message": message}),
        );
        Ok(r)
    }

    /// `deny ID --reason`: drops the action; the target stays as it is.
    pub(in crate::agent) fn deny(&mut self, caller: Caller, id: u64, reason: &str) -> Result<Value> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::InvalidRequest("deny needs a reason (--reason TEXT): it is journaled".into()));
        }
        let p = self.pending.get(id)?;
        self.check_approver(caller, &p, "deny")?;
        let who = approver(caller);
        let params = json!({"id": id, "level": level_name(p.level), "approver": who, "reason": reason});
        let r = self.execute(caller, "deny", Some(&p.target), params, |s| {
            s.pending.resolve(id, "denied", who.clone());
            s.pending.save(&s.config.state_dir.clone())?;
            Ok(Done {
                result: json!({"id": id, "target": p.target, "level": level_name(p.level), "approver": who, "reason": reason}),
                to_level: None,
                time_to_effect_us: None,
            })
        })?;
        let message = format!("pending action {id} denied: {} {} by uid {} (pid {}): {reason}", level_name(p.level), p.target, caller.uid, caller.pid);
        self.pending_alert(
            caller.actor(),
            "denied",
            &p.target,
            json!({"id": id, "level": level_name(p.level), "approver": who, "reason": reason, "message": message}),
        );
        Ok(r)
    }

    /// Applies `p`'s level unless its target is already there or above.
    pub(super) fn apply_pending(&mut self, caller: Caller, p: &Pending, skip: &str, reason: Option<&str>, received: Instant) -> Result<Value> {
        let cur = self.registry.get(&p.target)?.level;
        if cur >= p.level {
            return Ok(json!({"already": level_name(cur)}));
        }
        self.escalate(caller, &p.target, Some(level_name(p.level)), Some(skip), reason, received)
    }
}
