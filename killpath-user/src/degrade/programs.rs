//! Degrade's host-wide BPF LSM hooks (one program per hook, listed in
//! `killpath_common::programs::DEGRADE_LSM`). They run for every task on
//! the host and return at once for tasks outside degraded targets (the
//! `degraded_targets` switch in `KP_GUARD_CONFIG`). net.connect and the
//! raw-IP part of net.raw do not need them: they are refused by the
//! per-target cgroup hooks that `isolate::programs` attaches (sock_addr,
//! sock_create, skb egress); packet sockets are refused by isolate's LSM
//! socket_create hook.
use std::path::Path;

use aya::{Btf, Ebpf};
use killpath_common::programs;
use tracing::info;

use crate::{error::Result, kernel::object};

/// Loads, attaches and pins degrade's LSM hooks. The caller has checked
/// that a BPF LSM hook really runs here (`kernel::probe::lsm_runs`).
pub fn attach_lsm(ebpf: &mut Ebpf, btf: &Btf, gen: &Path, loaded: &mut Vec<&'static str>) -> Result<()> {
    for (name, hook) in programs::DEGRADE_LSM {
        if object::attach_lsm(ebpf, btf, gen, name, hook)? {
            loaded.push(name);
            info!(hook, "degrade LSM hook attached and pinned");
        }
    }
    Ok(())
}
