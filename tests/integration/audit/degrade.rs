//! `degrade --revoke net.connect --audit` on the host: connects succeed
//! (the listener outside accepts them), the would-be denials equal the
//! connects made; then a real degrade refuses them.
use super::{denials, row, workload, would, Receivers, TCP_PAYLOAD};
use crate::{harness::Agent, support::process::run_bg};

const N: u32 = 7;

#[test]
fn audit_degrade_net_connect_counts_each_connect_then_real_degrade_refuses() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receivers::start();
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();

    let r = agent.json(&["degrade", "web", "--revoke", "net.connect", "--audit"]);
    assert_eq!((r["level"].as_str(), r["audit"]["capabilities"][0].as_str()), (Some("normal"), Some("net.connect")), "{r}");
    let human = String::from_utf8_lossy(&agent.kp(&["status", "web"]).stdout).into_owned();
    assert!(human.contains("AUDIT (not enforced): capabilities net.connect"), "{human}");
    assert!(agent.journal().iter().any(|e| e["action"] == "audit-degrade" && e["phase"] == "result" && e["outcome"] == "ok"), "journaled");

    let (ok, _, errs) = workload(&cg, &rx, N, 0);
    assert_eq!((ok, errs.as_str()), (N as u64, "[]"), "every connect succeeded");
    let want = (N as u64, N as u64 * TCP_PAYLOAD, 0, 0);
    assert_eq!(rx.wait_for(want), want, "the listener outside accepted every connection and read every byte");
    assert_eq!(would(&agent, "web", "net.connect"), N as u64, "one would-be denial per connect, exactly: {}", row(&agent, "web"));
    assert_eq!(denials(&agent, "web", "net.connect"), 0, "no real denial");

    // Real degrade: refused; counted as real denials, not as audit.
    let before = rx.counts();
    let r = agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    assert_eq!(r["level"], "degrade", "{r}");
    let (ok, _, errs) = workload(&cg, &rx, N, 0);
    assert_eq!(ok, 0, "refused ({errs})");
    assert_eq!(errs, "[1]", "EPERM only");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(rx.counts(), before, "listener flat after the real degrade");
    assert_eq!(denials(&agent, "web", "net.connect"), N as u64, "real denials counted");
    assert_eq!(would(&agent, "web", "net.connect"), N as u64, "audit count unchanged: enforcement wins");
    let st = row(&agent, "web");
    assert_eq!(st["audit"]["superseded_by_enforcement"]["capabilities"][0], "net.connect", "{st}");
}
