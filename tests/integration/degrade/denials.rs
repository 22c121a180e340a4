//! Denials are counted exactly and sampled onto the event stream within
//! the kernel's rate limit.
use std::{
    thread,
    time::{Duration, Instant},
};

use killpath_common::DENIAL_EVENTS_PER_SEC;
use serde_json::{json, Value};

use super::{
    clients::{connect_loop, tcp_sink},
    denials,
    events::Events,
    in_cgroup, row,
};
use crate::{harness::Agent, support::process::run_bg};

/// Denial counts are exact and sampled events match what the workload
/// attempted: 50 refused connects count 50 and stream denial events naming
/// the pid, comm and destination; 100,000 retries count exactly 100,000
/// more while the events stay within the kernel's rate limit and the
/// journal does not grow with them.
#[test]
fn degrade_denials_counted_exactly_and_events_rate_limited() {
    let Some(agent) = Agent::start() else { return };
    let port = tcp_sink();
    let _t = run_bg(&agent, "retry", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("retry").path().to_owned();
    let cgroup_id = row(&agent, "retry")["cgroup_id"].clone();
    let ev = Events::start(&agent);
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 3);
    assert_eq!(r["errnos"], json!({"0": 3}), "connects work before degrade: {r}");
    assert_eq!(row(&agent, "retry")["denials"], json!({}), "nothing counted before degrade");

    let t_degrade = Instant::now();
    let d = agent.json(&["degrade", "retry", "--revoke", "net.connect", "--reason", "retry drill"]);
    ev.wait(Duration::from_secs(10), "the alert for the degrade step", |e| e.iter().any(|e| e["type"] == "alert" && e["target"] == "retry"));
    let alerts = ev.of("retry", "alert");
    assert_eq!(alerts.len(), 1, "one alert per degrade step: {alerts:?}");
    let a = &alerts[0];
    assert_eq!((a["priority"].as_str(), a["action"].as_str(), a["reason"].as_str(), a["level"].as_str()), (Some("high"), Some("degrade"), Some("retry drill"), Some("degrade")), "{a}");
    assert_eq!(a["revoked"], d["revoked"], "{a}");

    // 50 refused connects.
    let r50 = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 50);
    let burst_end = Instant::now();
    assert_eq!(r50["errnos"], json!({"1": 50}), "every attempt refused with EPERM: {r50}");
    let pid50 = r50["pid"].as_i64().unwrap();
    let r = row(&agent, "retry");
    assert_eq!(r["denials"]["net.connect"]["total"], 50, "exactly 50 denials counted: {r}");
    assert_eq!(r["denials"]["net.connect"]["last_minute"], 50, "{r}");
    assert_eq!(r["denials"].as_object().unwrap().len(), 1, "only net.connect was denied: {r}");
    let of_pid = |pid: i64| -> Vec<Value> { ev.of("retry", "denial").into_iter().filter(|e| e["pid"] == pid).collect() };
    ev.wait(Duration::from_secs(10), "20 denial events of the 50-connect burst", |_| of_pid(pid50).len() >= DENIAL_EVENTS_PER_SEC as usize);
    ev.settle(Duration::from_millis(1500));
    let e50 = of_pid(pid50);
    assert!(e50.len() <= 50, "never more events than denials: {}", e50.len());
    let dest = format!("127.0.0.1:{port}");
    for e in &e50 {
        assert_eq!(e["capability"], "net.connect", "{e}");
        assert_eq!(e["destination"], dest.as_str(), "{e}");
        assert_eq!(e["cgroup_id"], cgroup_id, "{e}");
        assert!(e["comm"].as_str().is_some_and(|c| c.starts_with("python")), "comm names the program: {e}");
    }
    let all_denials = ev.of("retry", "denial");
    assert_eq!(all_denials.len(), e50.len(), "every denial event so far is from the 50-connect workload: {all_denials:?}");
    eprintln!("50 refused connects: {} sampled events", e50.len());

    // A fresh rate window for the retry loop.
    thread::sleep(Duration::from_millis(1200).saturating_sub(burst_end.elapsed()));
    let journal_before = agent.journal().len();
    let t0 = Instant::now();
    let r100k = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 100_000);
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(r100k["errnos"], json!({"1": 100_000}), "every retry refused with EPERM: {r100k}");
    let pid100k = r100k["pid"].as_i64().unwrap();
    let r = row(&agent, "retry");
    assert_eq!(r["denials"]["net.connect"]["total"], 100_050, "exactly 50 + 100,000 denials counted: {r}");
    ev.wait(Duration::from_secs(10), "denial events of the retry loop", |_| !of_pid(pid100k).is_empty());
    ev.settle(Duration::from_millis(2000));
    let e100k = of_pid(pid100k);
    let bound = (DENIAL_EVENTS_PER_SEC as f64 * (elapsed + 2.0)) as usize;
    eprintln!("100,000 refused connects in {elapsed:.2} s: {} sampled events (bound {bound})", e100k.len());
    assert!(e100k.len() <= bound, "events must be rate-limited: {} events for a {elapsed:.2} s loop (bound {bound})", e100k.len());
    for e in &e100k {
        assert_eq!((e["capability"].as_str(), e["destination"].as_str()), (Some("net.connect"), Some(dest.as_str())), "{e}");
    }
    let total_events = ev.of("retry", "denial").len();
    let overall = (DENIAL_EVENTS_PER_SEC as f64 * (t_degrade.elapsed().as_secs_f64() + 2.0)) as usize;
    assert!(total_events <= overall, "{total_events} denial events since the degrade (bound {overall})");
    assert_eq!(total_events, e50.len() + e100k.len(), "no denial events from anyone else");
    assert!(ev.all().iter().all(|e| e["type"] != "lagged"), "the stream never lagged");
    let new = agent.journal().len() - journal_before;
    assert!(new < 10, "denials must not flood the journal: {new} new records");

    // Still counted after restore; nothing more is denied.
    agent.json(&["restore", "retry", "--grant", "net.connect"]);
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 5);
    assert_eq!(r["errnos"], json!({"0": 5}), "{r}");
    assert_eq!(denials(&agent, "retry", "net.connect"), 100_050);
}
