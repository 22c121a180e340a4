//! Audit mode (dry run, see `killpath_common::audit`): the decision point
//! every degrade check and every isolation refusal goes through. An
//! operation a revoked capability or the isolation would refuse is
//! refused and counted as a denial; one that only an AUDITED capability or
//! an audited isolation would refuse is counted and sampled exactly the
//! same way, under the audit key and with the event's audit flag, and then
//! allowed. Real enforcement wins: a capability both revoked and audited is
//! refused.
//!
//! Cost: the hooks' early returns test `GuardConfig::audited_targets` next
//! to `degraded_targets` / `isolated_targets` in the config they already
//! loaded; while nothing is audited that is the only added work.
//!
//! Not audited per packet: degrade's `net.connect` check at cgroup skb
//! egress (`degrade/egress.rs`) holds sockets connected BEFORE a
//! revocation. In audit mode the connect or send itself was already
//! counted at the sock_addr hook; counting every packet of that allowed
//! connection again would report one would-be refusal hundreds of times.
use killpath_common::{audit, TargetState};

use crate::degrade::{record_as, Detail, Origin};

/// A target found by a capability check: its id (the innermost target),
/// and the capabilities it has revoked and audited (the union over nested
/// targets).
#[derive(Clone, Copy)]
pub struct Subject {
    pub id: u64,
    pub revoked: u32,
    pub audit: u32,
}

impl Subject {
    #[inline(always)]
    pub fn of(id: u64, st: &TargetState) -> Self {
        Self { id, revoked: st.revoked, audit: st.audit & audit::CAPS }
    }

    /// Capabilities a check must look at: revoked or audited.
    #[inline(always)]
    pub fn checked(&self) -> u32 {
        self.revoked | self.audit
    }
}

/// The operation would be refused under capability bit `bit`: counts and
/// samples it, as a real denial when the capability is revoked (returns
/// true: refuse) or as an audited one when it is only audited (returns
/// false: allow).
#[inline(always)]
pub fn refuse(s: &Subject, bit: u32, detail: Detail, origin: Origin) -> bool {
    if s.revoked & (1u32 << bit) != 0 {
        record_as(s.id, bit, detail, origin, audit::EVENT_REAL);
        true
    } else {
        record_as(s.id, bit, detail, origin, audit::EVENT_AUDIT);
        false
    }
}

/// Isolation would refuse this operation of target `id`, which is NOT
/// isolated (the caller refuses isolated targets first): if the target
/// audits isolation, counts and samples it under isolation counter
/// `index` (a `killpath_common::counter` index). The caller allows.
#[inline(always)]
pub fn isolation(id: u64, st: &TargetState, index: u32, detail: Detail, origin: Origin) {
    if st.audit & audit::ISOLATE != 0 {
        record_isolation(id, index, detail, origin);
    }
}

/// Counts and samples a would-be isolation refusal of target `id` (which
/// audits isolation) under isolation counter `index`.
#[inline(always)]
pub fn record_isolation(id: u64, index: u32, detail: Detail, origin: Origin) {
    record_as(id, audit::ISOLATE_FIRST + index, detail, origin, audit::EVENT_AUDIT);
}
