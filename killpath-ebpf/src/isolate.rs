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
use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::lpm_trie::Key};
use killpath_common::{cap, counter, level, ConnectAllow, CONNECT_ALLOW_FIXED_BITS};

use crate::{
    degrade,
    maps::{CONNECT_ALLOW, NETDEVS, TARGETS},
    targets,
    throttle::{self, Verdict},
};

const EPERM: i32 = 1;
const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_PACKET: i32 = 17;
const SOCK_RAW: u32 = 3;

/// cgroup_skb return codes.
const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
/// Egress only (Linux 5.4): drop, and tell the sender it is congested.
const SKB_DROP_CN: i32 = 2;
/// Egress only: pass, and tell the sender it is congested (TCP enters CWR).
const SKB_PASS_CN: i32 = 3;
const EAGAIN: i32 = 11;

#[inline(always)]
fn isolated(state: Option<killpath_common::TargetState>) -> bool {
    state.is_some_and(|s| s.level >= level::ISOLATE)
}

#[cgroup_skb]
pub fn kp_isolate_skb(ctx: SkBuffContext) -> i32 {
    try_skb(&ctx).unwrap_or(SKB_PASS)
}

/// Egress: isolation as on ingress, then the level-1 byte/packet policer.
#[cgroup_skb(egress)]
pub fn kp_egress_skb(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or(SKB_PASS)
}

fn try_egress(ctx: &SkBuffContext) -> Result<i32, i32> {
    let cfg = targets::config().ok_or(SKB_PASS)?;
    if isolated_skb(&cfg, ctx) {
        return Ok(SKB_DROP);
    }
    if cfg.egress_throttled == 0 {
        return Ok(SKB_PASS);
    }
    Ok(match throttle::egress(cfg.throttle_depth_mask, ctx.skb.skb) {
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
#[inline(always)]
fn isolated_skb(cfg: &killpath_common::GuardConfig, ctx: &SkBuffContext) -> bool {
    if cfg.isolated_targets != 0 && isolated(targets::of_skb(cfg.depth_mask, ctx.skb.skb)) {
        targets::count(counter::ISOLATE_SKB_DROPS);
        return true;
    }
    false
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
    if cfg.isolated_targets == 0 && cfg.egress_throttled == 0 {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: reading the device index from the skb context.
    let (ifindex, iif, len, segs) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
    // SAFETY: values copied out immediately.
    let Some(cgid) = (unsafe { NETDEVS.get(&ifindex) }).copied() else { return Ok(TC_ACT_UNSPEC) };
    // Ingress on the host side of the veth is the workload's egress.
    if cfg.egress_throttled != 0 && iif == ifindex && throttle::egress_tc(cgid, len as u64, segs as u64) == Verdict::Refuse {
        return Ok(TC_ACT_SHOT as i32);
    }
    // SAFETY: as above.
    let isolated = unsafe { TARGETS.get(&cgid) }.is_some_and(|s| s.level >= level::ISOLATE);
    if isolated {
        targets::count(counter::ISOLATE_TC_DROPS);
        return Ok(TC_ACT_SHOT as i32);
    }
    Ok(TC_ACT_UNSPEC)
}

/// sock_addr verdict for the current task: 1 allow, 0 refuse (EPERM).
/// Isolation refuses everything; a revoked `net.connect` refuses what the
/// target's `--allow-connect` list does not match.
#[inline(always)]
fn addr_verdict(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(cfg) = targets::config() else { return 1 };
    if cfg.isolated_targets == 0 && cfg.degraded_targets == 0 && cfg.syscall_throttled == 0 {
        return 1;
    }
    let Some((id, st)) = targets::of_current_with_id(cfg.depth_mask) else { return 1 };
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_ADDR_DENIALS);
        return 0;
    }
    if cfg.syscall_throttled != 0 && throttle::net_denied(cfg.throttle_depth_mask) {
        // SAFETY: helper for cgroup programs (Linux 5.18): the call fails
        // with EAGAIN instead of the default EPERM.
        unsafe { aya_ebpf::helpers::bpf_set_retval(-EAGAIN) };
        return 0;
    }
    if st.revoked & cap::NET_CONNECT == 0 {
        return 1;
    }
    // SAFETY: the kernel-provided bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    if v6 {
        for i in 0..4 {
            addr[i * 4..i * 4 + 4].copy_from_slice(&sa.user_ip6[i].to_ne_bytes());
        }
    } else {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    let port_be = sa.user_port as u16;
    if allowed(id, port_be, addr) || allowed(id, 0, addr) {
        return 1;
    }
    let detail = degrade::Detail { family: if v6 { AF_INET6 as u32 } else { AF_INET as u32 }, port: u16::from_be(port_be) as u32, addr, name_ptr: 0 };
    degrade::deny(id, cap::NET_CONNECT.trailing_zeros(), detail);
    0
}

/// Longest-prefix match of (target, port, address) in the allow-list.
#[inline(always)]
fn allowed(id: u64, port_be: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(CONNECT_ALLOW_FIXED_BITS + 128, ConnectAllow { cgroup_id: id.to_ne_bytes(), port_be, _pad: 0, addr });
    CONNECT_ALLOW.get(&key).is_some()
}

#[cgroup_sock_addr(connect4)]
pub fn kp_isolate_connect4(ctx: SockAddrContext) -> i32 {
    let v = addr_verdict(&ctx, false);
    if v == 1 {
        throttle::pace_socket(ctx.sock_addr);
    }
    v
}

#[cgroup_sock_addr(connect6)]
pub fn kp_isolate_connect6(ctx: SockAddrContext) -> i32 {
    let v = addr_verdict(&ctx, true);
    if v == 1 {
        throttle::pace_socket(ctx.sock_addr);
    }
    v
}

#[cgroup_sock_addr(sendmsg4)]
pub fn kp_isolate_sendmsg4(ctx: SockAddrContext) -> i32 {
    addr_verdict(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn kp_isolate_sendmsg6(ctx: SockAddrContext) -> i32 {
    addr_verdict(&ctx, true)
}

#[cgroup_sock(sock_create)]
pub fn kp_isolate_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the kernel-provided bpf_sock context.
    let ty = unsafe { (*ctx.sock).type_ };
    if ty != SOCK_RAW {
        return 1;
    }
    let Some(cfg) = targets::config() else { return 1 };
    if cfg.isolated_targets == 0 && cfg.degraded_targets == 0 {
        return 1;
    }
    let Some((id, st)) = targets::of_current_with_id(cfg.depth_mask) else { return 1 };
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_SOCK_DENIALS);
        return 0;
    }
    if st.revoked & cap::NET_RAW != 0 {
        degrade::deny(id, cap::NET_RAW.trailing_zeros(), degrade::Detail::default());
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

/// security_socket_create(family, type, protocol, kern): isolation refuses
/// every non-IP family (unix, packet, netlink, ...); degrade refuses packet
/// and raw sockets (`net.raw`) and unix sockets (`net.unix`).
#[lsm(hook = "socket_create")]
pub fn kp_isolate_lsm_socket_create(ctx: LsmContext) -> i32 {
    // Argument slots follow the hook's signature; the slot after the last
    // argument holds the previous LSM program's return value.
    let (family, ty, kern, prev): (i32, i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(3), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if kern != 0 {
        return 0;
    }
    if family != AF_INET && family != AF_INET6 && lsm_verdict() != 0 {
        return -EPERM;
    }
    // Raw IP and packet sockets only: netlink sockets are SOCK_RAW too, and
    // `ip`, `ss` and getaddrinfo(AI_ADDRCONFIG) need them.
    let raw = family == AF_PACKET || ((family == AF_INET || family == AF_INET6) && (ty & 0xf) == SOCK_RAW as i32);
    if raw {
        if let Some(id) = degrade::revoked(cap::NET_RAW) {
            return degrade::deny(id, cap::NET_RAW.trailing_zeros(), degrade::Detail::default());
        }
    }
    if family == AF_UNIX {
        if let Some(id) = degrade::revoked(cap::NET_UNIX) {
            return degrade::deny(id, cap::NET_UNIX.trailing_zeros(), degrade::Detail::default());
        }
    }
    0
}

/// security_socket_connect(sock, address, addrlen): isolation refuses
/// connects of any family; `net.unix` refuses unix-socket connects (with
/// sockets created before the revocation, too).
#[lsm(hook = "socket_connect")]
pub fn kp_isolate_lsm_socket_connect(ctx: LsmContext) -> i32 {
    // Slot 3 (after the 3 arguments) is the previous program's return value.
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    if lsm_verdict() != 0 {
        return -EPERM;
    }
    if let Some(id) = degrade::revoked(cap::NET_UNIX) {
        let addr: *const u16 = ctx.arg(1);
        // SAFETY: bounded kernel read of sockaddr.sa_family.
        let family = unsafe { bpf_probe_read_kernel(addr) }.unwrap_or(0);
        if i32::from(family) == AF_UNIX {
            return degrade::deny(id, cap::NET_UNIX.trailing_zeros(), degrade::Detail::default());
        }
    }
    0
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
