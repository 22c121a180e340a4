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
//! Each program reads the target's level from the map, so isolating is one
//! map update.
//!
//! One program per hook: several of these programs also enforce other
//! levels on the same hook — throttle's egress policer
//! (`throttle/egress.rs`) and `net` deny mode (`throttle/syscalls.rs`),
//! and degrade's network capabilities (`degrade/connect.rs`). Each such
//! program says so where it is defined.
use killpath_common::{level, TargetState};

mod lsm;
mod skb;
mod sock;
mod tc;

#[inline(always)]
fn isolated(state: Option<TargetState>) -> bool {
    state.is_some_and(|s| s.level >= level::ISOLATE)
}
