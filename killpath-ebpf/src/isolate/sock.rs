//! cgroup sock_addr (connect4/6, sendmsg4/6) and cgroup sock_create
//! programs on the target's cgroup.
//!
//! One program per hook serves three levels. For an address, in this
//! order: isolate refuses everything (EPERM); throttle's `net` ceiling in
//! deny mode fails the call with EAGAIN (`throttle/syscalls.rs`); degrade's
//! `net.connect` refuses what the target's `--allow-connect` list does not
//! match (`degrade/connect.rs`). A connect that passes then gets throttle's
//! pacing rate (`throttle/egress.rs`). For a raw socket: isolate, then
//! degrade's `net.raw` / `net.connect`.
use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use killpath_common::{counter, level};

use crate::{
    abi::SOCK_RAW,
    audit::{self, Subject},
    degrade::{self, Detail, Origin},
    targets, throttle, trail, tripwire,
};
// The cgroup programs' verdicts (`abi`).
use crate::abi::{CGROUP_ALLOW as ALLOW, CGROUP_REFUSE as REFUSE};

#[cgroup_sock_addr(connect4)]
pub fn kp_isolate_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn kp_isolate_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn kp_isolate_sendmsg4(ctx: SockAddrContext) -> i32 {
    addr_hook(&ctx, false, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn kp_isolate_sendmsg6(ctx: SockAddrContext) -> i32 {
    addr_hook(&ctx, true, false)
}

/// connect: the address verdict, then, for an allowed connect, the
/// socket's pacing rate (level 1).
#[inline(always)]
fn connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let v = addr_hook(ctx, v6, true);
    if v == ALLOW {
        throttle::egress::pace_socket(ctx.sock_addr);
    }
    v
}

/// The verdict, then the trail's CONNECT event and flow (refused or not).
#[inline(always)]
fn addr_hook(ctx: &SockAddrContext, v6: bool, is_connect: bool) -> i32 {
    let v = addr_verdict(ctx, v6, is_connect);
    if let Some(cfg) = targets::config() {
        if v6 {
            trail::net::addr::<true>(&cfg, ctx, is_connect, v == REFUSE);
        } else {
            trail::net::addr::<false>(&cfg, ctx, is_connect, v == REFUSE);
        }
    }
    v
}

/// sock_addr verdict for the current task.
#[inline(always)]
fn addr_verdict(ctx: &SockAddrContext, v6: bool, is_connect: bool) -> i32 {
    let Some(cfg) = targets::config() else { return ALLOW };
    // Tripwires first (connects, destinations): a critical rule raises the
    // level on the crossing call, which the checks below then refuse.
    tripwire::addr(&cfg, ctx, v6, is_connect);
    if cfg.isolated_targets == 0 && cfg.degraded_targets == 0 && cfg.syscall_throttled == 0 && cfg.audited_targets == 0 {
        return ALLOW;
    }
    let Some((id, st)) = targets::of_current_with_id_global(cfg.depth_mask) else { return ALLOW };
    // Level 3 (and isolation in audit mode: counted, allowed).
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_ADDR_DENIALS);
        return REFUSE;
    }
    if cfg.audited_targets != 0 {
        let (addr, port_be) = degrade::connect::destination(ctx, v6);
        audit::isolation(id, &st, counter::ISOLATE_ADDR_DENIALS, degrade::connect::dest_detail(v6, addr, port_be), Origin::Task);
    }
    // Level 1, `net`: deny mode refuses, pace mode charges (classes.rs).
    if cfg.syscall_throttled != 0 && throttle::classes::net_verdict(cfg.throttle_depth_mask, ctx, is_connect) {
        return REFUSE;
    }
    // Level 2, `net.connect`.
    if degrade::connect::addr_allowed(ctx, v6, Subject::of(id, &st)) {
        ALLOW
    } else {
        REFUSE
    }
}

/// Raw sockets (ping, hand-made packets): refused by isolation, and by
/// degrade's `net.raw` and `net.connect`.
#[cgroup_sock(sock_create)]
pub fn kp_isolate_sock_create(ctx: SockContext) -> i32 {
    try_sock_create(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: ctx.sock is the kernel-provided bpf_sock context.
    let ty = unsafe { (*ctx.sock).type_ };
    if ty != SOCK_RAW {
        return Ok(ALLOW);
    }
    let cfg = targets::config().ok_or(ALLOW)?;
    if cfg.isolated_targets == 0 && cfg.degraded_targets == 0 && cfg.audited_targets == 0 {
        return Ok(ALLOW);
    }
    let (id, st) = targets::of_current_with_id_global(cfg.depth_mask).ok_or(ALLOW)?;
    // Level 3 (and isolation in audit mode: counted, allowed).
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_SOCK_DENIALS);
        return Ok(REFUSE);
    }
    // SAFETY: ctx.sock is the kernel-provided bpf_sock context.
    let family = unsafe { (*ctx.sock).family };
    audit::isolation(id, &st, counter::ISOLATE_SOCK_DENIALS, Detail { family, label: degrade::label(b"raw socket"), ..Detail::default() }, Origin::Task);
    // Level 2, `net.raw` and `net.connect` (this hook runs for AF_INET
    // and AF_INET6 only: inet_create / inet6_create).
    Ok(if degrade::connect::raw_socket_allowed(Subject::of(id, &st), family) { ALLOW } else { REFUSE })
}
