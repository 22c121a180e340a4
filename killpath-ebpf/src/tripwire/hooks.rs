//! The one call each hook makes: finds the target, charges its metrics.
//! Every function returns at once while no target has a rule.
use aya_ebpf::{
    bindings::__sk_buff,
    programs::{RawTracePointContext, SockAddrContext},
};
use killpath_common::{tripwire::metric, GuardConfig};

use super::{armed, charge, charge_dest, Dest};
use crate::targets;

/// cgroup_skb egress (`isolate/skb.rs`): bytes and packets. A GSO skb
/// carries several packets: counted as its segments, like the policer.
#[inline(always)]
pub fn skb(cfg: &GuardConfig, skb: *mut __sk_buff) {
    if !armed(cfg) {
        return;
    }
    let Some((id, _)) = targets::of_skb_with_id(cfg.depth_mask, skb) else { return };
    // SAFETY: skb is the program's context pointer.
    let (len, segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    charge(id, metric::EGRESS_BYTES, 0, len);
    charge(id, metric::EGRESS_PACKETS, 0, if segs == 0 { 1 } else { segs });
}

/// cgroup sock_addr connect4/6 and sendmsg4/6 (`isolate/sock.rs`): a
/// connect counts for `connects`; both count the address for
/// `destinations` (UDP senders name theirs at sendmsg).
#[inline(always)]
pub fn addr(cfg: &GuardConfig, ctx: &SockAddrContext, v6: bool, is_connect: bool) {
    if !armed(cfg) {
        return;
    }
    let Some((id, _)) = targets::of_current_with_id_global(cfg.depth_mask) else { return };
    if is_connect {
        charge(id, metric::CONNECTS, 0, 1);
    }
    // SAFETY: the kernel-provided bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let addr = if v6 { sa.user_ip6 } else { [sa.user_ip4, 0, 0, 0] };
    charge_dest(id, metric::DESTINATIONS, 0, 1, Some(Dest { addr, port: sa.user_port }));
}

/// The membership fork tracepoint (`members.rs`), for a marked task of
/// target `id`.
#[inline(always)]
pub fn fork(id: u64) {
    let Some(cfg) = targets::config() else { return };
    if armed(&cfg) {
        charge(id, metric::FORKS, 0, 1);
    }
}

/// The sys_exit raw tracepoint (`throttle/syscalls.rs`), attached while a
/// `syscalls` rule or a syscall ceiling exists: one syscall of the current
/// task, in its class (`arg` = class + 1; a rule with arg 0 counts all).
#[inline(always)]
pub fn syscall(cfg: &GuardConfig, ctx: &RawTracePointContext) {
    if !armed(cfg) {
        return;
    }
    let Some((id, _)) = targets::of_current_with_id(cfg.depth_mask) else { return };
    let Some((specific, ret)) = crate::throttle::syscalls::class_of(ctx) else { return };
    // The child's return from fork passes here too: counted once, in the parent.
    if specific == killpath_common::throttle::FORK && ret == 0 {
        return;
    }
    charge(id, metric::SYSCALLS, specific + 1, 1);
}

/// degrade's denial record (`degrade/mod.rs`): capability index `cap`.
#[inline(always)]
pub fn denial(id: u64, cap: u32) {
    let Some(cfg) = targets::config() else { return };
    if armed(&cfg) {
        charge(id, metric::DENIALS, cap + 1, 1);
    }
}
