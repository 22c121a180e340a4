//! Level 1, egress ceilings: the byte/packet policer on the target's
//! sockets (cgroup_skb/egress), on a `--netdev` device (TC), and the
//! pacing rate of new TCP sockets (cgroup sock_addr connect). All three
//! programs are shared with isolate and live in `isolate/`; they call
//! into the functions here.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_addr},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns, bpf_setsockopt, bpf_skb_ancestor_cgroup_id},
};
use killpath_common::{throttle, ThrottleKey};

use super::bucket::{charge, owner, Limit, Verdict};
use crate::{maps::THROTTLE, targets};

const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;

/// Egress policer verdict for one skb: charges the byte and packet buckets
/// of the innermost enclosing throttled target.
#[inline(always)]
pub fn skb(depth_mask: u32, skb: *mut __sk_buff) -> Verdict {
    // SAFETY: skb is the program's context pointer.
    let (len, segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let packets = if segs == 0 { 1 } else { segs };
    // SAFETY: skb is the program's context pointer.
    let id = owner(depth_mask, throttle::EGRESS_BYTES, throttle::EGRESS_PACKETS, |d| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, d) });
    if id == 0 {
        return Verdict::Pass;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    worse(
        charge(id, throttle::EGRESS_BYTES, len, throttle::MODE_PACE, Limit::TwoBursts, now),
        charge(id, throttle::EGRESS_PACKETS, packets, throttle::MODE_PACE, Limit::TwoBursts, now),
    )
}

/// At connect (cgroup sock_addr connect4/6, process context): caps the
/// new socket's pacing rate at the target's egress byte ceiling with
/// SO_MAX_PACING_RATE, which also switches on TCP's internal pacing
/// (Linux 4.20, tcp_needs_internal_pacing) where no fq qdisc paces. On
/// loopback a congestion window cannot go low enough to reach a small
/// ceiling (rate = cwnd / RTT, and the RTT is microseconds), so without
/// pacing TCP would only meet the policer's drops and stall on
/// retransmission timers; with it, a flow sends at the ceiling and the
/// policer only trims the sum of several flows.
#[inline(always)]
pub fn pace_socket(sa: *mut bpf_sock_addr) {
    let Some(cfg) = targets::config() else { return };
    if cfg.egress_throttled == 0 {
        return;
    }
    // SAFETY: helper without pointer arguments.
    let id = owner(cfg.throttle_depth_mask, throttle::EGRESS_BYTES, throttle::EGRESS_BYTES, |d| unsafe { bpf_get_current_ancestor_cgroup_id(d) });
    if id == 0 {
        return;
    }
    let key = ThrottleKey { cgroup_id: id, class: throttle::EGRESS_BYTES, _pad: 0 };
    // SAFETY: value copied out immediately.
    let Some(b) = (unsafe { THROTTLE.get(key) }) else { return };
    if b.cost_ps == 0 {
        return;
    }
    let rate = 1_000_000_000_000u64 / b.cost_ps;
    let mut val: u32 = if rate > u32::MAX as u64 { u32::MAX } else { rate as u32 };
    // SAFETY: sa is the program's context; val lives on the stack.
    unsafe { bpf_setsockopt(sa as *mut _, SOL_SOCKET, SO_MAX_PACING_RATE, (&mut val as *mut u32).cast(), 4) };
}

/// Egress policer at TC for a `--netdev` device owned by target `id`.
#[inline(always)]
pub fn tc(id: u64, len: u64, segs: u64) -> Verdict {
    let packets = if segs == 0 { 1 } else { segs };
    // No congestion notification reaches the sender from TC in another
    // namespace: a hard policer with the burst as its depth.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    worse(
        charge(id, throttle::EGRESS_BYTES_TC, len, throttle::MODE_PACE, Limit::Burst, now),
        charge(id, throttle::EGRESS_PACKETS_TC, packets, throttle::MODE_PACE, Limit::Burst, now),
    )
}

/// The stricter of two verdicts (the byte and the packet bucket).
#[inline(always)]
fn worse(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Refuse, _) | (_, Verdict::Refuse) => Verdict::Refuse,
        (Verdict::Over(x), _) => Verdict::Over(x),
        (_, v) => v,
    }
}
