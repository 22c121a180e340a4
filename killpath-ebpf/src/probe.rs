//! Tiny programs that `killpath probe` loads, one per program type the
//! design needs, to learn what the running kernel really accepts.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, lsm, tracepoint},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, TcContext, TracePointContext},
};

use crate::maps::PROBE;

/// lsm/socket_create: counts its own invocations for the probing process, so
/// the probe can tell "loads and attaches" from "really runs" (an LSM
/// program attaches even where `bpf` is missing from the boot `lsm=` list,
/// but then never runs).
#[lsm(hook = "socket_create")]
pub fn kp_probe_lsm(_ctx: LsmContext) -> i32 {
    try_probe_lsm().unwrap_or(0)
}

fn try_probe_lsm() -> Result<i32, i32> {
    let state = PROBE.get_ptr_mut(0).ok_or(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: single-entry array value, pointer valid for the program's run.
    unsafe {
        if (*state).tgid == tgid {
            (*state).hits += 1;
        }
    }
    Ok(0)
}

#[cgroup_skb]
pub fn kp_probe_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect4)]
pub fn kp_probe_sock_addr(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock(sock_create)]
pub fn kp_probe_sock(_ctx: SockContext) -> i32 {
    1
}

#[classifier]
pub fn kp_probe_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[tracepoint]
pub fn kp_probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}
