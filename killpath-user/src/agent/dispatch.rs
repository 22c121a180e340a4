//! One arm per socket command: validation, then the journaled transaction
//! around the level's action.
use std::time::Instant;

use killpath_common::level;
use serde_json::{json, Value};

use super::{Caller, State};
use crate::{
    client::protocol::Command,
    error::{Error, Result},
    journal::{self},
    target::validate_name,
};

/// Parses a level name for `restore --to` (stop is not a level to restore to).
fn parse_level(s: &str) -> Result<u32> {
    match crate::agent::defaults::parse_level(s)? {
        level::STOPPED => Err(Error::InvalidRequest("restore goes down: stop is the top level (use stop)".into())),
        l => Ok(l),
    }
}

impl State {
    /// Serves one decoded command. `received` is when its line arrived.
    /// `pre`: what was read before the lock (`named::Prepared`).
    pub fn handle(&mut self, cmd: Command, caller: Caller, received: Instant, pre: super::named::Prepared) -> Result<Value> {
        super::transaction::serving(received);
        match cmd {
            Command::Ping {} => Ok(json!({"pong": true, "pid": std::process::id()})),
            Command::Probe {} => Ok(json!(super::probe::run(Some(&self.config.cgroup_parent)))),
            Command::Status { name } => self.status(name.as_deref()),
            Command::Journal { after } => Ok(json!({"records": journal::read_records(self.journal.path(), after)?})),
            Command::JournalVerify { anchor } => {
                let anchor = anchor.as_deref().map(journal::Anchor::parse).transpose().map_err(Error::InvalidRequest)?;
                Ok(json!(self.verify_journal(anchor)?))
            }
            Command::Create { name, move_caller, trail } => {
                validate_name(&name)?;
                let trail = trail || self.config.escalation.trail.records(&name);
                let params = json!({"move_caller": move_caller, "caller_pid": caller.pid, "trail": trail});
                self.execute(caller, "run", Some(&name), params, |s| {
                    let mut done = s.create(&name, move_caller.then_some(caller.pid))?;
                    if trail {
                        done.result["trail"] = s.trail_set(&name, true)?;
                    }
                    Ok(done)
                })
            }
            Command::Adopt { name, cgroup, pid, unit, container, pod, trail } => {
                validate_name(&name)?;
                let trail = trail || self.config.escalation.trail.records(&name);
                if let Some(sel) = crate::resolve::Selector::from_request(unit, container, pod)? {
                    return self.adopt_named(caller, &name, cgroup.is_some() || pid.is_some(), &sel, pre, trail);
                }
                let params = json!({"cgroup": cgroup, "pid": pid, "trail": trail});
                self.execute(caller, "adopt", Some(&name), params, |s| s.adopt_recorded(&name, cgroup.as_deref(), pid, trail))
            }
            Command::Stop { name, reason, order } => {
                self.registry.get(&name)?;
                let params = json!({"reason": reason, "order": order});
                self.execute_stop(caller, "stop", &name, params, order.unwrap_or_default(), received)
            }
            Command::Isolate { name, reason, verify, netdev, audit } => {
                self.registry.get(&name)?;
                // Every device must exist before anything changes.
                for d in &netdev {
                    crate::isolate::netdev::ifindex(d)?;
                }
                let params = json!({"reason": reason, "verify": verify, "netdev": netdev, "audit": audit});
                if audit {
                    return self.audit_isolate(caller, &name, verify, &netdev, params, received);
                }
                self.execute(caller, "isolate", Some(&name), params, |s| s.isolate(&name, verify, &netdev, received))
            }
            Command::Restore { name, to, grant, reason, audit_off } => {
                self.registry.get(&name)?;
                let params = json!({"to": to, "grant": grant, "reason": reason, "audit_off": audit_off});
                if audit_off {
                    if to.is_some() || !grant.is_empty() {
                        return Err(Error::InvalidRequest("restore --audit-off ends audit mode only: not with --to or --grant".into()));
                    }
                    return self.audit_off(caller, &name, params, received);
                }
                match (to, grant.is_empty()) {
                    (Some(to), true) => {
                        let to_level = parse_level(&to)?;
                        self.execute(caller, "restore", Some(&name), params, |s| s.restore(&name, to_level, received))
                    }
                    // Neither: one level down.
                    (None, true) => {
                        let cur = self.registry.get(&name)?.level;
                        if cur == level::NORMAL {
                            return Err(Error::InvalidRequest(format!("{name} is already at normal")));
                        }
                        self.execute(caller, "restore", Some(&name), params, |s| s.restore(&name, cur - 1, received))
                    }
                    (None, false) => {
                        let mask = grant.iter().map(|g| crate::degrade::bit(g)).collect::<Result<Vec<u32>>>()?.into_iter().fold(0, |a, b| a | b);
                        self.execute(caller, "restore", Some(&name), params, |s| s.grant(&name, mask, received))
                    }
                    _ => Err(Error::InvalidRequest("restore takes --to LEVEL or --grant CAP, not both".into())),
                }
            }
            Command::Degrade { name, revoke, allow_connect, allow_write, reason, audit } => {
                self.registry.get(&name)?;
                let plan = self.plan_degrade(&name, &revoke, &allow_connect, &allow_write)?;
                let params = json!({"revoke": revoke, "allow_connect": allow_connect, "allow_write": allow_write, "reason": reason, "audit": audit});
                if audit {
                    return self.audit_degrade(caller, &name, plan, params, received);
                }
                let r = self.execute(caller, "degrade", Some(&name), params, |s| s.degrade(&name, plan, received))?;
                self.alert(caller, &name, "degrade", &r, reason.as_deref());
                Ok(r)
            }
            Command::Throttle { name, syscalls, syscall_class, egress_bytes, egress_packets, tasks, mode, netdev, reason } => {
                let mut req = crate::throttle::Ceilings { egress_bytes, egress_packets, tasks, ..Default::default() };
                req.syscalls = syscall_class.clone();
                if let Some(n) = syscalls {
                    req.syscalls.insert("all".into(), n);
                }
                req.mode = mode.as_deref().map(crate::throttle::Mode::parse).transpose()?.unwrap_or_default();
                let plan = self.plan_throttle(&name, &req)?;
                for d in &netdev {
                    crate::isolate::netdev::ifindex(d)?;
                }
                if !netdev.is_empty() && !plan.has_egress() {
                    return Err(Error::InvalidRequest("--netdev only makes sense with --egress-bytes or --egress-packets".into()));
                }
                let params = json!({"syscalls": syscalls, "syscall_class": syscall_class, "egress_bytes": egress_bytes,
                    "egress_packets": egress_packets, "tasks": tasks, "mode": mode, "netdev": netdev, "reason": reason});
                let r = self.execute(caller, "throttle", Some(&name), params, |s| s.throttle(&name, plan, &netdev, received))?;
                self.alert(caller, &name, "throttle", &r, reason.as_deref());
                Ok(r)
            }
            Command::Escalate { name, to, skip_reason, reason } => {
                self.escalate(caller, &name, to.as_deref(), skip_reason.as_deref(), reason.as_deref(), received)
            }
            Command::DrillBegin { target } => self.drill_begin(caller, &target),
            Command::DrillEnd { report, restore } => self.drill_end(caller, &report, restore),
            Command::Trail(req) => self.trail_cmd(caller, req),
            Command::TripwireAdd(spec) => self.tripwire_add(caller, spec),
            Command::TripwireList {} => Ok(self.tripwire_list()),
            Command::TripwireRemove { name } => self.tripwire_remove(caller, &name),
            Command::TripwireRearm { name, target } => self.tripwire_rearm(caller, &name, target.as_deref()),
            Command::Capabilities {} => Ok(json!({"capabilities": self.capabilities()})),
            Command::Events {} => Err(Error::InvalidRequest("events is a subscription: the server handles it".into())),
            Command::Verify { name } => {
                self.registry.get(&name)?;
                self.execute(caller, "verify", Some(&name), Value::Null, |s| s.verify(&name))
            }
            Command::Propose { name, level, reason, timeout, on_timeout, meanwhile, approver_group, evidence } => {
                let args = super::pending::ProposeArgs { name, level, reason, timeout, on_timeout, meanwhile, approver_group, evidence };
                self.propose_cmd(caller, args)
            }
            Command::Pending {} => Ok(self.pending_list()),
            Command::Approve { id, reason } => self.approve(caller, id, reason.as_deref(), received),
            Command::Deny { id, reason } => self.deny(caller, id, reason.as_deref().unwrap_or_default()),
            Command::Lease { name, ttl, on_expiry, renew, cancel } => {
                let req = super::deadman::Request { ttl: ttl.as_deref(), on_expiry: on_expiry.as_deref(), renew, cancel };
                self.lease(caller, &name, req)
            }
            Command::Release { name } => {
                self.registry.get(&name)?;
                // A raise the kernel made on this target is journaled first.
                self.adopt_kernel_raises();
                self.execute(caller, "release", Some(&name), Value::Null, |s| s.release(&name))
            }
        }
    }

    /// Verifies the file, and also that it still holds the record this
    /// agent last wrote, with the hash it wrote (removing the last records,
    /// or rewriting and re-chaining the file, keeps the chain valid, but the
    /// agent remembers its head), the HMACs under the agent's key, and the
    /// caller's anchor.
    pub(super) fn verify_journal(&self, anchor: Option<journal::Anchor>) -> Result<journal::VerifyReport> {
        let opts = journal::VerifyOptions { anchor, key: self.journal.key().cloned(), written: Some(self.journal.head()) };
        Ok(journal::verify_file_with(self.journal.path(), &opts)?)
    }
}
