//! `escalate`: one level up at a time with the configured defaults, and a
//! journaled reason when a level is skipped.
use std::time::Instant;

use killpath_common::level;
use serde_json::{json, Value};

use super::{Caller, State};
use crate::{
    error::{Error, Result},
    journal::{Entry, Phase},
    target::level_name,
};

impl State {
    pub(super) fn escalate(
        &mut self,
        caller: Caller,
        name: &str,
        to: Option<&str>,
        skip_reason: Option<&str>,
        reason: Option<&str>,
        received: Instant,
    ) -> Result<Value> {
        let from = self.registry.get(name)?.level;
        if from >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "there is no level above stop" });
        }
        let to = match to {
            Some(t) => crate::agent::defaults::parse_level(t)?,
            None => from + 1,
        };
        if to <= from {
            return Err(Error::InvalidRequest(format!(
                "escalate goes up: {name} is at {}, cannot escalate to {} (use restore to step down)",
                level_name(from),
                level_name(to)
            )));
        }
        let skipped: Vec<&str> = (from + 1..to).map(level_name).collect();
        let skip_reason = skip_reason.map(str::trim).filter(|r| !r.is_empty());
        if !skipped.is_empty() && skip_reason.is_none() {
            return Err(Error::InvalidRequest(format!(
                "escalate goes one level at a time: {name} is at {}, going to {} would skip {}; give --skip-reason to do it anyway",
                level_name(from),
                level_name(to),
                skipped.join(", ")
            )));
        }
        let esc = self.config.escalation.clone();
        let mut params = json!({"from": level_name(from), "to": level_name(to), "skipped": skipped, "skip_reason": skip_reason, "reason": reason});
        // Check the step fully before anything is journaled or applied.
        let result = match to {
            level::THROTTLE => {
                let plan = self.plan_throttle(name, &esc.throttle.ceilings())?;
                params["defaults"] = json!(plan);
                let r = self.execute(caller, "escalate", Some(name), params, |s| s.throttle(name, plan, &[], received))?;
                self.alert(caller, name, "throttle", &r, reason);
                r
            }
            level::DEGRADE => {
                let revoke = self.default_revoke_names();
                let plan = self.plan_degrade(name, &revoke, &esc.degrade.allow_connect, &esc.degrade.allow_write)?;
                params["defaults"] = json!({"revoke": revoke, "allow_connect": esc.degrade.allow_connect, "allow_write": esc.degrade.allow_write});
                let r = self.execute(caller, "escalate", Some(name), params, |s| s.degrade(name, plan, received))?;
                self.alert(caller, name, "degrade", &r, reason);
                r
            }
            level::ISOLATE => self.execute(caller, "escalate", Some(name), params, |s| s.isolate(name, false, &[], received))?,
            _ => self.execute_stop(caller, "escalate", name, params, crate::stop::StopOrder::Auto, received)?,
        };
        if let Some(why) = skip_reason.filter(|_| !skipped.is_empty()) {
            let mut e = Entry::new(caller.actor(), Phase::Event, "level-skipped");
            e.target = Some(name.to_owned());
            e.from_level = Some(from);
            e.to_level = Some(to);
            e.params = json!({"skipped": skipped, "skip_reason": why});
            e.high_priority = true;
            self.journal.append(e)?;
        }
        let mut result = result;
        result["skipped"] = json!(skipped);
        result["escalated_from"] = json!(level_name(from));
        Ok(result)
    }

    /// Capabilities a degrade with the configured defaults revokes: the
    /// `[degrade] revoke` list, or every capability revoked by default
    /// that this kernel can enforce.
    pub(super) fn default_revoke_names(&self) -> Vec<String> {
        match &self.config.escalation.degrade.revoke {
            Some(r) => r.clone(),
            None => {
                let caps = self.capabilities();
                crate::agent::defaults::default_revoke()
                    .filter(|c| caps.iter().any(|k| k.name == c.name() && k.enforceable))
                    .map(|c| c.name().to_owned())
                    .collect()
            }
        }
    }
}
