//! Tests: isolate (level 3). `killpath isolate NAME` cuts a target off from
//! everything outside it, enforced by the kernel; `restore --to LEVEL` lifts
//! it; `verify NAME` / `isolate --verify` probe every channel from inside.
//!
//! Real clients run inside the target (curl, nc, dig, ping, python3) against
//! real servers the test starts outside it; assertions are on the clients'
//! exit codes AND on what the servers observed.
//!
//! On a kernel without BPF LSM (the host) the unix, packet, netlink, vsock
//! and tun-fd channels stay OPEN by design, and every report must say so. Tests whose names start with
//! `lsm_` need BPF LSM and run in the VM (`cargo xtask test --vm-only`).
//!
//! One file per feature; `clients` (real clients inside a target against
//! servers outside it), `report` (the catalog and verify tables) and
//! `programs` (what bpftool sees) hold what several of them use.
mod clients;
mod programs;
mod report;

mod channels;
mod established;
mod lsm;
mod nested;
mod netdev;
mod refusals;
mod tun;
mod restart;
mod time_to_effect;
mod verify;

use std::{
    path::Path,
    process::Output,
    sync::atomic::{AtomicU64, Ordering},
};

use serde_json::Value;

use crate::{
    harness::Agent,
    support::{
        cgroup::in_cgroup_within,
        process::{outside_within, show},
        status::{lsm_attached, target_row},
    },
};

/// Every channel `verify` reports, in its order.
const VERIFY_CHANNELS: &[&str] = &["tcp4", "tcp6", "udp", "dns", "icmp", "unix", "packet", "netlink", "vsock", "xdp", "tun", "established-tcp", "tun-fd"];

/// Every channel of the isolation catalog.
const CATALOG: &[&str] =
    &["tcp4", "tcp6", "udp", "dns", "icmp", "established-tcp", "loopback", "unix", "packet", "netlink", "vsock", "xdp", "tun", "tun-fd"];

/// How long a client may run inside or outside a target before it is
/// SIGKILLed.
const CLIENT_LIMIT_S: u32 = 15;

/// Runs `cmd` to completion inside cgroup `cg` (see [`in_cgroup_within`]),
/// bounded by `timeout -s KILL 15`.
fn in_cgroup(cg: &Path, cmd: &[&str]) -> Output {
    in_cgroup_within(CLIENT_LIMIT_S, cg, cmd)
}

/// Runs `cmd` to completion inside target `name`'s cgroup.
fn in_target(agent: &Agent, name: &str, cmd: &[&str]) -> Output {
    in_cgroup(agent.target_cgroup(name).path(), cmd)
}

/// A client run from the test's own cgroup (outside every target).
fn outside(cmd: &[&str]) -> Output {
    outside_within(CLIENT_LIMIT_S, cmd)
}

/// A unique marker for one client call.
fn marker(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("kp-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// The channels this kernel cannot cut without BPF LSM: unix, packet,
/// netlink and vsock sockets (no cgroup hook sees them), and a tun fd
/// opened before the isolation (the cgroup device hook fires at open only).
fn expected_open(agent: &Agent) -> Vec<&'static str> {
    if lsm_attached(agent) {
        vec![]
    } else {
        vec!["unix", "packet", "netlink", "vsock", "tun-fd"]
    }
}

/// `killpath --json ARGS` without asserting success: (exit success, JSON).
fn json_any(agent: &Agent, args: &[&str]) -> (Output, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = agent.kp(&a);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("killpath {args:?}: bad JSON ({e}): {}\nagent log:\n{}", show(&out), agent.log_text()));
    (out, v)
}

fn level_of(agent: &Agent, name: &str) -> (Value, Value) {
    let r = target_row(agent, name).unwrap_or_else(|| panic!("status no longer lists {name}"));
    (r["level"].clone(), r["kernel_level"].clone())
}

fn assert_level(agent: &Agent, name: &str, level: &str, ctx: &str) {
    let (l, k) = level_of(agent, name);
    assert_eq!((l.as_str(), k.as_str()), (Some(level), Some(level)), "{ctx}: {name} must be {level} in the registry and in the kernel map");
}
