//! Renewals, expiry with the agent alive and dead, and a restarted agent
//! taking the leases back from the kernel.
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use super::{ktime_ns, lease, lease_raises, pids, sender, Receiver};
use crate::{
    harness::{alive, wait_until, Agent},
    support::process::run_bg,
};

/// Latest a datagram may reach the receiver after the deadline.
const BOUND_NS: u64 = 50_000_000;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Sleeps until the kernel clock passes `t`.
fn sleep_until(t: u64) {
    let now = ktime_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

#[test]
fn lease_renewals_keep_it_alive() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let _w = sender(&agent, "renewed", rx.port);
    rx.assert_flowing("before the lease");
    agent.json(&["lease", "renewed", "--ttl", "1s", "--on-expiry", "isolate"]);
    // A renewer renews every 250 ms until the lease is cancelled, so the
    // checks below (CLI commands, slow on a loaded machine) never leave a
    // gap of a ttl without a renewal: the test is about renewals keeping
    // the lease alive, not about how fast the checks run.
    let stop = AtomicBool::new(false);
    let (renewals, expired_seen) = (AtomicU64::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let out = agent.kp(&["--json", "lease", "renewed", "--renew"]);
                if out.status.success() {
                    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("renew JSON");
                    expired_seen.fetch_or(r["lease"]["expired"] != false, Ordering::SeqCst);
                    renewals.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let start = ktime_ns();
        sleep_until(start + 3_000_000_000);
        // Three ttls later the sender still gets through, from outside.
        rx.assert_flowing("after 3 s of renewals");
        let l = lease(&agent, "renewed");
        assert_eq!(l["expired"], false, "{l}");
        assert!(l["renewals"].as_u64().unwrap_or(0) >= 6, "{l}");
        assert!(l["time_left_ms"].as_f64().unwrap_or(0.0) > 0.0, "{l}");
        assert!(l["enforcement"].as_str().unwrap_or("").contains("attached"), "{l}");
        let st = agent.json(&["status", "renewed"]);
        assert_eq!(st["targets"][0]["kernel_level"], "normal", "{st}");
        agent.json(&["lease", "renewed", "--cancel"]);
        stop.store(true, Ordering::SeqCst);
    });
    assert!(!expired_seen.load(Ordering::SeqCst), "a renewal answered that the lease had expired");
    assert!(renewals.load(Ordering::SeqCst) >= 6);
    // Journaled compactly: the arm and the first renewal, not each one.
    let j = agent.journal();
    assert_eq!(j.iter().filter(|e| e["action"] == "lease" && e["phase"] == "result" && e["outcome"] == "ok").count(), 1);
    assert_eq!(j.iter().filter(|e| e["action"] == "lease-renew" && e["phase"] == "result").count(), 1, "first renewal only");
    assert!(lease_raises(&agent, "renewed").is_empty());
}

#[test]
fn lease_expiry_isolates_and_stops_with_agent_alive() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let _w = sender(&agent, "iso", rx.port);
    let _idle = run_bg(&agent, "idle", &["sh", "-c", "sleep 1000 & sleep 1000"], 2);
    rx.assert_flowing("before the lease");
    let idle_pids = pids(&agent, "idle");
    agent.json(&["lease", "iso", "--ttl", "1s", "--on-expiry", "isolate"]);
    agent.json(&["lease", "idle", "--ttl", "1s", "--on-expiry", "stop"]);
    let deadline = lease(&agent, "iso")["deadline_ktime_ns"].as_u64().expect("deadline");
    let idle_deadline = lease(&agent, "idle")["deadline_ktime_ns"].as_u64().expect("deadline");
    sleep_until(deadline + 500_000_000);
    // Isolate: the receiver outside got nothing after the deadline (+50 ms).
    let last = rx.last_ns();
    assert!(last <= deadline + BOUND_NS, "a datagram sent {:.1} ms after the deadline got out", ms(last.saturating_sub(deadline)));
    let c = rx.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), c, "datagrams still arrive after the lease expired");
    assert!(!pids(&agent, "iso").is_empty(), "isolate keeps the sender running");
    // Stop: no pid of the idle workload alive.
    sleep_until(idle_deadline);
    assert!(wait_until(Duration::from_secs(3), || idle_pids.iter().all(|p| !alive(*p))).is_some(), "pids {idle_pids:?} survive the stop lease");
    // Journaled by the agent, naming the lease.
    for (name, level) in [("iso", "isolate"), ("idle", "stopped")] {
        assert!(wait_until(Duration::from_secs(3), || !lease_raises(&agent, name).is_empty()).is_some(), "no kernel-raise for {name}");
        let r = &lease_raises(&agent, name)[0];
        assert_eq!(r["params"]["cause"], "dead-man lease expired", "{r}");
        assert_eq!(r["params"]["level"], level, "{r}");
        assert_eq!(r["params"]["detail"]["lease"]["ttl_ms"], 1000, "{r}");
        let window = r["params"]["exposure_window_ns"].as_u64().expect("window");
        assert!(window < BOUND_NS, "raised {:.1} ms after the deadline", ms(window));
        let l = lease(&agent, name);
        assert_eq!(l["expired"], true, "{l}");
    }
    // A renewal after the expiry is refused, naming it.
    let out = agent.kp(&["lease", "iso", "--renew"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{}", String::from_utf8_lossy(&out.stderr));
    // No live lease left: the tick detaches.
    assert!(wait_until(Duration::from_secs(2), || !lease(&agent, "iso")["enforcement"].as_str().unwrap_or("").contains("attached")).is_some());
}

#[test]
fn lease_expiry_with_agent_killed() {
    let Some(mut agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let rx2 = Receiver::start();
    let _w = sender(&agent, "iso", rx.port);
    let w2 = sender(&agent, "doomed", rx2.port);
    rx.assert_flowing("before the lease");
    rx2.assert_flowing("before the lease");
    let doomed = pids(&agent, "doomed");
    // The deadlines from the arming answers: no extra call before the kill.
    let deadline = agent.json(&["lease", "iso", "--ttl", "2s", "--on-expiry", "isolate"])["lease"]["deadline_ktime_ns"].as_u64().expect("deadline");
    let deadline2 = agent.json(&["lease", "doomed", "--ttl", "2s", "--on-expiry", "stop"])["lease"]["deadline_ktime_ns"].as_u64().expect("deadline");
    agent.kill9();
    assert!(ktime_ns() < deadline, "the agent died after the deadline: the test proves nothing");
    sleep_until(deadline.max(deadline2) + 500_000_000);
    let last = rx.last_ns();
    assert!(last <= deadline + BOUND_NS, "agent dead: a datagram sent {:.1} ms after the deadline got out", ms(last.saturating_sub(deadline)));
    let last2 = rx2.last_ns();
    assert!(last2 <= deadline2 + BOUND_NS, "agent dead: stop lease let a datagram out {:.1} ms after", ms(last2.saturating_sub(deadline2)));
    // The stopped sender dies at its next context switch (the guard).
    assert!(wait_until(Duration::from_secs(3), || doomed.iter().all(|p| !alive(*p))).is_some(), "agent dead: pids {doomed:?} survive");
    drop(w2);
    assert!(!pids(&agent, "iso").is_empty());
    // The restarted agent journals both expiries.
    agent.spawn();
    for name in ["iso", "doomed"] {
        assert!(wait_until(Duration::from_secs(3), || !lease_raises(&agent, name).is_empty()).is_some(), "restarted agent did not journal {name}");
        let r = &lease_raises(&agent, name)[0];
        assert_eq!(r["params"]["cause"], "dead-man lease expired", "{r}");
        assert_eq!(r["actor"]["source"], "kernel-lease", "{r}");
    }
    let st = agent.json(&["status", "iso"]);
    assert_eq!(st["targets"][0]["level"], "isolate", "{st}");
}

#[test]
fn lease_restart_recovers_the_deadline() {
    let Some(mut agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let _w = sender(&agent, "kept", rx.port);
    agent.json(&["lease", "kept", "--ttl", "10s", "--on-expiry", "isolate"]);
    agent.json(&["lease", "kept", "--renew"]);
    let before = lease(&agent, "kept");
    agent.kill9();
    agent.spawn();
    let after = lease(&agent, "kept");
    assert_eq!(after["deadline_ktime_ns"], before["deadline_ktime_ns"], "before {before}\nafter {after}");
    assert_eq!(after["renewals"], 1, "{after}");
    assert_eq!(after["expired"], false, "{after}");
    assert!(after["enforcement"].as_str().unwrap_or("").contains("attached"), "{after}");
    let r = agent.json(&["lease", "kept", "--renew"]);
    assert!(r["lease"]["deadline_ktime_ns"].as_u64() > before["deadline_ktime_ns"].as_u64(), "{r}");
    assert_eq!(r["lease"]["renewals"], 2, "{r}");
    agent.json(&["lease", "kept", "--cancel"]);
    assert_eq!(lease(&agent, "kept"), serde_json::Value::Null);
    rx.assert_flowing("after cancel");
}
