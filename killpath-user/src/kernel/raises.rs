//! Levels the kernel raised on its own (`KP_RAISES`, see
//! `killpath-common/src/raise.rs`), and the targets features arm for it.
use killpath_common::{raise::Raise, GuardConfig, TargetState};

use super::maps::Maps;
use crate::error::{Error, Result};

/// Key of the armed counts a previous agent left (see [`Maps::seed_armed`]).
const PREVIOUS: &str = "previous agent";

/// Targets a feature (tripwires, leases) may have the kernel raise to
/// isolate, stop or degrade: counted in advance into the global switches,
/// so the hooks already look those targets up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Armed {
    pub isolate: u32,
    pub stop: u32,
    pub degrade: u32,
}

impl Armed {
    /// What a config says is armed.
    pub fn of(cfg: GuardConfig) -> Self {
        Self { isolate: cfg.armed_isolate, stop: cfg.armed_stop, degrade: cfg.armed_degrade }
    }

    pub fn plus(self, o: Self) -> Self {
        Self { isolate: self.isolate + o.isolate, stop: self.stop + o.stop, degrade: self.degrade + o.degrade }
    }

    /// Counts one target that may be raised to `level` with `revoke`.
    /// Cumulative like the levels: a target that may be stopped may also
    /// be isolated (its sockets' packets must be dropped), and any
    /// revocation needs the degrade hooks.
    pub fn add(&mut self, level: u32, revoke: u32) {
        use killpath_common::level as l;
        if level >= l::STOPPED {
            self.stop += 1;
        }
        if level >= l::ISOLATE {
            self.isolate += 1;
        }
        if revoke != 0 {
            self.degrade += 1;
        }
    }
}

/// `state` with a pending raise applied on top, if the raise asks for more.
pub fn merge(state: TargetState, r: &Raise) -> Option<TargetState> {
    if r.level <= state.level && r.revoke & !state.revoked == 0 {
        return None;
    }
    Some(TargetState { level: state.level.max(r.level), revoked: state.revoked | r.revoke, ..state })
}

impl Maps {
    /// The raise the kernel recorded for a target and the agent has not adopted.
    pub fn raise_of(&self, cgroup_id: u64) -> Option<Raise> {
        self.raises.as_ref()?.get(&cgroup_id, 0).ok()
    }

    /// Every raise not adopted yet, by cgroup id.
    pub fn raises(&self) -> Vec<(u64, Raise)> {
        self.raises.as_ref().map(|m| m.iter().filter_map(|r| r.ok()).collect()).unwrap_or_default()
    }

    /// Forgets an adopted raise (no-op if absent). Only `raise` itself, if
    /// the kernel raised the target again since, is kept.
    pub fn clear_raise(&mut self, cgroup_id: u64, adopted: &Raise) -> Result<()> {
        let Some(m) = self.raises.as_mut() else { return Ok(()) };
        match m.get(&cgroup_id, 0) {
            Ok(cur) if cur == *adopted => m.remove(&cgroup_id).map_err(Error::map(format!("updating {}", killpath_common::maps::RAISES))),
            _ => Ok(()),
        }
    }

    /// A freshly opened agent keeps what the previous agent armed (the
    /// kernel may raise those targets while the new agent starts) until
    /// [`Maps::forget_previous_armed`], once every feature has re-armed.
    pub(super) fn seed_armed(mut self) -> Self {
        let previous = self.config().map(Armed::of).unwrap_or_default();
        self.armed = Some(std::collections::BTreeMap::from([(PREVIOUS, previous)]));
        self
    }

    /// Drops the previous agent's armed counts (every feature has re-armed).
    pub fn forget_previous_armed(&mut self) -> Result<()> {
        if let Some(by_feature) = self.armed.as_mut() {
            by_feature.remove(PREVIOUS);
        }
        self.sync_config()
    }

    /// Drops a target's raise record whatever it holds (the target is released).
    pub fn drop_raise(&mut self, cgroup_id: u64) {
        if let Some(m) = self.raises.as_mut() {
            let _ = m.remove(&cgroup_id);
        }
    }

    /// Sets what `feature` arms and recomputes the global switches.
    pub fn set_armed(&mut self, feature: &'static str, armed: Armed) -> Result<()> {
        if let Some(by_feature) = self.armed.as_mut() {
            by_feature.insert(feature, armed);
        }
        self.sync_config()
    }
}
