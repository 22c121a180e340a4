//! Tripwires, agent side: the rules (journaled, persisted in
//! `tripwires.json`, re-armed at start), their kernel slots and arming,
//! `tripwire list`, and the name of a rule behind a kernel raise.
//! Firings are `firing.rs`; approval requests `approval.rs`.
mod approval;
mod firing;

use std::collections::{BTreeMap, HashMap, VecDeque};

use killpath_common::{
    raise::Raise,
    tripwire::{Window, MAX_RULES},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use firing::{crossing_reader, eval_watch, Firing};

use super::{transaction::Done, Caller, State};
use crate::{
    error::{Error, Result},
    kernel::raises::Armed,
    tripwire::{Rule, RuleSpec},
};

/// The state dir file holding the rules.
pub const FILE: &str = "tripwires.json";

/// A rule as the agent keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub rule: Rule,
    pub slot: u32,
    /// Bumped on every arming: crossings of an older arming are ignored.
    pub generation: u32,
    /// From the config file (re-added at every start) rather than the CLI.
    #[serde(default)]
    pub from_config: bool,
    /// Firings by target: a rule fires once per target per arming.
    #[serde(default)]
    pub fired: BTreeMap<String, Firing>,
}

/// Every rule, and what the agent-evaluated ones remember between polls.
#[derive(Default)]
pub struct Tripwires {
    pub rules: BTreeMap<String, Stored>,
    /// Agent-evaluated rules: (slot, target id) -> recent (time, total).
    history: HashMap<(u32, u64), VecDeque<(std::time::Instant, u64)>>,
    /// What was last armed (targets counted, raise levels), to re-arm on change.
    armed: Option<(u32, Armed)>,
    /// The registry's targets when windows were last pruned.
    targets_seen: Option<Vec<u64>>,
}

impl State {
    /// At start: the rules from the state dir, then the config file's
    /// (a bad config rule is an error: the agent does not start).
    pub(super) fn load_tripwires(&mut self) -> Result<()> {
        let path = self.config.state_dir.join(FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let rules: BTreeMap<String, Stored> = serde_json::from_str(&text).map_err(|e| Error::InvalidRequest(format!("{}: {e}", path.display())))?;
            self.tripwires.rules = rules.into_iter().filter(|(_, s)| !s.from_config).collect();
        }
        for spec in self.config.escalation.tripwires.clone() {
            let rule = self.check_rule(&spec).map_err(|e| Error::InvalidRequest(format!("config file: {e}")))?;
            let prev = self.load_previous_config_rule(&spec.name);
            let slot = match &prev {
                Some(p) => p.slot,
                None => self.free_slot()?,
            };
            let fired = prev.map(|p| p.fired).unwrap_or_default();
            self.tripwires.rules.insert(spec.name.clone(), Stored { rule, slot, generation: 1, from_config: true, fired });
        }
        for name in self.tripwires.rules.keys().cloned().collect::<Vec<_>>() {
            self.write_slot(&name)?;
        }
        self.save_tripwires()?;
        self.sync_tripwire_arming()
    }

    fn load_previous_config_rule(&self, name: &str) -> Option<Stored> {
        let text = std::fs::read_to_string(self.config.state_dir.join(FILE)).ok()?;
        let rules: BTreeMap<String, Stored> = serde_json::from_str(&text).ok()?;
        rules.get(name).filter(|s| s.from_config).cloned()
    }

    fn save_tripwires(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.tripwires.rules).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        crate::kernel::durable::write(&self.config.state_dir.join(FILE), &bytes)
    }

    /// A spec checked, including that its target exists.
    fn check_rule(&self, spec: &RuleSpec) -> Result<Rule> {
        let rule = Rule::check(spec)?;
        if spec.target != "*" && !self.registry.targets.contains_key(&spec.target) {
            return Err(Error::InvalidRequest(format!(
                "tripwire {:?}: unknown target {:?} (give a target name, or '*' for every target)",
                spec.name, spec.target
            )));
        }
        Ok(rule)
    }

    fn free_slot(&self) -> Result<u32> {
        (0..MAX_RULES)
            .find(|s| !self.tripwires.rules.values().any(|r| r.slot == *s))
            .ok_or_else(|| Error::InvalidRequest(format!("tripwire: all {MAX_RULES} rule slots are in use; remove a rule first")))
    }

    /// Capabilities a degrade action revokes (the configured defaults).
    fn degrade_revoke_bits(&self) -> u32 {
        let names = self.default_revoke_names();
        names.iter().filter_map(|n| crate::degrade::bit(n).ok()).fold(0, |a, b| a | b)
    }

    /// Writes a rule's kernel slot.
    fn write_slot(&mut self, name: &str) -> Result<()> {
        let revoke = self.degrade_revoke_bits();
        let Some(s) = self.tripwires.rules.get(name) else { return Ok(()) };
        let target_id = if s.rule.spec.target == "*" { 0 } else { self.registry.get(&s.rule.spec.target)?.cgroup_id };
        let k = s.rule.kernel(target_id, revoke, s.generation);
        let slot = s.slot;
        let k = (k.metric != 0).then_some(k);
        self.enforcer.tripwire.set_rule(slot, k)
    }

    /// Counts the targets with a kernel-counted rule into the global
    /// switches, and arms the targets a critical rule may raise. Cheap when
    /// nothing changed; called after every rule change and every poll
    /// (a `*` rule covers targets adopted later).
    pub(super) fn sync_tripwire_arming(&mut self) -> Result<()> {
        // No rule, and that already synced: nothing is counted or armed,
        // and no window exists (a rule's removal clears its slot's), so
        // nothing below can change until a rule is added. This runs every
        // `EVAL_TICK` under the state lock: the walk of every target below
        // was most of an idle agent's CPU at 1,000 targets.
        if self.tripwires.rules.is_empty() && self.tripwires.armed == Some((0, Armed::default())) && !self.enforcer.maps.tripwire_syscalls {
            return Ok(());
        }
        // Windows of released targets would fill the map: pruned whenever
        // the set of targets changes.
        let mut ids: Vec<u64> = self.registry.targets.values().map(|t| t.cgroup_id).collect();
        ids.sort_unstable();
        if self.tripwires.targets_seen.as_ref() != Some(&ids) {
            self.enforcer.tripwire.retain_targets(&ids);
            self.tripwires.history.retain(|(_, id), _| ids.contains(id));
            self.tripwires.targets_seen = Some(ids);
        }
        let mut counted = 0u32;
        let mut armed = Armed::default();
        let revoke = self.degrade_revoke_bits();
        for t in self.registry.targets.values() {
            let rules: Vec<&Stored> = self.tripwires.rules.values().filter(|s| s.rule.applies_to(&t.name)).collect();
            if rules.iter().any(|s| matches!(s.rule.metric(), crate::tripwire::Metric::Kernel { .. })) {
                counted += 1;
            }
            let top = rules.iter().filter(|s| s.rule.raises_in_kernel()).map(|s| s.rule.level).max();
            if let Some(l) = top {
                armed.add(l, if l == killpath_common::level::DEGRADE { revoke } else { 0 });
            }
        }
        let syscalls = self
            .tripwires
            .rules
            .values()
            .any(|s| matches!(s.rule.metric(), crate::tripwire::Metric::Kernel { id: killpath_common::tripwire::metric::SYSCALLS, .. }));
        if self.enforcer.maps.tripwire_syscalls != syscalls {
            // Every syscall on the host pays for this hook while it is attached.
            self.enforcer.maps.tripwire_syscalls = syscalls;
            self.enforcer.sync_syscall_hook()?;
        }
        if self.tripwires.armed == Some((counted, armed)) {
            return Ok(());
        }
        self.enforcer.maps.tripwire_targets = Some(counted);
        self.enforcer.maps.set_armed("tripwire", armed)?;
        self.tripwires.armed = Some((counted, armed));
        Ok(())
    }

    pub(super) fn tripwire_add(&mut self, caller: Caller, spec: RuleSpec) -> Result<Value> {
        let rule = self.check_rule(&spec)?;
        if self.tripwires.rules.contains_key(&spec.name) {
            return Err(Error::InvalidRequest(format!("tripwire {:?} already exists (remove it first)", spec.name)));
        }
        let slot = self.free_slot()?;
        // A fresh generation: crossings still queued from a rule removed
        // from this slot are not taken for this one's.
        let generation = self.tripwires.rules.values().map(|s| s.generation).max().unwrap_or(0).max((super::now_us() / 1_000_000) as u32) + 1;
        let name = spec.name.clone();
        let params = json!({"rule": spec, "slot": slot, "evaluated": rule.evaluated(), "mode": rule.mode.name()});
        self.execute(caller, "tripwire-add", None, params, |s| {
            s.enforcer.tripwire.clear_windows(slot, None);
            s.tripwires.rules.insert(name.clone(), Stored { rule: rule.clone(), slot, generation, from_config: false, fired: BTreeMap::new() });
            s.save_tripwires()?;
            s.write_slot(&name)?;
            s.sync_tripwire_arming()?;
            Ok(Done {
                to_level: None,
                time_to_effect_us: None,
                result: json!({"rule": name, "slot": slot, "evaluated": rule.evaluated(), "mode": rule.mode.name()}),
            })
        })
    }

    pub(super) fn tripwire_remove(&mut self, caller: Caller, name: &str) -> Result<Value> {
        let slot = self.tripwires.rules.get(name).map(|s| s.slot).ok_or_else(|| Error::InvalidRequest(format!("no tripwire named {name:?}")))?;
        self.execute(caller, "tripwire-remove", None, json!({"rule": name}), |s| {
            s.enforcer.tripwire.set_rule(slot, None)?;
            s.enforcer.tripwire.clear_windows(slot, None);
            s.tripwires.rules.remove(name);
            s.tripwires.history.retain(|(sl, _), _| *sl != slot);
            s.save_tripwires()?;
            s.sync_tripwire_arming()?;
            Ok(Done { to_level: None, time_to_effect_us: None, result: json!({"rule": name, "removed": true}) })
        })
    }

    /// Re-arms a fired rule (for one target, or all): it may fire again.
    pub(super) fn tripwire_rearm(&mut self, caller: Caller, name: &str, target: Option<&str>) -> Result<Value> {
        let slot = self.tripwires.rules.get(name).map(|s| s.slot).ok_or_else(|| Error::InvalidRequest(format!("no tripwire named {name:?}")))?;
        let id = target.map(|t| self.registry.get(t).map(|t| t.cgroup_id)).transpose()?;
        self.execute(caller, "tripwire-rearm", target, json!({"rule": name}), |s| {
            if let Some(st) = s.tripwires.rules.get_mut(name) {
                match target {
                    Some(t) => {
                        st.fired.remove(t);
                    }
                    None => st.fired.clear(),
                }
            }
            s.enforcer.tripwire.clear_windows(slot, id);
            s.tripwires.history.retain(|(sl, t), _| *sl != slot || id.is_some_and(|i| i != *t));
            s.save_tripwires()?;
            Ok(Done { to_level: None, time_to_effect_us: None, result: json!({"rule": name, "rearmed": target.unwrap_or("*")}) })
        })
    }

    /// The current window's value: what the kernel counted in it, 0 once it is over.
    fn window_now(w: &Window, window_ns: u64) -> u64 {
        if super::raise::now_ktime_ns().saturating_sub(w.start_ns) < window_ns {
            w.count
        } else {
            0
        }
    }

    pub(super) fn tripwire_list(&self) -> Value {
        let rules: Vec<Value> = self
            .tripwires
            .rules
            .values()
            .map(|s| {
                let targets: Vec<Value> = self
                    .registry
                    .targets
                    .values()
                    .filter(|t| s.rule.applies_to(&t.name))
                    .map(|t| {
                        let w = self.enforcer.tripwire.window(t.cgroup_id, s.slot);
                        let now = match s.rule.metric() {
                            crate::tripwire::Metric::Tasks => self.tasks_of(t) as u64,
                            _ if s.rule.in_kernel => w.as_ref().map_or(0, |w| Self::window_now(w, s.rule.window_ns)),
                            _ => self.agent_window_value(s.slot, t.cgroup_id, s.rule.window_ns),
                        };
                        json!({"target": t.name, "window_value": now, "total": w.map(|w| w.total), "fired": s.fired.get(&t.name)})
                    })
                    .collect();
                json!({
                    "name": s.rule.spec.name,
                    "target": s.rule.spec.target,
                    "metric": s.rule.spec.metric,
                    "above": s.rule.threshold,
                    "window": s.rule.spec.window,
                    "action": s.rule.spec.action,
                    "critical": s.rule.spec.critical,
                    "mode": s.rule.mode.name(),
                    "evaluated": s.rule.evaluated(),
                    "slot": s.slot,
                    "from_config": s.from_config,
                    "timeout": s.rule.spec.timeout,
                    "on_timeout": s.rule.spec.on_timeout,
                    "approver_group": s.rule.spec.approver_group,
                    "meanwhile": s.rule.spec.meanwhile,
                    "firings": s.fired.len(),
                    "targets": targets,
                })
            })
            .collect();
        json!({"rules": rules})
    }

    /// The firings of a target, for `status`.
    pub(super) fn tripwire_status(&self, name: &str) -> Value {
        let fired: Vec<&Firing> = self.tripwires.rules.values().filter_map(|s| s.fired.get(name)).collect();
        json!(fired)
    }

    /// Live processes of a target (metric `tasks`).
    fn tasks_of(&self, t: &crate::target::Target) -> usize {
        crate::kernel::cgroup::Cgroup::new(&t.cgroup).procs_recursive().len()
    }

    /// The rule a kernel raise came from (`detail` is its slot), for the
    /// `kernel-raise` record.
    pub(super) fn tripwire_raise_context(&self, _name: &str, r: &Raise) -> (String, Value) {
        match self.tripwires.rules.values().find(|s| s.slot == r.detail) {
            Some(s) => (
                format!("tripwire {}", s.rule.spec.name),
                json!({"rule": s.rule.spec.name, "rule_slot": r.detail, "metric": s.rule.spec.metric, "threshold": s.rule.threshold, "window": s.rule.spec.window, "value": r.value}),
            ),
            None => ("tripwire (rule removed since)".into(), json!({"rule_slot": r.detail})),
        }
    }
}
