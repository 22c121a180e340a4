//! Bad input and the confinement: clear errors, the agent stays up, and a
//! task inside the target cannot renew its own lease.
use std::time::Duration;

use super::lease;
use crate::{
    harness::{wait_until, Agent},
    support::process::run_bg,
};

fn refused(agent: &Agent, args: &[&str], needle: &str) {
    let out = agent.kp(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in: {err}");
}

#[test]
fn lease_bad_input_refused() {
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    refused(&agent, &["lease", "t", "--ttl", "0s", "--on-expiry", "isolate"], "more than 0");
    refused(&agent, &["lease", "t", "--ttl", "10x", "--on-expiry", "isolate"], "unit");
    refused(&agent, &["lease", "nope", "--ttl", "1s", "--on-expiry", "isolate"], "unknown target");
    for lvl in ["throttle", "degrade", "normal"] {
        refused(&agent, &["lease", "t", "--ttl", "1s", "--on-expiry", lvl], "isolate or stop only");
    }
    refused(&agent, &["lease", "t", "--ttl", "1s", "--on-expiry", "bogus"], "unknown level");
    refused(&agent, &["lease", "t", "--renew"], "no lease to renew");
    refused(&agent, &["lease", "t", "--cancel"], "no lease to cancel");
    refused(&agent, &["lease", "t"], "--ttl");
    refused(&agent, &["lease", "t", "--ttl", "1s"], "--on-expiry");
    // Nothing armed, agent up.
    assert_eq!(lease(&agent, "t"), serde_json::Value::Null);
    assert!(agent.json(&["status"])["targets"].is_array());
}

#[test]
fn lease_probe_reports_the_kernel_tick() {
    let Some(agent) = Agent::start() else { return };
    let r = agent.json(&["probe"]);
    let row = r["levels"].as_array().into_iter().flatten().find(|l| l["level"] == "dead-man lease").cloned().unwrap_or_default();
    let perf = r["program_types"].as_array().into_iter().flatten().find(|p| p["program_type"] == "perf_event").cloned().unwrap_or_default();
    // Both the host (6.x) and the VM (6.1) have perf_event bpf_links (5.15+).
    assert_eq!(perf["available"], true, "{perf}");
    assert_eq!(row["enforceable"], true, "{row}");
    assert!(row["detail"].as_str().unwrap_or("").contains("without the agent"), "{row}");
}

#[test]
fn lease_renew_refused_from_inside_the_target() {
    let Some(agent) = Agent::start() else { return };
    let out = agent.dir.path().join("inside.out");
    let go = agent.dir.path().join("go");
    // Root inside the target waits for its lease, then tries to renew it.
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; {bin} lease self --renew > {o} 2>&1; echo rc=$? >> {o}; sleep 1000",
        go = go.display(),
        bin = crate::harness::BIN,
        o = out.display()
    );
    let _w = run_bg(&agent, "self", &["sh", "-c", &script], 1);
    agent.json(&["lease", "self", "--ttl", "20s", "--on-expiry", "isolate"]);
    std::fs::write(&go, "").expect("go file");
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(10), || text().contains("rc=")).is_some(), "the renewal inside never finished: {}", text());
    assert!(!text().contains("rc=0"), "a task inside the target renewed its own lease: {}", text());
    assert!(text().contains("inside target"), "{}", text());
    let l = lease(&agent, "self");
    assert_eq!(l["renewals"], 0, "{l}");
    let refusals = agent.journal().into_iter().filter(|e| e["action"] == "refused" && e["params"]["cmd"] == "lease").count();
    assert!(refusals >= 1, "the refusal is not journaled");
    agent.json(&["lease", "self", "--cancel"]);
}
