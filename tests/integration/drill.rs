//! Tests: escalation order, the checkpointing canary, and `killpath drill`
//! (the whole kill path run, verified from outside, timed and reported).
//! Tests whose names start with `lsm_` run in the BPF-LSM VM.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{wait_until, Agent},
    support::process::{run_bg, show, text},
};

/// `killpath --json drill ARGS`: (exit success, report).
fn drill(agent: &Agent, args: &[&str]) -> (bool, Value) {
    let mut a = vec!["--json", "drill"];
    a.extend_from_slice(args);
    let out = agent.kp(&a);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("drill {args:?}: no JSON report ({e}): {}\nagent log:\n{}", show(&out), agent.log_text()));
    (out.status.success(), report)
}

fn failed(report: &Value) -> Vec<String> {
    report["failed_checks"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap_or_default().to_owned()).collect()
}

fn level(agent: &Agent, name: &str) -> String {
    agent.json(&["status", name])["targets"][0]["level"].as_str().unwrap_or_default().to_owned()
}

fn scenario(dir: &Path, text: &str) -> String {
    let p = dir.join("scenario.toml");
    std::fs::write(&p, text).expect("scenario");
    p.display().to_string()
}

/// The default drill on a fresh canary: every level applied, verified
/// from outside and timed; the canary is stopped, restarted from its
/// checkpoint and its data checked; the drill is journaled (actor drill)
/// and listed by `drill --history`. What this kernel cannot enforce is
/// named, not silently passed.
fn default_drill_on_the_canary(agent: &Agent) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("report.json");
    let (ok, report) = drill(agent, &["--canary", "--report", &file.display().to_string()]);
    assert!(ok, "default drill failed: {:?}\n{report:#}", failed(&report));
    assert_eq!(report["passed"], true);
    let levels: Vec<&str> = report["steps"].as_array().expect("steps").iter().map(|s| s["level"].as_str().unwrap_or_default()).collect();
    assert_eq!(levels, ["throttle", "degrade", "isolate", "stop"], "{report:#}");
    for st in report["steps"].as_array().into_iter().flatten() {
        assert!(st["time_to_effect_us"].as_u64().is_some(), "every step is timed: {st}");
        assert!(!st["checks"].as_array().expect("checks").is_empty(), "every step is checked: {st}");
    }
    assert_eq!(report["canary_check"]["ok"], true, "{report:#}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).expect("--report file")).expect("report JSON");
    assert_eq!(saved["drill"], report["drill"]);
    // Journaled with actor drill, begin and end.
    let id = report["drill"].as_u64().expect("drill id");
    let recs = agent.journal();
    assert!(recs.iter().any(|r| r["action"] == "drill-begin" && r["actor"]["drill"] == id));
    assert!(recs.iter().any(|r| r["action"] == "drill-end" && r["actor"]["drill"] == id && r["params"]["passed"] == true));
    assert!(recs.iter().any(|r| r["action"] == "stop" && r["actor"]["drill"] == id), "the drill's own commands carry actor drill");
    let hist = agent.kp(&["drill", "--history"]);
    assert!(hist.status.success(), "{}", show(&hist));
    assert!(text(&hist.stdout).lines().any(|l| l.contains(&id.to_string()) && l.contains("passed")), "{}", text(&hist.stdout));
    // The drill's canary target is gone.
    let st = agent.json(&["status"]);
    assert!(st["targets"].as_array().expect("targets").iter().all(|t| !t["name"].as_str().unwrap_or_default().starts_with("drill-canary")), "{st}");
    report
}

#[test]
fn drill_default_passes_on_the_canary() {
    let Some(agent) = Agent::start() else { return };
    let report = default_drill_on_the_canary(&agent);
    // This host has no BPF LSM: the drill says what it could not check.
    let left: Vec<String> = report["left_out"].as_array().into_iter().flatten().map(|l| l["what"].as_str().unwrap_or_default().to_owned()).collect();
    if crate::harness::test_env().as_deref() == Some("host") {
        assert!(left.iter().any(|w| w == "isolate: channel unix"), "{left:?}");
        assert!(left.iter().any(|w| w == "degrade: exec"), "{left:?}");
    }
}

/// In the VM, with BPF LSM: every capability is revoked and each one is
/// seen denied by a probe inside the target, counted and alerted; every
/// isolation channel, unix and packet sockets included, is cut.
#[test]
fn lsm_drill_default_passes_on_the_canary() {
    let Some(agent) = Agent::start() else { return };
    let report = default_drill_on_the_canary(&agent);
    let degrade = report["steps"].as_array().and_then(|s| s.iter().find(|s| s["level"] == "degrade")).cloned().expect("degrade step");
    let revoked = degrade["params"]["revoke"].as_array().map_or(0, Vec::len);
    assert!(revoked >= 11, "with BPF LSM the default drill revokes (nearly) every capability: {degrade}");
    let left: Vec<String> = report["left_out"].as_array().into_iter().flatten().map(|l| l["what"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(!left.iter().any(|w| w.starts_with("isolate: channel unix") || w.starts_with("isolate: channel packet")), "{left:?}");
}

/// A threshold no kernel can meet fails the drill with a report saying
/// which one and by how much; the target is put back.
#[test]
fn drill_with_an_impossible_threshold_fails_clearly() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    let sc = scenario(dir.path(), "[throttle]\nenabled = false\n[degrade]\nenabled = false\n[isolate]\nmax_time_to_effect_us = 1\n");
    let (ok, report) = drill(&agent, &["job", "--scenario", &sc]);
    assert!(!ok, "exit status must be non-zero");
    assert_eq!(report["passed"], false);
    let f = failed(&report);
    assert!(f.iter().any(|c| c.contains("isolate") && c.contains("time to effect ≤ 1 µs") && c.contains("threshold 1 µs")), "{f:?}");
    assert_eq!(level(&agent, "job"), "normal", "the drill must leave the target as it found it");
    let out = agent.kp(&["drill", "job", "--scenario", "/nonexistent.toml"]);
    assert!(!out.status.success() && text(&out.stderr).contains("nonexistent.toml"), "{}", show(&out));
    let bad = scenario(dir.path(), "[isolate]\nmax_time_to_efect_us = 5\n");
    let out = agent.kp(&["drill", "job", "--scenario", &bad]);
    assert!(!out.status.success() && text(&out.stderr).contains("max_time_to_efect_us"), "{}", show(&out));
}

/// Isolation sabotaged by hand (the target's cgroup links detached with
/// bpftool, pins left in place so nothing looks missing): the drill's
/// probes find the channels open and the report names them.
#[test]
fn drill_catches_sabotaged_isolation() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    let cgid = agent.json(&["status", "job"])["targets"][0]["cgroup_id"].as_u64().expect("cgroup id");
    let mut detached = 0;
    for g in std::fs::read_dir(&agent.pin_dir).expect("pins").flatten() {
        for l in std::fs::read_dir(g.path().join("targets").join(cgid.to_string())).into_iter().flatten().flatten() {
            let show = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(l.path()).output().expect("bpftool");
            let v: Value = serde_json::from_slice(&show.stdout).expect("bpftool JSON");
            let id = v["id"].as_u64().expect("link id").to_string();
            let out = Command::new("bpftool").args(["link", "detach", "id", &id]).output().expect("bpftool");
            assert!(out.status.success(), "bpftool link detach: {}", String::from_utf8_lossy(&out.stderr));
            detached += 1;
        }
    }
    assert!(detached >= 2, "found no isolation links to sabotage");
    let sc = scenario(dir.path(), "[throttle]\nenabled = false\n[degrade]\nenabled = false\n");
    let (ok, report) = drill(&agent, &["job", "--scenario", &sc]);
    assert!(!ok);
    let f = failed(&report);
    assert!(f.iter().any(|c| c.starts_with("isolate: channel tcp4 cut: OPEN")), "{f:?}");
    assert_eq!(level(&agent, "job"), "normal");
}

/// A drill that dies (SIGKILL of its client) or whose agent restarts
/// mid-drill does not leave the target escalated: the agent puts it back
/// and journals the drill as abandoned.
#[test]
fn drill_interrupted_puts_the_target_back() {
    let Some(mut agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    agent.json(&["throttle", "job", "--syscall-class", "net=100/s"]);
    // A long settle keeps the drill inside its first step.
    let sc = scenario(dir.path(), "[options]\nsettle_ms = 20000\n");
    for how in ["client killed", "agent restarted"] {
        let mut child = agent.cmd(&["drill", "job", "--scenario", &sc]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("drill");
        wait_until(Duration::from_secs(20), || agent.json(&["status", "job"])["targets"][0]["throttle"]["ceilings"]["syscalls"]["all"] == 500)
            .unwrap_or_else(|| panic!("the drill never throttled the target ({how})"));
        match how {
            "client killed" => {
                child.kill().expect("kill drill");
                let _ = child.wait();
                wait_until(Duration::from_secs(10), || agent.journal().iter().any(|r| r["action"] == "drill-abandoned")).expect("drill-abandoned journaled");
            }
            _ => {
                agent.kill9();
                agent.spawn();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let row = agent.json(&["status", "job"])["targets"][0].clone();
        assert_eq!(row["level"], "throttle", "{how}: {row}");
        assert_eq!(row["throttle"]["ceilings"]["syscalls"], serde_json::json!({"net": 100}), "{how}: the ceilings as they were: {row}");
    }
    let abandoned = agent.journal().into_iter().filter(|r| r["action"] == "drill-abandoned").count();
    assert_eq!(abandoned, 2);
}

/// `escalate`: one level at a time with the defaults from the agent's
/// config file; a jump needs --skip-reason and is journaled as a skip;
/// `restore` steps down; status shows the level history. A bad config
/// file stops the agent from starting, naming the problem.
#[test]
fn escalate_follows_the_order_and_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[throttle]\nsyscalls = 250\n[degrade]\nrevoke = [\"net.connect\"]\n").expect("config");
    let Some(agent) = Agent::start_with(&["--config", &cfg.display().to_string()]) else { return };
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    let r = agent.json(&["escalate", "job"]);
    assert_eq!(r["level"], "throttle");
    assert_eq!(r["ceilings"]["syscalls"]["all"], 250, "{r}");
    let r = agent.json(&["escalate", "job", "--reason", "still misbehaving"]);
    assert_eq!(r["level"], "degrade");
    assert_eq!(r["revoked"], serde_json::json!(["net.connect"]), "{r}");
    let out = agent.kp(&["escalate", "job", "--to", "stop"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("would skip isolate") && text(&out.stderr).contains("--skip-reason"), "{}", show(&out));
    assert_eq!(level(&agent, "job"), "degrade", "a refused jump changes nothing");
    let r = agent.json(&["escalate", "job", "--to", "stop", "--skip-reason", "exfiltration in progress"]);
    assert_eq!(r["level"], "stopped");
    assert_eq!(r["skipped"], serde_json::json!(["isolate"]));
    let skip = agent.journal().into_iter().find(|r| r["action"] == "level-skipped").expect("level-skipped record");
    assert_eq!(skip["params"]["skip_reason"], "exfiltration in progress");
    assert_eq!(skip["high_priority"], true);
    let r = agent.json(&["restore", "job"]);
    assert_eq!(r["level"], "isolate", "restore without --to steps one level down");
    let hist = agent.json(&["status", "job"])["targets"][0]["history"].clone();
    let steps: Vec<(String, String, String)> = hist
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["action"] != "run")
        .map(|h| (h["action"].as_str().unwrap_or_default().into(), h["from"].as_str().unwrap_or_default().into(), h["to"].as_str().unwrap_or_default().into()))
        .collect();
    let want = [("escalate", "normal", "throttle"), ("escalate", "throttle", "degrade"), ("escalate", "degrade", "stopped"), ("restore", "stopped", "isolate")];
    assert_eq!(steps.iter().map(|(a, f, t)| (a.as_str(), f.as_str(), t.as_str())).collect::<Vec<_>>(), want, "{hist}");
    let out = agent.kp(&["escalate", "nosuch"]);
    assert!(text(&out.stderr).contains("unknown target"), "{}", show(&out));

    // A config file the agent cannot apply.
    std::fs::write(&cfg, "[throttle]\nsyscals = 250\n").expect("config");
    let out = Command::new(crate::harness::BIN)
        .args(["agent", "--config"])
        .arg(&cfg)
        .args(["--socket"])
        .arg(dir.path().join("s.sock"))
        .args(["--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .expect("agent");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("syscals"), "{}", show(&out));
}

/// The canary resumes from its checkpoint after a hard stop, and its data
/// check passes; a corrupted checkpoint is caught by `canary --check` and
/// refused by a restarted canary.
#[test]
fn canary_checkpoints_resume_and_catch_corruption() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    // Through a shell that stays (the harness waits for `run` to exec
    // something that is not killpath).
    let script = format!("{} canary --dir {d} --workers 1; sleep 300", crate::harness::BIN);
    let w = run_bg(&agent, "can", &["sh", "-c", &script], 3);
    let cp = dir.path().join("checkpoint-0.json");
    wait_until(Duration::from_secs(20), || std::fs::read(&cp).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).is_some_and(|v| v["records"].as_u64() >= Some(40)))
        .expect("two checkpoints");
    agent.json(&["stop", "can"]);
    drop(w);
    let out = agent.kp(&["canary", "--check", "--dir", &d]);
    assert!(out.status.success(), "{}", show(&out));
    let committed = serde_json::from_slice::<Value>(&std::fs::read(&cp).expect("cp")).expect("json")["records"].as_u64().expect("records");
    // Resume inside the same target, after restore.
    agent.json(&["restore", "can", "--to", "normal"]);
    let cg = agent.target_cgroup("can");
    let mut again = Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(cg.path())
        .args([crate::harness::BIN, "canary", "--dir", &d, "--workers", "1"])
        .stdin(Stdio::null())
        .spawn()
        .expect("restart canary");
    wait_until(Duration::from_secs(20), || {
        std::fs::read(&cp).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).is_some_and(|v| v["records"].as_u64() > Some(committed))
    })
    .expect("the restarted canary committed more records");
    agent.json(&["stop", "can"]);
    let _ = again.wait();
    let out = agent.json(&["canary", "--check", "--dir", &d]);
    assert_eq!(out["ok"], true, "{out}");
    // Corrupt the checkpoint: it claims records the log does not hold.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cp).expect("cp")).expect("json");
    v["records"] = serde_json::json!(v["records"].as_u64().unwrap_or(0) + 7);
    std::fs::write(&cp, serde_json::to_vec(&v).expect("json")).expect("corrupt");
    let out = agent.kp(&["canary", "--check", "--dir", &d]);
    assert!(!out.status.success(), "the data check must fail: {}", show(&out));
    assert!(text(&out.stdout).contains("CORRUPT"), "{}", show(&out));
    // Torn (half-written) checkpoint.
    std::fs::write(&cp, b"{\"worker\":0,\"records\":4").expect("tear");
    let out = agent.kp(&["canary", "--check", "--dir", &d]);
    assert!(!out.status.success() && text(&out.stdout).contains("torn or corrupt"), "{}", show(&out));
    let out = Command::new(crate::harness::BIN).args(["canary", "--dir", &d, "--workers", "1"]).output().expect("canary");
    assert!(!out.status.success(), "a canary must not resume from a torn checkpoint: {}", show(&out));
}

/// Starts `killpath --json drill ARGS` in the background (stdout piped).
fn drill_bg(agent: &Agent, args: &[&str]) -> std::process::Child {
    let mut a = vec!["--json", "drill"];
    a.extend_from_slice(args);
    agent.cmd(&a).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn drill")
}

/// Waits until the drill's own throttle step is in effect (its result
/// record, actor drill, is in the journal): the operator acts after that.
fn wait_for_drill_throttle(agent: &Agent) -> u64 {
    let mut id = 0;
    let seen = wait_until(Duration::from_secs(30), || {
        let recs = agent.journal();
        match recs.iter().find(|r| r["action"] == "throttle" && r["phase"] == "result" && r["actor"]["drill"].is_u64()) {
            Some(r) => {
                id = r["actor"]["drill"].as_u64().unwrap_or(0);
                true
            }
            None => false,
        }
    });
    assert!(seen.is_some(), "the drill never throttled the target:\n{}", agent.log_text());
    id
}

/// The `drill-conflict` record of drill `id`: high priority, naming the
/// operator's command (their actor, not the drill) that raised the target.
fn assert_conflict_journaled(agent: &Agent, id: u64, action: &str, now: &str) {
    let recs = agent.journal();
    let c = recs.iter().find(|r| r["action"] == "drill-conflict" && r["actor"]["drill"] == id).unwrap_or_else(|| panic!("no drill-conflict record: {recs:#?}"));
    assert_eq!(c["high_priority"], true, "{c}");
    assert_eq!(c["params"]["conflict"]["differs"]["level"]["now"], now, "{c}");
    let by = c["params"]["conflict"]["changed_by"].as_array().expect("changed_by");
    assert!(by.iter().any(|b| b["action"] == action && b["actor"]["uid"] == 0 && b["actor"]["drill"].is_null()), "the record names the operator's {action}: {c}");
    // The drill itself put nothing back after the operator's change.
    let op = by.iter().find(|b| b["action"] == action).and_then(|b| b["seq"].as_u64()).expect("seq");
    assert!(
        !recs.iter().any(|r| r["seq"].as_u64() > Some(op) && r["action"] == "restore" && r["actor"]["drill"] == id),
        "the drill restored the target after the operator raised it: {recs:#?}"
    );
}

/// Whether a process inside `cg` can open a TCP connection to a listener
/// outside it (the listener, not the client, is the judge).
fn connects_from(cg: &Path) -> bool {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let script = format!("import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=3); s.sendall(b'x')");
    let _ = crate::support::cgroup::in_cgroup_within(10, cg, &["python3", "-c", &script]);
    let accepted = wait_until(Duration::from_secs(1), || listener.accept().is_ok());
    accepted.is_some()
}

/// An operator isolates the target while a drill is throttling it: the
/// drill stops there, ends normally, restores nothing, and says so; the
/// target stays isolated (a process inside it still cannot reach a
/// listener outside) and the conflict is journaled naming the operator.
#[test]
fn drill_leaves_an_operator_isolate_in_place() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    let cg = agent.target_cgroup("job").path().to_owned();
    assert!(connects_from(&cg), "control: before any isolation a process in the target reaches the listener");
    let sc = scenario(dir.path(), "[options]\nsettle_ms = 1500\n[degrade]\nenabled = false\n[isolate]\nenabled = false\n");
    let child = drill_bg(&agent, &["job", "--scenario", &sc]);
    let id = wait_for_drill_throttle(&agent);
    agent.json(&["isolate", "job", "--reason", "operator during a drill"]);
    let out = child.wait_with_output().expect("drill");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("drill: no JSON report ({e}): {}\n{}", show(&out), agent.log_text()));
    assert!(!out.status.success(), "a drill whose target was taken over does not pass: {report:#}");
    assert_eq!(report["drill"], id);
    assert!(report["conflict"]["summary"].as_str().is_some_and(|s| s.contains("isolate")), "the report names the conflict: {report:#}");
    assert!(report["restored"].as_array().is_none_or(Vec::is_empty), "{report:#}");
    assert!(failed(&report).iter().any(|f| f.contains("changed by someone else")), "{report:#}");
    assert_eq!(level(&agent, "job"), "isolate", "the operator's isolate must survive the drill's end");
    assert!(!connects_from(&cg), "after the drill the target can reach the outside again: its isolation was lifted");
    assert_conflict_journaled(&agent, id, "isolate", "isolate");
    let end = agent.journal().into_iter().find(|r| r["action"] == "drill-end" && r["actor"]["drill"] == id).expect("drill-end");
    assert!(end["params"]["conflict"].is_object() && end["high_priority"] == true, "{end}");
}

/// An operator stops the target during a drill, then the drill's client
/// dies (SIGKILL: its connection drops): the agent abandons the drill
/// without putting the target back; it stays stopped (a process moved into
/// it is killed by the guard) and the conflict is journaled.
#[test]
fn drill_abandoned_leaves_an_operator_stop_in_place() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let _w = run_bg(&agent, "job", &["sleep", "300"], 1);
    let cg = agent.target_cgroup("job");
    let sc = scenario(dir.path(), "[options]\nsettle_ms = 5000\n[degrade]\nenabled = false\n[isolate]\nenabled = false\n");
    let mut child = drill_bg(&agent, &["job", "--scenario", &sc]);
    let id = wait_for_drill_throttle(&agent);
    agent.json(&["stop", "job", "--reason", "operator during a drill"]);
    child.kill().expect("kill the drill client");
    let _ = child.wait();
    let abandoned = wait_until(Duration::from_secs(10), || agent.journal().iter().any(|r| r["action"] == "drill-abandoned" && r["actor"]["drill"] == id));
    assert!(abandoned.is_some(), "the agent never abandoned the drill:\n{}", agent.log_text());
    assert_eq!(level(&agent, "job"), "stopped", "the operator's stop must survive the drill's end");
    // Behaviour, from outside: a task moved in is killed, and none lives there.
    let p = crate::support::process::spawn_outside(&["sleep", "1000"]);
    crate::support::cgroup::move_into(&cg, p.pid());
    let died = wait_until(Duration::from_secs(3), || !crate::harness::alive(p.pid()));
    assert!(died.is_some(), "a task moved into the target survives: the stop was undone by the drill");
    assert!(crate::support::process::living(&crate::support::process::pids(&cg)).is_empty(), "live pids in the stopped target");
    assert_conflict_journaled(&agent, id, "stop", "stopped");
    let ab = agent.journal().into_iter().find(|r| r["action"] == "drill-abandoned" && r["actor"]["drill"] == id).expect("drill-abandoned");
    assert!(ab["params"]["conflict"].is_object() && ab["params"]["restored"].as_array().is_some_and(Vec::is_empty), "{ab}");
}
