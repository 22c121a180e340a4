//! Timeout policies: hold (stays pending, alerts again each period on
//! `events`), apply (applied by the agent once the timeout passes), drop.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{connects, level, listener, pending, propose, records};
use crate::{
    harness::{wait_until, Agent},
    support::process::{run_bg, Reaped},
};

/// Alerts of `action` for pending `id` that the `events` subscriber printed.
fn alerts(path: &std::path::Path, action: &str, id: u64) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "alert" && e["action"] == action && e["id"] == id && e["priority"] == "high")
        .count()
}

#[test]
fn timeout_policies_hold_apply_drop() {
    let Some(agent) = Agent::start() else { return };
    let events_out = agent.dir.path().join("events.out");
    let _events =
        Reaped(agent.cmd(&["--json", "events"]).stdout(std::fs::File::create(&events_out).unwrap()).stderr(Stdio::null()).spawn().expect("events subscriber"));
    let _h = run_bg(&agent, "hold", &["sleep", "1000"], 1);
    let _a = run_bg(&agent, "apply", &["sleep", "1000"], 1);
    let _d = run_bg(&agent, "drop", &["sleep", "1000"], 1);
    let (srv, port) = listener(&agent);
    let cg_apply = agent.target_cgroup("apply");
    // The subscriber is connected once it printed the first proposal's alert.
    let hold = propose(&agent, &["hold", "--level", "isolate", "--timeout", "1s", "--on-timeout", "hold"]);
    wait_until(Duration::from_secs(5), || alerts(&events_out, "pending", hold) == 1).expect("events never showed the proposal");
    let t0 = Instant::now();
    let apply = propose(&agent, &["apply", "--level", "isolate", "--timeout", "2s", "--on-timeout", "apply"]);
    let drop = propose(&agent, &["drop", "--level", "isolate", "--timeout", "1s", "--on-timeout", "drop"]);
    // Before its timeout nothing is applied.
    assert!(pending(&agent, apply).is_some());
    if t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(level(&agent, "apply"), "normal", "applied before its timeout");
    }

    // apply: isolated after its timeout, by the agent.
    wait_until(Duration::from_secs(6), || level(&agent, "apply") == "isolate").expect("apply policy never applied");
    assert!(!connects(&srv, port, cg_apply.path()), "applied-on-timeout isolate did not cut the target off");
    let rec = records(&agent, "pending-apply", apply);
    let intent = rec.iter().find(|r| r["phase"] == "intent").expect("pending-apply journaled");
    assert_eq!(intent["actor"]["source"], "agent", "{intent}");
    assert_eq!(intent["params"]["why"], "applied on timeout", "{intent}");
    let p = agent.journal().into_iter().find(|r| r["action"] == "propose" && r["phase"] == "intent" && r["target"] == "apply").unwrap();
    let late_ms = (intent["time_unix_us"].as_u64().unwrap() as i64 - p["params"]["created_unix_us"].as_i64().unwrap() - 2_000_000) / 1000;
    eprintln!("apply on timeout: journaled {late_ms} ms after the deadline");
    assert!((0..1000).contains(&late_ms), "applied {late_ms} ms after the deadline");
    assert!(pending(&agent, apply).is_none());

    // drop: gone, the target untouched.
    wait_until(Duration::from_secs(5), || pending(&agent, drop).is_none()).expect("drop policy never dropped");
    assert_eq!(level(&agent, "drop"), "normal");
    let rec = records(&agent, "pending-drop", drop);
    assert!(rec.iter().any(|r| r["phase"] == "intent" && r["params"]["why"] == "dropped on timeout" && r["actor"]["source"] == "agent"), "{rec:?}");
    assert!(connects(&srv, port, agent.target_cgroup("drop").path()), "a dropped isolate changed the target");

    // hold: still pending, alerted again (high priority) once per period.
    wait_until(Duration::from_secs(6), || alerts(&events_out, "pending-timeout", hold) >= 2)
        .unwrap_or_else(|| panic!("hold: fewer than 2 timeout alerts on events:\n{}", std::fs::read_to_string(&events_out).unwrap_or_default()));
    let p = pending(&agent, hold).expect("hold keeps it pending");
    assert!(p["timeout_alerts"].as_u64().unwrap() >= 2, "{p}");
    assert_eq!(level(&agent, "hold"), "normal");
    assert!(records(&agent, "pending-timeout", hold).iter().all(|r| r["high_priority"] == true));
    // One alert per period, not one per check (250 ms).
    let n = alerts(&events_out, "pending-timeout", hold) as u128;
    let periods = (Instant::now() - t0).as_millis() / 1000 + 1;
    assert!(n <= periods, "{n} hold alerts in {periods} periods");
}

/// A target released while an action is pending: the action is dropped
/// with a journal record.
#[test]
fn pending_dropped_when_target_released() {
    let Some(agent) = Agent::start() else { return };
    let w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let id = propose(&agent, &["t", "--level", "isolate"]);
    drop(w);
    agent.json(&["release", "t"]);
    wait_until(Duration::from_secs(3), || pending(&agent, id).is_none()).expect("pending action of a released target still listed");
    let rec = records(&agent, "pending-drop", id);
    assert!(rec.iter().any(|r| r["params"]["why"] == "dropped: target released"), "{rec:?}");
}
