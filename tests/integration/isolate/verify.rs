//! `verify NAME` and `isolate --verify`: every channel probed from inside
//! the target, and the open ones named the same way by the verify table,
//! the catalog, status and probe.
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    assert_level, expected_open, json_any,
    report::{assert_catalog, assert_verify, row},
    VERIFY_CHANNELS,
};
use crate::{
    harness::{wait_until, Agent},
    support::{
        net::ipv6_loopback,
        process::{run_bg, show, text},
        status::strs,
    },
};

/// `isolate --verify` on a kernel without BPF LSM: every cgroup-hook channel
/// is cut, unix and packet are OPEN (and say BPF LSM is needed), the command
/// exits non-zero, and the catalog, status and probe all name the same open
/// channels; nothing claims a cut that is not enforced.
#[test]
fn isolate_verify_reports_each_channel_and_names_the_open_ones() {
    let Some(agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let _run = run_bg(&agent, "box", &["sleep", "1000"], 1);
    let (out, r) = json_any(&agent, &["isolate", "box", "--verify"]);
    eprintln!("isolate --verify: {r}");
    assert_eq!(out.status.success(), open.is_empty(), "exit status must be non-zero iff some channel is OPEN: {}", show(&out));
    assert_eq!(r["level"], "isolate", "{r}");
    assert_catalog(&r, &open);
    assert_verify(&r["verify"], &open, "cut", Some("BPF LSM"));
    for ch in ["tcp4", "udp", "dns", "icmp"] {
        let d = row(&r["verify"], ch)["detail"].as_str().unwrap_or("").to_owned();
        assert!(d.contains("Operation not permitted"), "{ch} is refused by the kernel with EPERM: {d}");
    }
    // Cross-check catalog and verify: every channel the catalog calls
    // enforced was found cut, every one it calls open was found OPEN.
    for c in r["channels"].as_array().unwrap() {
        let ch = c["channel"].as_str().unwrap();
        if ch == "loopback" || (ch == "tcp6" && !ipv6_loopback()) {
            continue;
        }
        let want = if c["enforced"] == true { "cut" } else { "OPEN" };
        assert_eq!(row(&r["verify"], ch)["result"], want, "catalog and probe disagree on {ch}: {c}");
    }
    // status (JSON and human) names the same open channels.
    let t = agent.json(&["status", "box"]);
    let trow = &t["targets"][0];
    assert_eq!(trow["level"], "isolate", "{t}");
    assert_eq!(trow["kernel_level"], "isolate", "{t}");
    assert_eq!(trow["isolation_hooks_attached"], true, "{t}");
    assert_eq!(strs(&trow["open_channels"]), open, "status names the open channels: {t}");
    let human = text(&agent.kp(&["status"]).stdout);
    if open.is_empty() {
        assert!(!human.contains("OPEN"), "{human}");
    } else {
        assert!(human.contains("OPEN on this kernel: unix, packet"), "status says what stays open: {human}");
    }
    // probe: the isolate level names them too.
    let p = agent.json(&["probe"]);
    let lvl = p["levels"].as_array().expect("levels").iter().find(|l| l["level"] == "isolate").unwrap_or_else(|| panic!("no isolate level in probe: {p}"));
    assert_eq!(lvl["enforceable"], true, "{lvl}");
    let detail = lvl["detail"].as_str().unwrap_or("");
    if open.is_empty() {
        assert!(!detail.contains("OPEN"), "{lvl}");
    } else {
        let (_, tail) = detail.split_once("OPEN").unwrap_or_else(|| panic!("probe must say what stays OPEN: {lvl}"));
        assert!(tail.contains("unix") && tail.contains("packet") && tail.contains("BPF LSM"), "{lvl}");
        for ch in ["tcp4", "tcp6", "udp", "dns", "icmp"] {
            assert!(!tail.contains(ch), "probe lists {ch} as open: {lvl}");
        }
    }
    // Only the target: the verify probes left nothing behind in it.
    let cg = agent.target_cgroup("box");
    assert!(wait_until(Duration::from_secs(3), || cg.procs_recursive() == vec![_run.pid()]).is_some(), "probes left in the target: {:?}", cg.procs_recursive());
}

/// `isolate --verify` on a target that is already isolated (e.g. isolated
/// first, verification wanted after): still a verify table, not an error.
/// The established-connection probe cannot be opened any more, so that row
/// is "skipped" (or "cut"), never a failure of the whole command.
#[test]
fn isolate_verify_on_isolated_target_still_verifies() {
    let Some(agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let _run = run_bg(&agent, "again", &["sleep", "1000"], 1);
    agent.json(&["isolate", "again"]);
    let t0 = Instant::now();
    let out = agent.kp(&["--json", "isolate", "again", "--verify"]);
    eprintln!("second isolate --verify took {} ms: {}", t0.elapsed().as_millis(), show(&out));
    assert!(!text(&out.stderr).contains("never connected"), "re-verifying an isolated target must not fail on the established-connection probe: {}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON result ({e}): {}", show(&out)));
    assert_eq!(out.status.success(), open.is_empty(), "{}", show(&out));
    assert_catalog(&r, &open);
    let est = row(&r["verify"], "established-tcp")["result"].as_str().unwrap_or("").to_owned();
    assert!(est == "skipped" || est == "cut", "established-tcp: {r}");
    assert_verify(&r["verify"], &open, &est, Some("BPF LSM"));
    assert_level(&agent, "again", "isolate", "after the second isolate");
}

/// `verify NAME` before any isolation: the probes really get out, so every
/// channel is OPEN and the command exits non-zero. Nothing changes.
#[test]
fn verify_before_isolation_reports_every_channel_open() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "free", &["sleep", "1000"], 1);
    let (out, r) = json_any(&agent, &["verify", "free"]);
    eprintln!("verify: {r}");
    assert!(!out.status.success(), "OPEN channels make verify exit non-zero: {}", show(&out));
    assert_eq!(r["level"], "normal", "{r}");
    let all: Vec<&str> = VERIFY_CHANNELS.iter().copied().filter(|c| *c != "established-tcp" && *c != "tun-fd").collect();
    assert_verify(&r["verify"], &all, "skipped", None);
    // verify is not an action on the target.
    assert_level(&agent, "free", "normal", "after verify");
    let cg = agent.target_cgroup("free");
    assert!(wait_until(Duration::from_secs(3), || cg.procs_recursive() == vec![run.pid()]).is_some(), "probes left in the target: {:?}", cg.procs_recursive());
    // The human table says the same.
    let out = agent.kp(&["verify", "free"]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("OPEN channels: tcp4"), "{}", show(&out));
}
