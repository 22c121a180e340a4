//! BPF LSM socket hooks (host-wide, where the kernel has BPF LSM): what
//! the cgroup hooks cannot see — unix-domain sockets, packet sockets, and
//! send/receive on sockets opened before the isolation. socket_create and
//! socket_connect also enforce degrade's `net.raw` / `net.unix`
//! (`degrade/connect.rs`): one program per hook serves both levels.
//!
//! Argument slots follow each hook's signature; the slot after the last
//! argument holds the previous LSM program's return value, which is passed
//! on unchanged when it refuses.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::counter;

use killpath_common::level;

use crate::{
    abi::{AF_INET, AF_INET6, EPERM},
    audit,
    degrade::{self, Detail, Origin},
    targets,
};

/// LSM verdict for the current task: 0 allow, -EPERM refuse. Runs on every
/// socket operation of the host: returns after one array lookup while no
/// target is isolated or audited. A target that audits isolation has the
/// would-be refusal counted and sampled, and is allowed.
#[inline(always)]
pub(super) fn lsm_verdict() -> i32 {
    let Some(cfg) = targets::config() else { return 0 };
    if cfg.isolated_targets == 0 && cfg.audited_targets == 0 {
        return 0;
    }
    let Some((id, st)) = targets::of_current_with_id(cfg.depth_mask) else { return 0 };
    if st.level >= level::ISOLATE {
        targets::count(counter::ISOLATE_LSM_DENIALS);
        return -EPERM;
    }
    audit::isolation(id, &st, counter::ISOLATE_LSM_DENIALS, Detail { label: degrade::label(b"socket operation"), ..Detail::default() }, Origin::Task);
    0
}

/// security_socket_create(family, type, protocol, kern): isolation refuses
/// every non-IP family (unix, packet, netlink, ...); degrade refuses packet
/// and raw sockets (`net.raw`) and unix sockets (`net.unix`).
#[lsm(hook = "socket_create")]
pub fn kp_isolate_lsm_socket_create(ctx: LsmContext) -> i32 {
    let (family, ty, kern, prev): (i32, i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(3), ctx.arg(4));
    if prev != 0 {
        return prev;
    }
    if kern != 0 {
        return 0;
    }
    // Level 3.
    if family != AF_INET && family != AF_INET6 && lsm_verdict() != 0 {
        return -EPERM;
    }
    // Level 2.
    degrade::connect::lsm_socket_create(family, ty)
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
    // Level 3.
    if lsm_verdict() != 0 {
        // The cgroup connect hook will not run: the trail records it here.
        crate::trail::net::lsm_connect_refused(ctx.arg(0), ctx.arg(1));
        return -EPERM;
    }
    // Level 2.
    degrade::connect::lsm_socket_connect(&ctx)
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
