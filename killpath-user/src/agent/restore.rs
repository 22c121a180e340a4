//! Stepping down: what leaving each level undoes is [`Level::undone`].
use std::time::Instant;

use serde_json::json;

use super::{now_us, Done, State};
use crate::level::{Level, Undo};
use crate::{
    error::{Error, Result},
    kernel::cgroup::Cgroup,
    target::level_name,
};

impl State {
    /// Steps a target down to `to` (a map update; a stopped target's cgroup
    /// is thawed; below throttle the ceilings are lifted).
    pub(super) fn restore(&mut self, name: &str, to: u32, received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        if to >= t.level {
            return Err(Error::InvalidRequest(format!("restore goes down: {name} is at {}, cannot restore to {}", level_name(t.level), level_name(to))));
        }
        let mut t = t;
        let (Some(from), Some(to_level)) = (Level::from_u32(t.level), Level::from_u32(to)) else {
            return Err(Error::InvalidRequest(format!("restore: unknown level {} or {to}", t.level)));
        };
        let undone = Level::undone(from, to_level);
        // Ceilings and capabilities first, the level in KP_TARGETS next (that
        // one map update reopens the channels), the thaw last.
        for u in &undone {
            match u {
                Undo::LiftCeilings => self.unthrottle(name)?,
                Undo::GrantAll => {
                    t.revoked = 0;
                    t.allow_connect.clear();
                    t.allow_write.clear();
                    self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
                    self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
                }
                Undo::Reconnect | Undo::Thaw => {}
            }
        }
        self.enforcer.maps.set(t.cgroup_id, t.state(to))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        // By id (the real directory); a cgroup gone by id falls back to the
        // path, which then does not exist either.
        let cg = self.target_cgroup(name).map_or_else(|_| Cgroup::new(&t.cgroup), |(c, _)| c);
        if undone.contains(&Undo::Thaw) && cg.exists() && cg.has_freeze() {
            cg.freeze(false)?;
        }
        let from = self.registry.get(name)?.level;
        let tt = self.registry.get_mut(name)?;
        tt.level = to;
        tt.revoked = t.revoked;
        tt.allow_connect = t.allow_connect.clone();
        tt.allow_write = t.allow_write.clone();
        tt.since_unix_us = now_us();
        self.registry.save()?;
        Ok(Done {
            result: json!({"target": name, "level": level_name(to), "from": level_name(from), "time_to_effect_us": time_to_effect_us}),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }
}
