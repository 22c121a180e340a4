//! Level 3, isolate: cut a target off from everything outside it.
//!
//! Cgroup hooks (attached to each target's cgroup when the target is
//! created, so only the target's own sockets pay for them):
//! - cgroup_skb ingress+egress drops every packet of the target's sockets,
//!   which cuts established connections too, not only new ones (`skb.rs`);
//! - cgroup sock_addr connect4/6 and sendmsg4/6 refuse new connections and
//!   UDP sends (DNS included) with EPERM, so the workload sees a clean
//!   error, and cgroup sock_create refuses raw sockets (ping, hand-made
//!   packets) (both in `sock.rs`).
//!
//! BPF LSM hooks (host-wide, where the kernel has BPF LSM) cover what cgroup
//! hooks cannot see: unix-domain sockets (a docker.sock-style control
//! socket), packet sockets, and send/receive on sockets opened before the
//! isolation (`lsm.rs`). TC on the host side of a target's veth covers
//! `isolate --netdev` (`tc.rs`).
//!
//! Devices and families that leave the target without an inet socket:
//! the cgroup device hook refuses opening /dev/net/tun, /dev/vhost-net and
//! /dev/vhost-vsock (`device.rs`), the cgroup setsockopt hook refuses
//! SOL_XDP options so no AF_XDP socket is set up (`sockopt.rs`); with BPF
//! LSM the tun_dev_* hooks and file_permission cut TUN/TAP devices and fds
//! opened before the isolation (`tun.rs`), and socket_create refuses
//! netlink, vsock and XDP sockets (`lsm.rs`).
//!
//! Each program reads the target's level from the map, so isolating is one
//! map update.
//!
//! One program per hook: several of these programs also enforce other
//! levels on the same hook — throttle's egress policer
//! (`throttle/egress.rs`) and `net` deny mode (`throttle/syscalls.rs`),
//! and degrade's network capabilities (`degrade/connect.rs`). Each such
//! program says so where it is defined.
use aya_ebpf::helpers::bpf_get_current_task;
use killpath_common::{audit, level, MAX_CGROUP_DEPTH};

use crate::{
    kcgroup,
    maps::{OFFSETS, TARGETS},
    targets,
};

mod device;
mod lsm;
mod skb;
mod sock;
mod sockopt;
mod tc;
pub mod tun;

/// Isolation of the current task's target, for the hooks that find it
/// from the task_struct.
pub(crate) enum Cut {
    /// Not isolated, nothing audited: allow.
    Open,
    /// Isolated: refuse.
    Refuse,
    /// Isolation audited (not in force) for the target with this id:
    /// count the would-be refusal, allow.
    Audit(u64),
}

/// The isolation of the current task's target, found from its task_struct
/// (task->cgroups->dfl_cgrp, its ancestors' kernfs ids; offsets from BTF)
/// rather than with bpf_get_current_ancestor_cgroup_id, which cgroup
/// device and sockopt programs only get from Linux 6.4 on. Open (allow)
/// when the offsets are unknown: `probe` reports that. An enclosing
/// isolated target wins over an audited one.
#[inline(always)]
fn current_task_cut() -> Cut {
    let Some(cfg) = targets::config() else { return Cut::Open };
    if cfg.isolated_targets == 0 && cfg.audited_targets == 0 {
        return Cut::Open;
    }
    let Some(o) = OFFSETS.get(0) else { return Cut::Open };
    if o.signal_valid == 0 {
        return Cut::Open;
    }
    // SAFETY: helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let Some(cgrp) = kcgroup::of_task(o, task) else { return Cut::Open };
    let cgrp_level = kcgroup::level(o, cgrp);
    // The innermost target and the union of the audit sets on the path.
    // Plain scalars updated on every match (no per-path copies), so the
    // verifier sees at most two states per depth: the loop stays within
    // its complexity limit.
    let mut audit_id = 0u64;
    let mut audit_bits = 0u32;
    let depths = targets::depths_up_to(cfg.depth_mask, cgrp_level);
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if depths & (1u32 << depth) != 0 {
            let id = kcgroup::ancestor_unchecked(o, cgrp, depth);
            // SAFETY: value copied out at once.
            if let Some(st) = unsafe { TARGETS.get(id) } {
                if st.depth == depth {
                    if st.level >= level::ISOLATE {
                        return Cut::Refuse;
                    }
                    audit_bits |= st.audit;
                    audit_id = id;
                }
            }
        }
        depth += 1;
    }
    if audit_bits & audit::ISOLATE != 0 {
        Cut::Audit(audit_id)
    } else {
        Cut::Open
    }
}
