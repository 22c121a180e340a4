//! Tests: degrade (level 2). `killpath degrade NAME --revoke CAP[,CAP...]`
//! takes capabilities away from a running target, kernel-enforced, with
//! allow-lists; `restore --grant CAP` / `--to LEVEL` gives them back. Every
//! refusal is counted exactly and sampled (rate-limited) onto the event
//! stream; every degrade step raises an alert (journal, `killpath events`,
//! the operator's hook).
//!
//! Real clients run inside the target (curl, python3) against real servers
//! the test starts outside it; errnos are read from python, which reports
//! exactly what the syscall returned.
//!
//! On a kernel without BPF LSM (the host) only `net.connect` (cgroup
//! sock_addr, sock_create and skb egress hooks) and `net.raw` (raw IP
//! sockets at cgroup sock_create; packet sockets reported open) are
//! enforceable. Tests whose names start with `lsm_` need BPF LSM
//! and run in the VM (`cargo xtask test --vm-only`): there a long-lived
//! python helper inside the target performs each operation on request (read
//! from a FIFO), since with `exec` or `fork` revoked no new helper could be
//! started inside it.
//!
//! One file per feature; `clients` (connects and curl from inside a
//! target), `events` (a `killpath events` subscriber) and `helper` (the
//! long-lived operation helper) hold what several of them use.
mod clients;
pub(crate) mod events;
mod helper;

mod alerts;
mod capabilities;
mod denials;
mod lsm;
mod nested;
mod net_connect;
mod restart;
mod side_doors;

use std::{path::Path, process::Output};

use serde_json::Value;

use crate::{
    harness::Agent,
    support::{
        cgroup::in_cgroup_within,
        process::{outside_within, show, text},
        status::{strs, target_row},
    },
};

/// The capability catalog, in its order.
const CAPS: &[&str] = &["net.connect", "net.listen", "net.raw", "net.unix", "fs.write", "exec", "fork", "signal", "ptrace", "mount", "bpf", "module", "setid"];

/// Capabilities whose hooks follow kernel pointers (offsets from the
/// kernel's BTF): with BPF LSM, enforceable only if the BTF has the fields.
const BTF_CAPS: &[&str] = &["fs.write", "signal"];

const EPERM: i64 = 1;

const ECONNREFUSED: i64 = 111;

/// How long a client may run inside or outside a target before it is
/// SIGKILLed (the VM is slow).
const CLIENT_LIMIT_S: u32 = 60;

/// Runs `cmd` to completion inside cgroup `cg` (see [`in_cgroup_within`]),
/// bounded by `timeout -s KILL 60`.
fn in_cgroup(cg: &Path, cmd: &[&str]) -> Output {
    in_cgroup_within(CLIENT_LIMIT_S, cg, cmd)
}

/// A client run from the test's own cgroup (outside every target).
fn outside(cmd: &[&str]) -> Output {
    outside_within(CLIENT_LIMIT_S, cmd)
}

/// The status row of `name`.
fn row(agent: &Agent, name: &str) -> Value {
    target_row(agent, name).unwrap_or_else(|| panic!("status does not list {name}"))
}

/// `denials.<cap>.total` of `name` (0 when never denied).
fn denials(agent: &Agent, name: &str, cap: &str) -> u64 {
    let r = row(agent, name);
    match &r["denials"][cap] {
        Value::Null => 0,
        d => d["total"].as_u64().unwrap_or_else(|| panic!("denials.{cap} without a total: {r}")),
    }
}

/// Asserts level, revoked capabilities and allow-list of `name` in status,
/// in the registry and in the kernel map.
fn assert_state(agent: &Agent, name: &str, level: &str, revoked: &[&str], allow: &[&str], ctx: &str) {
    let r = row(agent, name);
    assert_eq!(r["level"], level, "{ctx}: level: {r}");
    assert_eq!(r["kernel_level"], level, "{ctx}: the kernel map agrees: {r}");
    assert_eq!(strs(&r["revoked"]), revoked, "{ctx}: revoked capabilities: {r}");
    assert_eq!(strs(&r["allow_connect"]), allow, "{ctx}: allow-list: {r}");
}

/// `killpath ARGS` must fail, saying each of `needles` on stderr.
fn assert_fails(agent: &Agent, args: &[&str], needles: &[&str]) {
    let out = agent.kp(args);
    assert!(!out.status.success(), "killpath {args:?} must fail: {}", show(&out));
    let err = text(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "killpath {args:?}: the error should say {n:?}: {}", show(&out));
    }
}
