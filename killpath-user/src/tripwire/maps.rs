//! Handles on the tripwire maps (rules, windows).
use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use killpath_common::tripwire::{maps as names, Rule, Window, WindowKey, MAX_RULES};

use crate::{
    error::{Error, Result},
    kernel::object::typed,
};

pub struct TripwireMaps {
    rules: Array<MapData, Rule>,
    windows: HashMap<MapData, WindowKey, Window>,
}

impl TripwireMaps {
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self { rules: typed(ebpf, names::RULES)?, windows: typed(ebpf, names::WINDOWS)? })
    }

    /// Writes (or, with `None`, clears) a slot.
    pub fn set_rule(&mut self, slot: u32, rule: Option<Rule>) -> Result<()> {
        if slot >= MAX_RULES {
            return Err(Error::InvalidRequest(format!("tripwire slot {slot} out of range")));
        }
        self.rules.set(slot, rule.unwrap_or_default(), 0).map_err(Error::map(format!("updating {}", names::RULES)))
    }

    pub fn rule(&self, slot: u32) -> Option<Rule> {
        self.rules.get(&slot, 0).ok().filter(|r| r.flags != 0)
    }

    pub fn window(&self, target: u64, slot: u32) -> Option<Window> {
        self.windows.get(&WindowKey { target, slot, _pad: 0 }, 0).ok()
    }

    /// Forgets the windows of targets not in `ids` (released).
    pub fn retain_targets(&mut self, ids: &[u64]) {
        let keys: Vec<WindowKey> = self.windows.keys().filter_map(|k| k.ok()).filter(|k| !ids.contains(&k.target)).collect();
        for k in keys {
            let _ = self.windows.remove(&k);
        }
    }

    /// Forgets a slot's windows (every target, or one): re-armed.
    pub fn clear_windows(&mut self, slot: u32, target: Option<u64>) {
        let keys: Vec<WindowKey> = self.windows.keys().filter_map(|k| k.ok()).filter(|k| k.slot == slot && target.is_none_or(|t| t == k.target)).collect();
        for k in keys {
            let _ = self.windows.remove(&k);
        }
    }
}
