//! One agent scraped directly: `promtool check metrics` accepts the
//! scrape, and its values follow the target through degrade and stop.
use super::{agent_with_metrics, http_get, promtool, promtool_run, refused_connects, sample, scrape, Sink};
use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{in_cgroup_within, move_into},
        process::{pids, run_bg, show, spawn_outside},
        status::{assert_stopped, target_row},
    },
};

/// How many connects the workload tries while `net.connect` is revoked.
const CONNECTS: u32 = 7;

/// A scrape passes `promtool check metrics` (lint included) at every step;
/// `killpath_target_level` follows normal -> degrade -> stopped; the
/// `net.connect` denials equal the connects the workload's own syscalls
/// saw refused (and none reached the listener outside); live tasks match
/// cgroup.procs; a stop shows 0 survivors, 0 tasks and a time to effect;
/// socket requests are counted by command and outcome, and a caller
/// inside a target shows up as a refused caller; once released, no series
/// names the target.
#[test]
fn metrics_scrape_follows_degrade_and_stop() {
    let Some(promtool) = promtool() else { return };
    let Some((agent, addr)) = agent_with_metrics() else { return };
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web");
    let check = |text: &str, when: &str| {
        let out = promtool_run(&promtool, &["check", "metrics"], text);
        assert!(out.status.success(), "promtool check metrics {when}: {}\nscrape:\n{text}", show(&out));
    };

    let m = scrape(&addr);
    check(&m, "before any level");
    let web = [("target", "web")];
    assert_eq!(sample(&m, "killpath_up", &[]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_level", &web), Some(0.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_tasks", &web), Some(pids(&cg).len() as f64), "{m}");
    assert_eq!(sample(&m, "killpath_target_denials_total", &[("target", "web"), ("capability", "net.connect")]), Some(0.0), "{m}");
    assert!(sample(&m, "killpath_journal_records", &[]).is_some_and(|n| n >= 2.0), "run is journaled: {m}");
    assert_eq!(sample(&m, "killpath_journal_verify_ok", &[]), Some(1.0), "{m}");
    assert!(sample(&m, "killpath_programs_attached", &[]).is_some_and(|n| n >= 1.0), "{m}");

    let r = agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    assert_eq!(r["level"], "degrade", "{r}");
    let sink = Sink::new();
    let refused = refused_connects(cg.path(), &sink, CONNECTS);
    assert_eq!(refused, u64::from(CONNECTS), "every connect from inside is refused");
    assert_eq!(sink.accepted(), 0, "no connect from inside reached the listener outside");

    let m = scrape(&addr);
    check(&m, "after degrade");
    assert_eq!(sample(&m, "killpath_target_level", &web), Some(2.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_capability_revoked", &[("target", "web"), ("capability", "net.connect")]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_capability_revoked", &[("target", "web"), ("capability", "exec")]), Some(0.0), "{m}");
    let denials = sample(&m, "killpath_target_denials_total", &[("target", "web"), ("capability", "net.connect")]);
    assert_eq!(denials, Some(refused as f64), "denials = the refusals the workload saw: {m}");
    let row = target_row(&agent, "web").expect("status lists web");
    assert_eq!(row["denials"]["net.connect"]["total"].as_f64(), denials, "metrics and status agree: {row}");
    let degrade_ok = [("command", "degrade"), ("outcome", "ok")];
    assert_eq!(sample(&m, "killpath_socket_requests_total", &degrade_ok), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_time_to_effect_seconds_count", &[("target", "web"), ("level", "degrade")]), Some(1.0), "{m}");

    // A caller inside the target may read, never change: refused, and counted.
    let out = in_cgroup_within(30, cg.path(), &[crate::harness::BIN, "--socket", agent.socket.to_str().unwrap(), "isolate", "web"]);
    assert!(!out.status.success(), "isolate from inside the target must be refused: {}", show(&out));
    let m = scrape(&addr);
    assert_eq!(sample(&m, "killpath_socket_refused_callers_total", &[("command", "isolate")]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_socket_requests_total", &[("command", "isolate"), ("outcome", "forbidden")]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_level", &web), Some(2.0), "the refused isolate changed nothing: {m}");

    let before = pids(&cg);
    let report = agent.json(&["stop", "web"]);
    assert_stopped(&agent, "web", &cg, &report, &before);
    let m = scrape(&addr);
    check(&m, "after stop");
    assert_eq!(sample(&m, "killpath_target_level", &web), Some(4.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_tasks", &web), Some(0.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_last_stop_survivors", &web), Some(0.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_time_to_effect_seconds_count", &[("target", "web"), ("level", "stopped")]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_journal_verify_ok", &[]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_stops_with_survivors_total", &web), Some(0.0), "{m}");
    let kills = sample(&m, "killpath_target_guard_kills_total", &web).expect("guard kills per target");

    // A task moved into the stopped target dies by the guard: counted for web.
    let p = spawn_outside(&["sleep", "1000"]);
    move_into(&cg, p.pid());
    assert!(wait_until(std::time::Duration::from_secs(5), || !alive(p.pid())).is_some(), "a task moved into the stopped target survives");
    let m = scrape(&addr);
    let after = sample(&m, "killpath_target_guard_kills_total", &web).expect("guard kills per target");
    assert!(after > kills, "the guard's kill is counted for web ({kills} -> {after}):\n{m}");

    // Released: no series names the target any more.
    agent.json(&["release", "web"]);
    let m = scrape(&addr);
    check(&m, "after release");
    assert!(!m.contains(r#"target="web""#), "a released target's series are gone:\n{m}");
}

/// Anything but `GET /metrics` gets a clear 404 or 405, and the agent
/// keeps serving both its socket and its metrics.
#[test]
fn metrics_other_paths_refused() {
    let Some((agent, addr)) = agent_with_metrics() else { return };
    let (code, body) = http_get(&format!("http://{addr}/"));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("/metrics"), "{body}");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405", "{}", show(&out));
    assert!(scrape(&addr).contains("killpath_up 1"));
    ping(&agent);
}

fn ping(agent: &Agent) {
    assert_eq!(agent.json(&["status"])["targets"], serde_json::json!([]));
}

/// An address already in use stops the agent's start, before it loads
/// anything, with an error naming the address and the option.
#[test]
fn metrics_address_in_use_fails_start() {
    if !crate::harness::root() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, state, pins) = (dir.path().join("s"), dir.path().join("state"), dir.path().join("pins"));
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "30", crate::harness::BIN, "--socket", socket.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .args(["agent", "--pin-dir", pins.to_str().unwrap(), "--metrics", &addr])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(1), "the agent must exit with an error: {}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("binding the metrics address {addr} (--metrics)")), "{err}");
    assert!(!pins.exists() && !state.exists(), "nothing was loaded or written before the bind failed");
}

/// Tripwire firings and pending approvals, as scraped: a critical rule
/// isolates the target in the kernel (level 3, a measured exposure window
/// that matches `status`), a confirm rule on the same crossing leaves a
/// pending stop (1 pending approval; the workload still runs).
#[test]
fn metrics_tripwire_exposure_and_pending_approval() {
    let Some((agent, addr)) = agent_with_metrics() else { return };
    let _tw = run_bg(&agent, "tw", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("tw");
    agent.json(&["degrade", "tw", "--revoke", "net.connect"]);
    let rule = |args: &[&str]| {
        let mut a = vec!["tripwire", "add"];
        a.extend_from_slice(args);
        agent.json(&a)
    };
    rule(&["burst", "--target", "tw", "--metric", "denials:net.connect", "--above", "3", "--window", "10s", "--action", "isolate", "--critical"]);
    rule(&["ask", "--target", "tw", "--metric", "denials:net.connect", "--above", "3", "--window", "10s", "--action", "stop", "--mode", "confirm"]);
    let sink = Sink::new();
    assert!(refused_connects(cg.path(), &sink, 5) >= 4, "the connects from inside are refused");
    assert_eq!(sink.accepted(), 0, "no connect from inside reached the listener outside");

    let tw = [("target", "tw")];
    let burst = [("target", "tw"), ("rule", "burst")];
    let mut m = String::new();
    let seen = crate::harness::wait_until(std::time::Duration::from_secs(20), || {
        m = scrape(&addr);
        sample(&m, "killpath_target_level", &tw) == Some(3.0) && sample(&m, "killpath_target_pending_approvals", &tw) == Some(1.0)
    });
    assert!(seen.is_some(), "level 3 and one pending approval never scraped:\n{m}");
    assert_eq!(sample(&m, "killpath_target_tripwire_fired", &burst), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_tripwire_fired", &[("target", "tw"), ("rule", "ask")]), Some(1.0), "{m}");
    let exposure = sample(&m, "killpath_target_tripwire_exposure_seconds", &burst).unwrap_or_else(|| panic!("no exposure window for burst:\n{m}"));
    assert!(exposure > 0.0 && exposure < 10.0, "{exposure}");
    let row = target_row(&agent, "tw").expect("status lists tw");
    let fired = row["tripwires_fired"].as_array().and_then(|a| a.iter().find(|f| f["rule"] == "burst")).cloned().unwrap_or_else(|| panic!("{row}"));
    let status_us = fired["exposure_window_us"].as_f64().unwrap_or_else(|| panic!("{fired}"));
    assert!((status_us / 1e6 - exposure).abs() < 1e-6, "metrics {exposure} s, status {status_us} µs");
    assert_eq!(pids(&cg).len(), 1, "the pending stop has not run: the workload is alive");
}

/// A flood of idle connections to the metrics port (what a target that can
/// reach it may open) is capped: the agent's open file descriptors stay
/// bounded (read from /proc, not from the agent), a stop still leaves 0
/// survivors (the victim's pid checked in /proc), and once the flood ends
/// a scrape answers again.
#[test]
fn metrics_connection_flood_is_capped_and_a_stop_still_works() {
    let Some((agent, addr)) = agent_with_metrics() else { return };
    let (_run, victim) = crate::support::process::sleeping_target(&agent, "victim");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    // Idle: connected, nothing sent (held until the header timeout).
    let flood: Vec<std::net::TcpStream> = (0..400).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(flood.len() >= 300, "only {} connections opened", flood.len());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let during = fds();
    eprintln!("agent fds: {before} before, {during} with {} idle metrics connections", flood.len());
    assert!(during < before + 100, "the agent holds {during} fds ({before} before) for {} idle connections: not capped", flood.len());
    let r = agent.json(&["stop", "victim"]);
    assert_eq!(r["survivors"], 0, "{r}");
    assert!(!crate::harness::alive(victim), "the victim {victim} survived the stop during the flood");
    drop(flood);
    let text = crate::harness::wait_until(std::time::Duration::from_secs(15), || http_get(&format!("http://{addr}/metrics")).0 == 200);
    assert!(text.is_some(), "no scrape answered after the flood ended");
}
