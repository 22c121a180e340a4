//! The trail's network hooks on the agent side (kernel side:
//! killpath-ebpf/src/trail/net.rs). The flow counters and CONNECT events
//! come from the per-target cgroup programs isolate attaches anyway; this
//! attaches the one host-wide program, raw_tracepoint inet_sock_set_state
//! (LISTEN, ACCEPT), and hands it the struct offsets it follows from a
//! socket to its cgroup and addresses. Its cost outside recording targets:
//! one array read per TCP state change on the host (a handful per
//! connection), nothing per packet or per syscall.
use std::path::Path;

use aya::{maps::Array, Ebpf};
use killpath_common::trail_net::{programs, NetOffsets, OFFSETS};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    kernel::{
        btf::offset,
        object::{attach_raw_tracepoint, typed},
    },
};

/// The offsets from this kernel's BTF, or why they cannot be had.
pub fn offsets() -> std::result::Result<NetOffsets, String> {
    let btf = crate::kernel::btf::vmlinux()?;
    // __sk_common is struct sock's first member; read its offset anyway.
    let common = offset(btf, "sock", "__sk_common")?;
    let c = |f: &str| offset(btf, "sock_common", f).map(|o| common + o);
    Ok(NetOffsets {
        // Linux 5.15+: struct sock_cgroup_data { struct cgroup *cgroup; ... }.
        sk_cgroup: offset(btf, "sock", "sk_cgrp_data")? + offset(btf, "sock_cgroup_data", "cgroup")?,
        skc_daddr: c("skc_daddr")?,
        skc_rcv_saddr: c("skc_rcv_saddr")?,
        skc_dport: c("skc_dport")?,
        skc_num: c("skc_num")?,
        skc_family: c("skc_family")?,
        skc_v6_daddr: c("skc_v6_daddr")?,
        skc_v6_rcv_saddr: c("skc_v6_rcv_saddr")?,
        valid: 1,
    })
}

/// Attaches the LISTEN/ACCEPT program (unless pinned already) and fills
/// its offsets. Returns why LISTEN and ACCEPT are not recorded here, if
/// they are not (the flows and CONNECT events do not depend on it).
pub fn attach(ebpf: &mut Ebpf, gen: &Path, attached_now: &mut Vec<&'static str>) -> Result<Option<String>> {
    let o = match offsets() {
        Ok(o) => o,
        Err(e) => {
            warn!("trail: LISTEN and ACCEPT not recorded: {e}");
            return Ok(Some(e));
        }
    };
    match attach_raw_tracepoint(ebpf, gen, programs::SOCK_STATE, "inet_sock_set_state") {
        Ok(true) => {
            attached_now.push(programs::SOCK_STATE);
            info!(prog = programs::SOCK_STATE, "trail listen/accept hook attached and pinned");
        }
        Ok(false) => {}
        Err(e) => {
            let why = crate::error::chain(&e);
            warn!("trail: LISTEN and ACCEPT not recorded: {why}");
            return Ok(Some(why));
        }
    }
    // Taken after the program loaded (it holds the map from then on); the
    // map is pinned, so a restarted agent's write reaches the same map.
    let mut map: Array<_, NetOffsets> = typed(ebpf, OFFSETS)?;
    map.set(0, o, 0).map_err(Error::map(format!("updating {OFFSETS}")))?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_resolve_on_this_kernel_when_btf_exists() {
        if !std::path::Path::new(crate::kernel::btf::VMLINUX).exists() {
            return;
        }
        let o = super::offsets().expect("sock offsets");
        // Stable since forever: skc_daddr first, skc_num after skc_dport.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_num, o.skc_dport + 2);
        assert!(o.sk_cgroup > o.skc_v6_rcv_saddr);
    }
}
