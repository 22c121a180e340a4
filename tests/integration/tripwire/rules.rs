//! Modes (throttle acts, degrade acts and alerts, isolate waits for
//! approval while a lower level applies, audit only records) and bad
//! rules (refused with an error naming the problem; the agent stays up; a
//! bad rule in the config file stops the agent from starting).
use std::time::Duration;

use serde_json::Value;

use super::{add, fired_records, gated, go, levels, py, tcp_sender, wait_fired, Receiver};
use crate::harness::{Agent, BIN};

/// Connects to the receiver ~100 times a second, one byte each: the
/// receiver's count is the number of connects that got through.
fn connect_loop(port: u16) -> String {
    format!("import socket,time\nwhile True:\n  try:\n    s=socket.create_connection(('127.0.0.1',{port}))\n    s.sendall(b'x')\n    s.close()\n  except OSError:\n    pass\n  time.sleep(0.01)\n")
}

#[test]
fn tripwire_modes_throttle_degrade_confirm_audit() {
    let Some(agent) = Agent::start() else { return };
    let rx_thr = Receiver::tcp();
    let rx_deg = Receiver::tcp();
    let rx_conf = Receiver::tcp();
    let rx_aud = Receiver::tcp();
    let (mut thr, g1) = gated(&agent, "thr", &py(&agent, "thr", &connect_loop(rx_thr.port)));
    let (mut deg, g2) = gated(&agent, "deg", &py(&agent, "deg", &connect_loop(rx_deg.port)));
    let (mut conf, g3) = gated(&agent, "conf", &py(&agent, "conf", &connect_loop(rx_conf.port)));
    let (mut aud, g4) = gated(&agent, "aud", &py(&agent, "aud", &tcp_sender(rx_aud.port)));
    let r = add(&agent, &["c-thr", "--target", "thr", "--metric", "connects", "--above", "20", "--window", "1s", "--action", "throttle"]);
    assert_eq!(r["mode"], "auto");
    assert!(r["evaluated"].as_str().unwrap().contains("needs the pacer"), "{r}");
    let r = add(&agent, &["c-deg", "--target", "deg", "--metric", "connects", "--above", "20", "--window", "1s", "--action", "degrade"]);
    assert_eq!(r["mode"], "alert");
    let r = add(
        &agent,
        &[
            "c-conf",
            "--target",
            "conf",
            "--metric",
            "connects",
            "--above",
            "20",
            "--window",
            "1s",
            "--action",
            "isolate",
            "--meanwhile",
            "throttle",
            "--timeout",
            "5m",
            "--on-timeout",
            "hold",
        ],
    );
    assert_eq!(r["mode"], "confirm");
    assert!(r["evaluated"].as_str().unwrap().contains("needs approval"), "{r}");
    add(&agent, &["e-aud", "--target", "aud", "--metric", "egress-bytes", "--above", "1MB", "--window", "1s", "--action", "isolate", "--mode", "audit"]);
    for g in [&g1, &g2, &g3, &g4] {
        go(g);
    }
    // Throttle: applied by the agent, with the configured defaults in force.
    let f = wait_fired(&agent, "c-thr", "thr", Duration::from_secs(10)).expect("throttle rule fired");
    assert_eq!(f["outcome"], "applied by agent", "{f}");
    assert!(f["value"].as_u64().unwrap() > 20);
    assert_eq!(levels(&agent, "thr"), ("throttle".into(), "throttle".into()));
    let st = agent.json(&["status", "thr"]);
    let buckets = st["targets"][0]["throttle"]["buckets"].as_array().cloned().unwrap_or_default();
    assert!(buckets.iter().any(|b| b["class"] == "all" && b["ceiling_per_s"] == 1000), "default ceiling not in force: {st}");
    assert_eq!(st["targets"][0]["tripwires_fired"][0]["rule"], "c-thr");
    eprintln!("throttle applied by agent: exposure window {} µs", f["exposure_window_us"]);
    // Degrade (alert mode): applied, high priority; from outside, connects stop getting through.
    let f = wait_fired(&agent, "c-deg", "deg", Duration::from_secs(10)).expect("degrade rule fired");
    assert_eq!(f["outcome"], "applied by agent", "{f}");
    assert_eq!(levels(&agent, "deg").1, "degrade");
    assert!(rx_deg.flat_over(Duration::from_secs(1)), "connects still get through after degrade");
    let rec = fired_records(&agent, "c-deg");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["high_priority"], true);
    eprintln!("degrade applied by agent: exposure window {} µs", f["exposure_window_us"]);
    // Confirm: pending approval, throttled meanwhile, not isolated.
    let f = wait_fired(&agent, "c-conf", "conf", Duration::from_secs(10)).expect("confirm rule fired");
    assert!(f["outcome"].as_str().unwrap().starts_with("pending"), "{f}");
    assert_eq!(levels(&agent, "conf"), ("throttle".into(), "throttle".into()));
    // The firing is a pending action (`killpath pending`), proposed by the rule.
    let list = agent.json(&["pending"]);
    let pending: Vec<Value> = list["pending"].as_array().into_iter().flatten().filter(|p| p["target"] == "conf").cloned().collect();
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["level"], "isolate", "{list}");
    assert_eq!(pending[0]["on_timeout"], "hold", "{list}");
    assert_eq!(pending[0]["origin"]["rule"], "c-conf", "{list}");
    assert!(pending[0]["evidence"]["value"].as_u64().unwrap_or(0) > 20, "{list}");
    assert!(!rx_conf.flat_over(Duration::from_millis(500)), "nothing isolates the target before approval");
    // Approved by a human: isolated, judged at the receiver.
    let id = pending[0]["id"].as_u64().expect("pending id").to_string();
    agent.json(&["approve", &id, "--reason", "test"]);
    assert_eq!(levels(&agent, "conf").1, "isolate");
    assert!(rx_conf.flat_over(Duration::from_secs(1)), "the workload still reaches the receiver after approval");
    // Audit: recorded, never enforced: the receiver keeps getting bytes.
    let f = wait_fired(&agent, "e-aud", "aud", Duration::from_secs(10)).expect("audit rule fired");
    assert_eq!(f["outcome"], "audit only");
    assert!(!rx_aud.flat_over(Duration::from_millis(500)), "audit rule stopped the workload");
    assert_eq!(levels(&agent, "aud").1, "normal");
    for c in [&mut thr, &mut deg, &mut conf, &mut aud] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn tripwire_bad_rules_refused_and_bad_config_stops_the_agent() {
    let Some(agent) = Agent::start() else { return };
    let (mut t, _gate) = gated(&agent, "t", "sleep 60");
    let base = ["--target", "t", "--metric", "connects", "--above", "20", "--window", "1s", "--action", "isolate"];
    let refused = |args: &[&str], needle: &str| {
        let mut a = vec!["tripwire", "add", "r"];
        a.extend_from_slice(args);
        let out = agent.kp(&a);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: error {err:?} does not say {needle:?}");
    };
    let with = |k: &str, v: &str| -> Vec<String> {
        let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        let i = a.iter().position(|x| x == k).unwrap();
        a[i + 1] = v.into();
        a
    };
    let run = |a: Vec<String>, needle: &str| refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle);
    run(with("--metric", "teleports"), "unknown metric");
    run(with("--above", "0"), "threshold 0");
    run(with("--window", "0s"), "window 0");
    run(with("--target", "nosuch"), "unknown target");
    run(with("--action", "normal"), "action normal");
    let mut crit_thr = with("--action", "throttle");
    crit_thr.push("--critical".into());
    run(crit_thr, "--critical");
    let mut auto_iso: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    auto_iso.extend(["--mode".into(), "auto".into()]);
    run(auto_iso, "only with --critical");
    add(&agent, &[&["r"], &base[..]].concat());
    refused(&base, "already exists");
    // The agent is still up and the good rule is there.
    assert_eq!(agent.json(&["tripwire", "list"])["rules"].as_array().map(Vec::len), Some(1));
    let removed = agent.json(&["tripwire", "remove", "r"]);
    assert_eq!(removed["removed"], true);
    assert!(agent.journal().iter().any(|r| r["action"] == "tripwire-add" && r["phase"] == "result"));
    assert!(agent.journal().iter().any(|r| r["action"] == "tripwire-remove" && r["phase"] == "result"));
    let _ = t.kill();
    let _ = t.wait();
    // A bad rule in the config file: the agent does not start, and says which rule and why.
    let cfg = agent.dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[tripwires]]\nname = \"exfil\"\ntarget = \"*\"\nmetric = \"egress-bytez\"\nabove = \"1MB\"\nwindow = \"1s\"\naction = \"isolate\"\ncritical = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&cfg)
        .args(["--pin-dir", "/nonexistent-kp-pins"])
        .env("KILLPATH_SOCKET", agent.dir.path().join("other.sock"))
        .env("KILLPATH_STATE_DIR", agent.dir.path().join("other-state"))
        .output()
        .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("exfil") && err.contains("unknown metric"), "{err}");
    drop(agent);
    // A good config rule is armed at start and listed as from the config.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[tripwires]]\nname = \"exfil\"\ntarget = \"*\"\nmetric = \"egress-bytes\"\nabove = \"1MB\"\nwindow = \"1s\"\naction = \"isolate\"\ncritical = true\n",
    )
    .unwrap();
    let Some(agent) = Agent::start_with(&["--config", good.to_str().unwrap()]) else { return };
    let l = agent.json(&["tripwire", "list"]);
    assert_eq!(l["rules"][0]["name"], "exfil");
    assert_eq!(l["rules"][0]["from_config"], true);
    assert!(l["rules"][0]["evaluated"].as_str().unwrap().starts_with("in kernel"), "{l}");
}

/// A critical degrade rule on connects acts in the kernel: the crossing
/// connect (the 21st) is already refused. Judged by the receiver outside,
/// which gets one byte per connect that got through.
#[test]
fn tripwire_critical_connects_degrade_refuses_the_crossing_connect() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::tcp();
    let (mut c, gate) = gated(&agent, "c", &py(&agent, "c", &connect_loop(rx.port)));
    let r = add(&agent, &["burst", "--target", "c", "--metric", "connects", "--above", "20", "--window", "10s", "--action", "degrade", "--critical"]);
    assert!(r["evaluated"].as_str().unwrap().contains("raises the level"), "{r}");
    go(&gate);
    let f = wait_fired(&agent, "burst", "c", Duration::from_secs(10)).expect("fired");
    assert_eq!(f["outcome"], "raised in kernel", "{f}");
    assert_eq!(f["value"], 21);
    assert!(rx.flat_over(Duration::from_secs(1)));
    assert_eq!(rx.get(), 20, "connects that got through (the 21st crosses and is refused)");
    let st = agent.json(&["status", "c"]);
    assert!(st["targets"][0]["revoked"].as_array().unwrap().iter().any(|c| c == "net.connect"), "{st}");
    eprintln!("critical degrade on connects: 20 of 20 allowed connects through, crossing refused, window {} µs", f["exposure_window_us"]);
    let _ = c.kill();
    let _ = c.wait();
}
