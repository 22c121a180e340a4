//! Level 3, isolate: cut a target off from everything outside it.
//!
//! Cgroup hooks (attached to each target's cgroup when the target is
//! created, so only the target's own sockets pay for them):
//! - cgroup_skb ingress+egress drops every packet of the target's sockets,
//!   which cuts established connections too, not only new ones;
//! - cgroup sock_addr connect4/6 and sendmsg4/6 refuse new connections and
//!   UDP sends (DNS included) with EPERM, so the workload sees a clean error;
//! - cgroup sock_create refuses raw sockets (ping, hand-made packets).
//! BPF LSM hooks (host-wide, where the kernel has BPF LSM) cover what cgroup
//! hooks cannot see: unix-domain sockets (a docker.sock-style control
//! socket), packet sockets, and send/receive on sockets opened before the
//! isolation.
//! Each program reads the target's level from the map, so isolating is one
//! map update.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, lsm},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, TcContext},
};
use killpath_common::{counter, level};

use crate::{
    maps::{NETDEVS, TARGETS},
    targets,
};

const EPERM: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const SOCK_RAW: u32 = 3;

/// cgroup_skb return codes.
const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;

#[inline(always)]
fn isolated(state: Option<killpath_common::TargetState>) -> bool {
    state.is_some_and(|s| s.level >= level::ISOLATE)
}

#[cgroup_skb]
pub fn kp_isolate_skb(ctx: SkBuffContext) -> i32 {
    try_skb(&ctx).unwrap_or(SKB_PASS)
}

fn try_skb(ctx: &SkBuffContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(SKB_PASS)?;
    if cfg.isolated_targets == 0 {
        return Ok(SKB_PASS);
    }
    if isolated(targets::of_skb(cfg.depth_mask, ctx.skb.skb)) {
        targets::count(counter::ISOLATE_SKB_DROPS);
        return Ok(SKB_DROP);
    }
    Ok(SKB_PASS)
}

/// TC on the host side of a target's veth (`isolate --netdev`): drops
/// every frame in both directions while the owning target is isolated. This
/// also catches what no socket hook sees, such as frames from a packet
/// socket inside the container's network namespace. Returns TC_ACT_UNSPEC
/// (TCX_NEXT) otherwise, so other programs on the device still run.
#[classifier]
pub fn kp_isolate_tc(ctx: TcContext) -> i32 {
    try_tc(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

fn try_tc(ctx: &TcContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(TC_ACT_UNSPEC)?;
    if cfg.isolated_targets == 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: reading the device index from the skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: values copied out immediately.
    let Some(cgid) = (unsafe { NETDEVS.get(&ifindex) }).copied() else { return Ok(TC_ACT_UNSPEC) };
    // SAFETY: as above.
    let isolated = unsafe { TARGETS.get(&cgid) }.is_some_and(|s| s.level >= level::ISOLATE);
    if isolated {
        targets::count(counter::ISOLATE_TC_DROPS);
        return Ok(TC_ACT_SHOT as i32);
    }
    Ok(TC_ACT_UNSPEC)
}

/// sock_addr verdict for the current task: 1 allow, 0 refuse (EPERM).
#[inline(always)]
fn addr_verdict() -> i32 {
    let Some(cfg) = targets::config() else { return 1 };
    if cfg.isolated_targets != 0 && isolated(targets::of_current(cfg.depth_mask)) {
        targets::count(counter::ISOLATE_ADDR_DENIALS);
        return 0;
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn kp_isolate_connect4(_ctx: SockAddrContext) -> i32 {
    addr_verdict()
}

#[cgroup_sock_addr(connect6)]
pub fn kp_isolate_connect6(_ctx: SockAddrContext) -> i32 {
    addr_verdict()
}

#[cgroup_sock_addr(sendmsg4)]
pub fn kp_isolate_sendmsg4(_ctx: SockAddrContext) -> i32 {
    addr_verdict()
}

#[cgroup_sock_addr(sendmsg6)]
pub fn kp_isolate_sendmsg6(_ctx: SockAddrContext) -> i32 {
    addr_verdict()
}

#[cgroup_sock(sock_create)]
pub fn kp_isolate_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the kernel-provided bpf_sock context.
    let ty = unsafe { (*ctx.sock).type_ };
    if ty != SOCK_RAW {
        return 1;
    }
    let Some(cfg) = targets::config() else { return 1 };
    if cfg.isolated_targets != 0 && isolated(targets::of_current(cfg.depth_mask)) {
        targets::count(counter::ISOLATE_SOCK_DENIALS);
        return 0;
    }
    1
}

/// LSM verdict for the current task: 0 allow, -EPERM refuse. Runs on every
/// socket operation of the host: returns after one array lookup while no
/// target is isolated.
#[inline(always)]
fn lsm_verdict() -> i32 {
    let Some(cfg) = targets::config() else { return 0 };
    if cfg.isolated_targets != 0 && isolated(targets::of_current(cfg.depth_mask)) {
        targets::count(counter::ISOLATE_LSM_DENIALS);
        return -EPERM;
    }
    0
}

/// security_socket_create(family, type, protocol, kern): refuse every
/// non-IP family (unix, packet, netlink, ...) for user-requested sockets.
#[lsm(hook = "socket_create")]
pub fn kp_isolate_lsm_socket_create(ctx: LsmContext) -> i32 {
    // Argument slots follow the hook's signature; the slot after the last
    // argument holds the previous LSM program's return value.
    let (family, kern, prev): (i32, i32, i32) = (ctx.arg(0), ctx.arg(3), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if kern != 0 || family == AF_INET || family == AF_INET6 {
        return 0;
    }
    lsm_verdict()
}

/// security_socket_connect: refuse connects of any family (unix included).
#[lsm(hook = "socket_connect")]
pub fn kp_isolate_lsm_socket_connect(ctx: LsmContext) -> i32 {
    // Slot 3 (after the 3 arguments) is the previous program's return value.
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    lsm_verdict()
}

/// security_socket_sendmsg: cuts established connections of every family,
/// including unix sockets the cgroup skb hooks never see.
#[lsm(hook = "socket_sendmsg")]
pub fn kp_isolate_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    // socket_sendmsg has 3 arguments; slot 3 is the previous return value.
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    lsm_verdict()
}

/// security_socket_recvmsg: nothing received from outside either.
#[lsm(hook = "socket_recvmsg")]
pub fn kp_isolate_lsm_socket_recvmsg(ctx: LsmContext) -> i32 {
    // socket_recvmsg has 4 arguments; slot 4 is the previous return value.
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    lsm_verdict()
}
