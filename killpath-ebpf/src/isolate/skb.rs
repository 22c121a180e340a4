//! cgroup_skb programs on the target's cgroup: isolation on ingress and
//! egress, and on egress also degrade's per-packet `net.connect` check
//! (`degrade/egress.rs`) and throttle's byte/packet policer.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use killpath_common::{counter, level, GuardConfig};

use crate::{
    audit,
    degrade::{self, Detail, Origin},
    targets,
    throttle::{self, Verdict},
    trail, tripwire,
};

/// cgroup_skb return codes.
const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
/// Egress only (Linux 5.4): drop, and tell the sender it is congested.
const SKB_DROP_CN: i32 = 2;
/// Egress only: pass, and tell the sender it is congested (TCP enters CWR).
const SKB_PASS_CN: i32 = 3;

#[cgroup_skb]
pub fn kp_isolate_skb(ctx: SkBuffContext) -> i32 {
    // The trail's flow counters: counted first, taken back as refused on a drop.
    trail::net::skb(&ctx, false);
    let v = try_skb(&ctx).unwrap_or(SKB_PASS);
    if v == SKB_DROP {
        trail::net::skb_dropped(&ctx, false);
    }
    v
}

/// Egress: isolation as on ingress, then degrade's `net.connect`
/// allow-list per packet, then the level-1 byte/packet policer. One
/// program serves the three levels (isolate, degrade/egress.rs,
/// throttle/egress.rs).
#[cgroup_skb(egress)]
pub fn kp_egress_skb(ctx: SkBuffContext) -> i32 {
    // The trail's flow counters: counted first, taken back as refused on a drop.
    trail::net::skb(&ctx, true);
    let v = try_egress(&ctx).unwrap_or(SKB_PASS);
    if v == SKB_DROP || v == SKB_DROP_CN {
        trail::net::skb_dropped(&ctx, true);
    }
    v
}

fn try_egress(ctx: &SkBuffContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(SKB_PASS)?;
    // Tripwires first: a critical rule raises the level on the crossing
    // packet, which the isolation check below then drops.
    tripwire::skb(&cfg, ctx.skb.skb);
    // Level 3.
    if isolated_skb(&cfg, ctx) {
        return Ok(SKB_DROP);
    }
    // Level 2: one config check while no target is degraded. Before the
    // policer, so a dropped packet is not charged.
    if cfg.degraded_targets != 0 {
        if let degrade::egress::Verdict::Drop = degrade::egress::skb(&cfg, ctx) {
            return Ok(SKB_DROP);
        }
    }
    // Level 1.
    if cfg.egress_throttled == 0 {
        return Ok(SKB_PASS);
    }
    Ok(match throttle::egress::skb(cfg.throttle_depth_mask, ctx.skb.skb) {
        Verdict::Pass => SKB_PASS,
        Verdict::Over(_) => SKB_PASS_CN,
        Verdict::Refuse => SKB_DROP_CN,
    })
}

fn try_skb(ctx: &SkBuffContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(SKB_PASS)?;
    Ok(if isolated_skb(&cfg, ctx) { SKB_DROP } else { SKB_PASS })
}

/// Whether the packet's socket belongs to an isolated target (counted).
/// A packet of a target that audits isolation is counted and sampled as
/// a would-be drop, and passes.
#[inline(always)]
fn isolated_skb(cfg: &GuardConfig, ctx: &SkBuffContext) -> bool {
    if cfg.isolated_targets == 0 && cfg.audited_targets == 0 {
        return false;
    }
    let Some((id, st)) = targets::of_skb_with_id(cfg.depth_mask, ctx.skb.skb) else { return false };
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_SKB_DROPS);
        return true;
    }
    audit::isolation(id, &st, counter::ISOLATE_SKB_DROPS, Detail { label: degrade::label(b"packet"), ..Detail::default() }, Origin::Packet);
    false
}
