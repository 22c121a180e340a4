//! A trail file is hash-chained like the journal: editing a byte is
//! caught by `trail --verify` (exit 1, naming the line); events after a
//! stop: none.
use std::time::Duration;

use super::{execs_of, records, run_recorded};
use crate::harness::{alive, skip, wait_until, Agent};

#[test]
fn trail_verify_detects_tampering() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let script = format!("/bin/echo secret-exfil-host; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, "tr-tamper", &script);
    wait_until(Duration::from_secs(10), || done.exists()).expect("script ran");
    wait_until(Duration::from_secs(10), || !execs_of(&records(&a, "tr-tamper", &[]), "/bin/echo").is_empty()).expect("echo recorded");
    let ok = a.kp(&["--json", "trail", "tr-tamper", "--verify"]);
    assert!(ok.status.success(), "an untouched trail verifies: {}", String::from_utf8_lossy(&ok.stdout));
    // Hide what the workload ran: rewrite the argument in place (same length).
    let path = a.state_dir.join("trails/tr-tamper.jsonl");
    let text = std::fs::read_to_string(&path).expect("trail file");
    let line = text.lines().position(|l| l.contains("secret-exfil-host")).expect("the echo's record") + 1;
    std::fs::write(&path, text.replace("secret-exfil-host", "harmless-thing-xx")).expect("tamper");
    let out = a.kp(&["--json", "trail", "tr-tamper", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "a tampered trail fails verification: {}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["line"], line, "the first problem is the edited line: {v:#}");
    let _ = child.kill();
    let _ = child.wait();
}

/// After a stop, the workload does nothing more: no event in its trail
/// happened after the stop (kernel timestamps), and its tasks are gone.
#[test]
fn trail_after_stop_has_no_events() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let mut child = run_recorded(&a, "tr-stop", "while :; do /bin/true; done");
    let sh = child.id() as i32;
    wait_until(Duration::from_secs(10), || execs_of(&records(&a, "tr-stop", &[]), "/bin/true").len() >= 5).expect("the loop is recorded");
    let stop = a.json(&["stop", "tr-stop"]);
    assert_eq!(stop["survivors"], 0);
    assert_eq!(stop["trail"]["summary"], "killpath trail tr-stop --summary", "the stop result points to the summary: {stop:#}");
    let _ = child.wait();
    assert!(!alive(sh), "the workload is gone (seen from /proc)");
    assert!(a.target_cgroup("tr-stop").procs_recursive().is_empty());
    // Everything the ring held is drained once the count stops moving.
    let mut last = 0;
    wait_until(Duration::from_secs(10), || {
        let n = records(&a, "tr-stop", &[]).len();
        let still = n == last;
        last = n;
        still && {
            std::thread::sleep(Duration::from_millis(500));
            records(&a, "tr-stop", &[]).len() == n
        }
    })
    .expect("the trail settles");
    let recs = records(&a, "tr-stop", &[]);
    let marker = recs.iter().find(|r| r["action"] == "level" && r["to"] == "stopped").unwrap_or_else(|| {
        let o = a.kp(&["--json", "trail", "tr-stop"]);
        panic!("no stop marker: {recs:#?}\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    let stop_seq = marker["seq"].as_u64().unwrap_or(0);
    let journal = a.journal();
    let stopped_at =
        journal.iter().rev().find(|r| r["action"] == "stop" && r["phase"] == "result").and_then(|r| r["time_unix_us"].as_u64()).expect("stop result");
    let late: Vec<_> = recs.iter().filter(|r| r["action"] == "exec" && r["time_unix_us"].as_u64().unwrap_or(0) > stopped_at).collect();
    assert!(late.is_empty(), "events after the stop: {late:#?}");
    // An exec can still be recorded at level stopped: the stop arms the
    // level in the kernel map first, then kills, and a task of the loop
    // may exec in between (under load that window is long enough). It
    // happened before the stop completed; nothing may come after.
    let after_marker: Vec<_> = recs
        .iter()
        .filter(|r| r["seq"].as_u64().unwrap_or(0) > stop_seq && r["level"] == "stopped")
        .filter(|r| r["action"] != "exec" || r["time_unix_us"].as_u64().unwrap_or(u64::MAX) > stopped_at)
        .collect();
    assert!(after_marker.is_empty(), "no event recorded at level stopped after the stop completed: {after_marker:#?}");
    let sum = a.json(&["trail", "tr-stop", "--summary"]);
    assert!(sum["by_level"].as_array().is_some_and(|l| l.iter().any(|s| s.as_str().is_some_and(|s| s.starts_with("at normal:")))), "{sum:#}");
}
