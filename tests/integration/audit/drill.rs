//! `drill --audit`: degrade and isolate run in audit mode; the report says
//! what each would have refused, and a workload that connects outside the
//! whole time is never cut (it exits at its first failed connect; the
//! listener outside keeps counting).
use std::time::Duration;

use super::{row, Receivers};
use crate::{
    harness::{alive, wait_until, Agent},
    support::process::{py, run_bg, show},
};

/// Connects to 127.0.0.1:PORT every 20 ms, sends 10 bytes; exits 3 at the first failure.
const LOOP: &str = r#"
import socket, sys, time
while True:
    try:
        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)
        s.sendall(b'0123456789')
        s.close()
    except OSError:
        sys.exit(3)
    time.sleep(0.02)
"#;

#[test]
fn audit_drill_reports_would_be_refusals_and_never_cuts() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receivers::start();
    let port = rx.tcp_port.to_string();
    let job = run_bg(&agent, "job", &[py(), "-c", LOOP, &port], 1);
    assert!(wait_until(Duration::from_secs(10), || rx.counts().0 >= 5).is_some(), "the workload connects before the drill");

    let out = agent.kp(&["--json", "drill", "job", "--audit"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("drill report ({e}): {}", show(&out)));
    assert!(out.status.success(), "audit drill failed: {report:#}");
    let steps = report["steps"].as_array().expect("steps");
    let levels: Vec<&str> = steps.iter().filter_map(|s| s["level"].as_str()).collect();
    assert_eq!(levels, ["degrade (audit)", "isolate (audit)"], "{report:#}");
    let deg = &steps[0]["params"]["would_have_refused"];
    assert!(deg["net.connect"].as_u64().is_some_and(|n| n >= 1), "degrade would have refused the connects: {deg}");
    let iso = &steps[1]["params"]["would_have_refused"];
    assert!(iso["isolate.connects_and_sends"].as_u64().is_some_and(|n| n >= 1), "isolation would have refused connects: {iso}");

    // Never cut: the workload is alive (it exits at its first refused
    // connect) and the listener outside is still counting its connections.
    assert!(alive(job.pid()), "the workload was cut during the audit drill");
    let c = rx.counts().0;
    assert!(wait_until(Duration::from_secs(5), || rx.counts().0 >= c + 5).is_some(), "connections still arrive after the drill");
    let st = row(&agent, "job");
    assert_eq!((st["level"].as_str(), st["audit"]["active"].as_bool()), (Some("normal"), Some(false)), "the drill ended its audits: {st}");
    // Human report says AUDIT.
    let human = String::from_utf8_lossy(&agent.kp(&["drill", "job", "--audit"]).stdout).into_owned();
    assert!(human.contains("AUDIT (nothing enforced): would have refused"), "{human}");
}
