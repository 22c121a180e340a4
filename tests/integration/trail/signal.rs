//! Signals to tasks outside the target are in the trail; signals inside
//! it are not. A signal the kernel sends on the workload's behalf where
//! the workload chose the receiver (an I/O signal: F_SETOWN + F_SETSIG) is
//! in it too, flagged as kernel-generated.
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
    let trap = format!("trap 'echo usr1 >> {g}' USR1; trap 'echo usr2 >> {g}' USR2; while :; do sleep 0.05; done", g = got.display());
    let mut outside = Command::new("sh").args(["-c", &trap]).stdin(Stdio::null()).spawn().expect("receiver");
    let rx = outside.id();
    // Give sh time to install its trap: it has, once it forked its first sleep.
    wait_until(Duration::from_secs(5), || std::fs::read_to_string(format!("/proc/{rx}/task/{rx}/children")).is_ok_and(|c| !c.trim().is_empty()))
        .expect("receiver running");
    // Inside: one signal out (USR1 to the receiver), one in (TERM to its
    // own child), and USR2 out through an I/O signal: the socket's owner is
    // the receiver, F_SETSIG (10) makes its readiness signal SIGUSR2.
    let io_signal = format!(
        "import socket,fcntl,os,signal\na,b=socket.socketpair()\nfcntl.fcntl(a,fcntl.F_SETOWN,{rx})\nfcntl.fcntl(a,10,signal.SIGUSR2)\nfcntl.fcntl(a,fcntl.F_SETFL,fcntl.fcntl(a,fcntl.F_GETFL)|os.O_ASYNC)\nb.send(b'x')"
    );
    let script = format!("sleep 60 & kill -TERM $!; kill -USR1 {rx}; python3 -c \"{io_signal}\"; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, "tr-sig", &script);
    wait_until(Duration::from_secs(10), || done.exists()).expect("script ran");
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&got).is_ok_and(|s| s.contains("usr1") && s.contains("usr2")))
        .expect("the receiver got USR1 and USR2 (seen from outside)");
    // Until the I/O signal is drained: the ring is drained in order, so the
    // TERM sent before it would be there too if it were recorded. (Waiting
    // for an exec of `sleep` did not do: the script's first `sleep 60 &`
    // is one, drained before the python's signal; CI caught it.)
    wait_until(Duration::from_secs(10), || records(&a, "tr-sig", &["--kind", "signal"]).len() >= 2).expect("both signal records");
    let sigs = records(&a, "tr-sig", &["--kind", "signal"]);
    assert_eq!(sigs.len(), 2, "exactly the two signals sent outside (not the TERM to its own child): {sigs:#?}");
    assert_eq!(sigs[0]["signal"], 10, "SIGUSR1");
    assert_eq!(sigs[0]["to_pid"], rx, "to the receiver's pid");
    assert_eq!(sigs[0]["pid"], child.id(), "sent by the target's shell");
    assert_eq!(sigs[0]["kernel_generated"], false, "{sigs:#?}");
    assert_eq!(sigs[1]["signal"], 12, "SIGUSR2 through the socket's owner");
    assert_eq!(sigs[1]["to_pid"], rx, "{sigs:#?}");
    assert_eq!(sigs[1]["kernel_generated"], true, "{sigs:#?}");
    let sum = a.json(&["trail", "tr-sig", "--summary"]);
    assert_eq!(sum["total"]["signals"][format!("signal 10 to pid {rx}")], 1, "{sum:#}");
    let _ = outside.kill();
    let _ = outside.wait();
    let _ = child.kill();
    let _ = child.wait();
}

/// An escape attempt (a root task writing its pid into the cgroup2 root's
/// `cgroup.procs`) is in the trail, by the escaping pid.
#[test]
fn trail_lists_escape_attempts() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let root = killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount").join("cgroup.procs");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; echo 0 > {}; exec sleep 60", go.display(), root.display());
    let mut child = run_recorded(&a, "tr-esc", &script);
    let pid = child.id();
    std::fs::write(&go, "").expect("go");
    // Judged from outside first: the journal's escape record (the agent moved it back).
    wait_until(Duration::from_secs(10), || a.journal().iter().any(|r| r["action"] == "escape" && r["params"]["tgid"] == pid)).expect("the escape happened");
    wait_until(Duration::from_secs(10), || !records(&a, "tr-esc", &["--kind", "escape"]).is_empty()).expect("escape in the trail");
    let esc = records(&a, "tr-esc", &["--kind", "escape"]);
    assert_eq!(esc.len(), 1, "{esc:#?}");
    assert_eq!(esc[0]["escaping_pid"], pid);
    assert_eq!(esc[0]["refused"], false, "below isolate the kernel lets it move (the agent moves it back)");
    let _ = child.kill();
    let _ = child.wait();
}
