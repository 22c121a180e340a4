//! `journal --follow` streams new records, through the agent and offline.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{Agent, BIN},
    support::process::{sleeping_target, Reaped},
};

/// Spawns `killpath ARGS` and forwards its stdout lines to a channel.
fn follow(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads records from `rx` until one satisfies `want` (within 5 s); returns all read.
fn read_until(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("--follow did not print {what} within 5 s; got {got:#?}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("--follow printed non-JSON ({e}): {line}"));
        let done = want(&v);
        got.push(v);
        if done {
            return got;
        }
    }
}

#[test]
fn follow_prints_new_records() {
    let Some(agent) = Agent::start() else { return };
    // Through the agent, and offline on the state dir.
    let mut online = agent.cmd(&["--json", "journal", "--follow"]);
    online.env_remove("KILLPATH_STATE_DIR");
    let (c1, rx1) = follow(online);
    let _c1 = Reaped(c1);
    let mut offline = Command::new(BIN);
    offline.args(["--json", "--state-dir", agent.state_dir.to_str().unwrap(), "journal", "--follow", "--offline"]);
    let (c2, rx2) = follow(offline);
    let _c2 = Reaped(c2);

    let mut seen1 = read_until(&rx1, "agent-start", |r| r["action"] == "agent-start");
    let mut seen2 = read_until(&rx2, "agent-start", |r| r["action"] == "agent-start");

    let (_run, _) = sleeping_target(&agent, "t");
    let is_run_result = |r: &Value| r["action"] == "run" && r["phase"] == "result";
    seen1.extend(read_until(&rx1, "the run result", is_run_result));
    seen2.extend(read_until(&rx2, "the run result", is_run_result));

    agent.json(&["stop", "t"]);
    let is_stop_result = |r: &Value| r["action"] == "stop" && r["phase"] == "result";
    seen1.extend(read_until(&rx1, "the stop result", is_stop_result));
    seen2.extend(read_until(&rx2, "the stop result", is_stop_result));

    // Each record once, in order, exactly as in the file.
    let file = agent.journal();
    for seen in [&seen1, &seen2] {
        assert_eq!(seen.as_slice(), &file[..seen.len()], "--follow output differs from the file");
        assert_eq!(seen.len(), file.len(), "{seen:#?}");
    }
    // Nothing more appears while nothing happens.
    std::thread::sleep(Duration::from_millis(600));
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err(), "--follow printed records that were not written");
}
