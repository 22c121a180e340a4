//! Handles on the tripwire maps (rules, windows).
use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use killpath_common::tripwire::{flag, maps as names, Rule, SlotList, Window, WindowKey, MAX_RULES, METRICS};

use crate::{
    error::{Error, Result},
    kernel::object::typed,
};

pub struct TripwireMaps {
    rules: Array<MapData, Rule>,
    active: Array<MapData, SlotList>,
    windows: HashMap<MapData, WindowKey, Window>,
}

impl TripwireMaps {
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self { rules: typed(ebpf, names::RULES)?, active: typed(ebpf, names::ACTIVE)?, windows: typed(ebpf, names::WINDOWS)? })
    }

    /// Writes (or, with `None`, clears) a slot.
    pub fn set_rule(&mut self, slot: u32, rule: Option<Rule>) -> Result<()> {
        if slot >= MAX_RULES {
            return Err(Error::InvalidRequest(format!("tripwire slot {slot} out of range")));
        }
        self.rules.set(slot, rule.unwrap_or_default(), 0).map_err(Error::map(format!("updating {}", names::RULES)))?;
        self.sync_active()
    }

    /// Rewrites every metric's list of active slots from the slots
    /// themselves. Called after a slot is written, so a new rule is listed
    /// only once its slot is readable, and a removed rule leaves its list
    /// (the hooks re-check each slot, so the order only matters for adds).
    fn sync_active(&mut self) -> Result<()> {
        let mut lists = [SlotList::default(); METRICS as usize];
        for slot in 0..MAX_RULES {
            let Some(r) = self.rule(slot).filter(|r| r.flags & flag::ACTIVE != 0) else { continue };
            if let Some(l) = lists.get_mut(r.metric as usize) {
                // slot < MAX_RULES = 32 fits a u8; len < 32 indexes slots.
                l.slots[l.len as usize] = slot as u8;
                l.len += 1;
            }
        }
        for (metric, list) in (0u32..).zip(lists) {
            self.active.set(metric, list, 0).map_err(Error::map(format!("updating {}", names::ACTIVE)))?;
        }
        Ok(())
    }

    pub fn rule(&self, slot: u32) -> Option<Rule> {
        self.rules.get(&slot, 0).ok().filter(|r| r.flags != 0)
    }

    pub fn window(&self, target: u64, slot: u32) -> Option<Window> {
        self.windows.get(&WindowKey { target, slot, _pad: 0 }, 0).ok()
    }

    /// Forgets the windows of targets not in `ids` (released); `ids`
    /// sorted (a binary search per window).
    pub fn retain_targets(&mut self, ids: &[u64]) {
        let keys: Vec<WindowKey> = self.windows.keys().filter_map(|k| k.ok()).filter(|k| ids.binary_search(&k.target).is_err()).collect();
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
