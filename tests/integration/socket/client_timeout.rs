//! The CLI's wait for an answer: `--request-timeout` / `KILLPATH_REQUEST_TIMEOUT` bound
//! it (a socket that accepts and never answers, like an agent wedged in
//! the kernel), and an impossible value is refused before anything is
//! sent. Needs no privileges and no agent.
use std::{
    os::unix::net::UnixListener,
    process::Command,
    time::{Duration, Instant},
};

use crate::harness::BIN;

#[test]
fn client_timeout_bounds_the_wait_and_refuses_impossible_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("mute.sock");
    // Accepts connections (the kernel queues them) and never reads.
    let _mute = UnixListener::bind(&sock).expect("bind");
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("--socket").arg(&sock).args(args).env_remove("KILLPATH_REQUEST_TIMEOUT");
        if let Some(v) = env {
            c.env("KILLPATH_REQUEST_TIMEOUT", v);
        }
        let t = Instant::now();
        let out = c.output().expect("run killpath");
        (out, t.elapsed())
    };
    for (args, env) in [(&["--request-timeout", "1", "status"][..], None), (&["status"][..], Some("1"))] {
        let (out, took) = run(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded against a mute socket");
        assert!(err.contains("did not answer within 1s"), "{args:?}: {err}");
        assert!(took < Duration::from_secs(20), "{args:?} waited {took:?} with a 1 s timeout");
    }
    for bad in ["0", "-3", "abc", "inf", "NaN", "100000"] {
        let (out, _) = run(&[&format!("--request-timeout={bad}"), "status"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--request-timeout {bad}: {err}");
        assert!(err.contains("--request-timeout") && err.contains(bad), "--request-timeout {bad}: {err}");
    }
    // A bad value in the environment is warned about and ignored, never a
    // usage error: it must not make `stop` fail before it is sent.
    let missing = dir.path().join("no-agent.sock");
    for bad in ["0", "5m", "abc"] {
        let out = Command::new(BIN).arg("--socket").arg(&missing).args(["status"]).env("KILLPATH_REQUEST_TIMEOUT", bad).output().expect("run killpath");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "KILLPATH_REQUEST_TIMEOUT={bad}: {err}");
        assert!(err.contains("KILLPATH_REQUEST_TIMEOUT ignored") && err.contains("cannot reach the agent"), "KILLPATH_REQUEST_TIMEOUT={bad}: {err}");
    }
}
