//! Audit mode at the agent: `degrade NAME --revoke CAPS --audit`,
//! `isolate NAME --audit` and `restore NAME --audit-off`. An audit is not a
//! level: the target's level is unchanged, the audit set is one field of
//! its kernel entry (`TargetState::audit`), written with the rest of the
//! entry by every later command (`Target::state`), so nothing clears it but
//! `--audit-off`. Each is journaled as its own action (`audit-degrade`,
//! `audit-isolate`, `audit-off`) through [`State::execute`].
//!
//! A target that is later degraded or isolated for real keeps its audit
//! bits: the kernel refuses what is enforced (and counts it as a real
//! denial) and keeps auditing only what is not; `status` lists the
//! superseded ones apart.
use std::time::Instant;

use killpath_common::{audit as bits, cap, level};
use serde_json::{json, Value};

use super::{degrade::Plan, now_us, Caller, Done, State};
use crate::{
    audit, degrade,
    error::{Error, Result},
    target::{level_name, Target},
};

impl State {
    /// `degrade NAME --revoke CAPS --audit [--allow-connect ..] [--allow-write ..]`:
    /// the capabilities are checked as if revoked (with the allow-lists),
    /// nothing is refused.
    pub(super) fn audit_degrade(&mut self, caller: Caller, name: &str, plan: Plan, params: Value, received: Instant) -> Result<Value> {
        let t = self.registry.get(name)?;
        let new = plan.mask & !t.revoked;
        if new == 0 {
            return Err(Error::InvalidRequest(format!("nothing to audit: {} already revoked (enforced) on {name}", degrade::names(plan.mask).join(", "))));
        }
        self.execute(caller, "audit-degrade", Some(name), params, |s| s.apply_audit_degrade(name, &plan, new, received))
    }

    fn apply_audit_degrade(&mut self, name: &str, plan: &Plan, new: u32, received: Instant) -> Result<Done> {
        let mut t = self.registry.get(name)?.clone();
        for (_, l, k) in &plan.allow {
            self.enforcer.maps.allow_connect(*l, *k)?;
        }
        for (spec, _, _) in &plan.allow {
            if !t.allow_connect.contains(spec) {
                t.allow_connect.push(spec.clone());
            }
        }
        for (dir, k) in &plan.write {
            self.enforcer.maps.allow_write(*k)?;
            if !t.allow_write.contains(dir) {
                t.allow_write.push(dir.clone());
            }
        }
        t.audit |= new;
        self.enforcer.maps.set(t.cgroup_id, t.state(t.level))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let result = json!({
            "target": name,
            "level": level_name(t.level),
            "audit": audit::describe(t.audit),
            "audited_now": degrade::names(new),
            "already_revoked": degrade::names(plan.mask & t.revoked),
            "allow_connect": t.allow_connect,
            "allow_write": t.allow_write,
            "time_to_effect_us": time_to_effect_us,
        });
        t.since_unix_us = now_us();
        self.registry.insert(t);
        self.registry.save()?;
        Ok(Done { result, to_level: None, time_to_effect_us: Some(time_to_effect_us) })
    }

    /// `isolate NAME --audit [--netdev DEV]`: every channel is checked as
    /// if isolated, nothing is cut.
    pub(super) fn audit_isolate(&mut self, caller: Caller, name: &str, verify: bool, netdevs: &[String], params: Value, received: Instant) -> Result<Value> {
        let t = self.registry.get(name)?;
        if verify {
            return Err(Error::InvalidRequest("--verify checks that every channel is cut; with --audit nothing is cut".into()));
        }
        if t.level >= level::ISOLATE {
            return Err(Error::InvalidRequest(format!("nothing to audit: {name} is at {}, isolation is already enforced", level_name(t.level))));
        }
        if t.audit & bits::ISOLATE != 0 && netdevs.is_empty() {
            return Err(Error::InvalidRequest(format!("{name} already audits isolation")));
        }
        self.execute(caller, "audit-isolate", Some(name), params, |s| s.apply_audit_isolate(name, netdevs, received))
    }

    fn apply_audit_isolate(&mut self, name: &str, netdevs: &[String], received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        // The per-target cgroup hooks count the would-be refusals: they must be there.
        if !self.enforcer.isolate.attached(t.cgroup_id) {
            self.enforcer.isolate.attach_target(t.cgroup_id, &t.cgroup)?;
        }
        let tc = self.bind_netdevs(name, t.cgroup_id, netdevs)?;
        let tt = self.registry.get_mut(name)?;
        tt.audit |= bits::ISOLATE;
        tt.since_unix_us = now_us();
        let (id, state, audit_now) = (tt.cgroup_id, tt.state(tt.level), tt.audit);
        self.enforcer.maps.set(id, state)?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        self.registry.save()?;
        let channels = crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted);
        let unseen: Vec<&str> = channels.iter().filter(|c| !c.enforced).map(|c| c.channel.as_str()).collect();
        Ok(Done {
            result: json!({
                "target": name,
                "level": level_name(t.level),
                "audit": audit::describe(audit_now),
                "netdevs": tc,
                // What isolation would leave OPEN on this kernel is not
                // seen by audit either.
                "not_audited_channels": unseen,
                "time_to_effect_us": time_to_effect_us,
            }),
            to_level: None,
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// `restore NAME --audit-off`: ends every audit of the target. The
    /// result (journaled) holds the would-be refusals counted; the
    /// counters are then removed, so a later audit starts from zero.
    pub(super) fn audit_off(&mut self, caller: Caller, name: &str, params: Value, received: Instant) -> Result<Value> {
        if self.registry.get(name)?.audit == 0 {
            return Err(Error::InvalidRequest(format!("{name} has nothing in audit mode")));
        }
        self.execute(caller, "audit-off", Some(name), params, |s| s.apply_audit_off(name, received))
    }

    pub(super) fn apply_audit_off(&mut self, name: &str, received: Instant) -> Result<Done> {
        let mut t = self.registry.get(name)?.clone();
        let was = t.audit;
        t.audit = 0;
        // Allow-lists given only for the audit go with it.
        if t.revoked & cap::NET_CONNECT == 0 {
            self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
            t.allow_connect.clear();
        }
        if t.revoked & cap::FS_WRITE == 0 {
            self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
            t.allow_write.clear();
        }
        self.enforcer.maps.set(t.cgroup_id, t.state(t.level))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let counted = audit::counts_json(&self.enforcer.maps.would_have_refused(t.cgroup_id));
        self.enforcer.maps.clear_audit_counts(t.cgroup_id);
        let result = json!({
            "target": name,
            "level": level_name(t.level),
            "audit_ended": audit::describe(was),
            "would_have_refused": counted,
            "time_to_effect_us": time_to_effect_us,
        });
        t.since_unix_us = now_us();
        self.registry.insert(t);
        self.registry.save()?;
        Ok(Done { result, to_level: None, time_to_effect_us: Some(time_to_effect_us) })
    }
}

/// Status of a target's audit (the `audit` object of `status`): what is
/// audited now, and what the audit set names but real enforcement has
/// superseded (the would-be refusals are counted apart, `status`).
pub(super) fn audit_flags(t: &Target) -> Value {
    let superseded_isolate = t.audit & bits::ISOLATE != 0 && t.level >= level::ISOLATE;
    json!({
        "active": audit::any(t.audit),
        "isolate": t.audit & bits::ISOLATE != 0 && !superseded_isolate,
        "capabilities": degrade::names(t.audit & bits::CAPS & !t.revoked),
        "superseded_by_enforcement": {
            "isolate": superseded_isolate,
            "capabilities": degrade::names(t.audit & bits::CAPS & t.revoked),
        },
    })
}
