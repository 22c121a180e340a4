//! Signals to tasks outside the target are in the trail; signals inside
//! it are not.
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{records, run_recorded};
use crate::harness::{skip, wait_until, Agent};

#[test]
fn trail_lists_signals_sent_outside() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let got = dir.path().join("got");
    let done = dir.path().join("done");
    // The receiver runs outside any target and writes down what it gets.
    let trap = format!("trap 'echo usr1 >> {}' USR1; while :; do sleep 0.05; done", got.display());
    let mut outside = Command::new("sh").args(["-c", &trap]).stdin(Stdio::null()).spawn().expect("receiver");
    let rx = outside.id();
    // Give sh time to install its trap: it has, once it forked its first sleep.
    wait_until(Duration::from_secs(5), || std::fs::read_to_string(format!("/proc/{rx}/task/{rx}/children")).is_ok_and(|c| !c.trim().is_empty()))
        .expect("receiver running");
    // Inside: one signal out (USR1 to the receiver), one in (TERM to its own child).
    let script = format!("sleep 60 & kill -TERM $!; kill -USR1 {rx}; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, "tr-sig", &script);
    wait_until(Duration::from_secs(10), || done.exists()).expect("script ran");
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&got).is_ok_and(|s| s.contains("usr1"))).expect("the receiver got USR1 (from outside)");
    wait_until(Duration::from_secs(10), || !records(&a, "tr-sig", &["--kind", "signal"]).is_empty()).expect("a signal record");
    // Until the final exec is drained too: everything before it is.
    wait_until(Duration::from_secs(10), || records(&a, "tr-sig", &["--kind", "exec"]).iter().any(|r| r["comm"] == "sleep" || r["argv"][0] == "sleep"))
        .expect("the last exec drained");
    let sigs = records(&a, "tr-sig", &["--kind", "signal"]);
    assert_eq!(sigs.len(), 1, "exactly the one signal sent outside (not the TERM to its own child): {sigs:#?}");
    assert_eq!(sigs[0]["signal"], 10, "SIGUSR1");
    assert_eq!(sigs[0]["to_pid"], rx, "to the receiver's pid");
    assert_eq!(sigs[0]["pid"], child.id(), "sent by the target's shell");
    let sum = a.json(&["trail", "tr-sig", "--summary"]);
    assert_eq!(sum["total"]["signals"][format!("signal 10 to pid {rx}")], 1, "{sum:#}");
    let _ = outside.kill();
    let _ = outside.wait();
    let _ = child.kill();
    let _ = child.wait();
}
