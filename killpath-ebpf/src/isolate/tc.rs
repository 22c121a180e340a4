//! TC classifier on the host side of a target's veth (`isolate --netdev`):
//! isolation of the device, and throttle's egress policer at TC.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use killpath_common::{counter, level};

use crate::{
    audit,
    degrade::{label, Detail, Origin},
    maps::{NETDEVS, TARGETS},
    targets,
    throttle::{self, Verdict},
};

/// Drops every frame in both directions while the owning target is
/// isolated. This also catches what no socket hook sees, such as frames
/// from a packet socket inside the container's network namespace. Returns
/// TC_ACT_UNSPEC (TCX_NEXT) otherwise, so other programs on the device
/// still run. One program serves two levels: it also polices the
/// workload's egress at the target's egress ceilings, first
/// (throttle/egress.rs).
#[classifier]
pub fn kp_isolate_tc(ctx: TcContext) -> i32 {
    try_tc(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

fn try_tc(ctx: &TcContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(TC_ACT_UNSPEC)?;
    if cfg.isolated_targets == 0 && cfg.egress_throttled == 0 && cfg.audited_targets == 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: reading the device index from the skb context.
    let (ifindex, iif, len, segs) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
    // SAFETY: values copied out immediately.
    let Some(cgid) = (unsafe { NETDEVS.get(ifindex) }).copied() else { return Ok(TC_ACT_UNSPEC) };
    // Level 1. Ingress on the host side of the veth is the workload's egress.
    if cfg.egress_throttled != 0 && iif == ifindex && throttle::egress::tc(cgid, len as u64, segs as u64) == Verdict::Refuse {
        return Ok(TC_ACT_SHOT);
    }
    // Level 3 (and isolation in audit mode: counted, passed).
    // SAFETY: as above.
    let Some(st) = (unsafe { TARGETS.get(cgid) }).copied() else { return Ok(TC_ACT_UNSPEC) };
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_TC_DROPS);
        return Ok(TC_ACT_SHOT);
    }
    audit::isolation(cgid, &st, counter::ISOLATE_TC_DROPS, Detail { label: label(b"frame at TC"), ..Detail::default() }, Origin::Packet);
    Ok(TC_ACT_UNSPEC)
}
