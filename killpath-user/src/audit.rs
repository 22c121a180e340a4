//! Audit mode (dry run) for degrade and isolate: what a target audits
//! (`Target::audit`, `killpath_common::audit` bits) and what the kernel
//! counted as would-be refusals. An audited capability or isolation is
//! checked by the same hooks as a real one; a would-be refusal is counted
//! per target under its own `KP_DENIALS` key (`DenialKey::_pad` =
//! `audit::KEY_AUDIT`) and sampled with the event's audit flag, then
//! allowed. Real enforcement wins over audit: a capability both revoked
//! and audited is refused, and an isolated target's isolation audit is
//! inert (it counts again once the target is restored below isolate).
use killpath_common::{audit, cap, counter, DenialKey};
use serde_json::{json, Value};

use crate::{degrade, kernel::maps::Maps};

/// Counter name of an audited refusal index: a capability's name, or
/// `isolate.<counter>` for isolation's counters.
pub fn index_name(index: u32) -> String {
    match index.checked_sub(audit::ISOLATE_FIRST).and_then(|i| audit::ISOLATE_NAMES.get(i as usize)) {
        Some(n) => format!("isolate.{n}"),
        None => degrade::name_of_index(index).to_owned(),
    }
}

/// What `audit` bits mean, for status and results:
/// `{"isolate": bool, "capabilities": [names]}`.
pub fn describe(bits: u32) -> Value {
    json!({"isolate": bits & audit::ISOLATE != 0, "capabilities": degrade::names(bits & audit::CAPS)})
}

/// Whether these bits audit anything.
pub fn any(bits: u32) -> bool {
    bits != 0
}

impl Maps {
    fn audit_count(&self, cgroup_id: u64, index: u32) -> Option<u64> {
        let d = self.degrade.as_ref()?;
        let v = d.denials.get(&DenialKey { cgroup_id, cap: index, _pad: audit::KEY_AUDIT }, 0).ok()?;
        Some(v.iter().sum())
    }

    /// Would-be refusals of a target counted in audit mode, per
    /// capability and per isolation counter (exact: summed over CPUs);
    /// only the non-zero ones. Kept apart from real denials.
    pub fn would_have_refused(&self, cgroup_id: u64) -> Vec<(u32, u64)> {
        (0..cap::COUNT)
            .chain(audit::ISOLATE_FIRST..audit::ISOLATE_FIRST + counter::COUNT)
            .filter_map(|i| self.audit_count(cgroup_id, i).filter(|n| *n > 0).map(|n| (i, n)))
            .collect()
    }

    /// Removes a target's audit counters (audit ended, or target released).
    pub fn clear_audit_counts(&mut self, cgroup_id: u64) {
        if let Some(d) = self.degrade.as_mut() {
            for i in (0..cap::COUNT).chain(audit::ISOLATE_FIRST..audit::ISOLATE_FIRST + counter::COUNT) {
                let _ = d.denials.remove(&DenialKey { cgroup_id, cap: i, _pad: audit::KEY_AUDIT });
            }
        }
    }
}

/// Status JSON of the would-be refusals: `{"net.connect": n, "isolate.packets": n, ...}`.
pub fn counts_json(counts: &[(u32, u64)]) -> Value {
    Value::Object(counts.iter().map(|(i, n)| (index_name(*i), json!(n))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bits() {
        assert_eq!(index_name(0), "net.connect");
        assert_eq!(index_name(audit::ISOLATE_FIRST + counter::ISOLATE_SKB_DROPS), "isolate.packets");
        assert_eq!(index_name(audit::ISOLATE_FIRST + counter::ISOLATE_ADDR_DENIALS), "isolate.connects_and_sends");
        // The isolation bit is not a capability bit.
        assert_eq!(audit::ISOLATE & audit::CAPS, 0);
        assert_eq!(describe(audit::ISOLATE | cap::EXEC), json!({"isolate": true, "capabilities": ["exec"]}));
    }
}
