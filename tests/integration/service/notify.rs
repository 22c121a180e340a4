//! Readiness through sd_notify, with systemd's protocol and no systemd:
//! the test is the service manager, a unix datagram socket named by
//! NOTIFY_SOCKET. READY=1 must arrive only once the agent serves: at that
//! moment, with no retry, the socket answers and a stop kills a real
//! process. A start that fails never says READY=1; SIGTERM says STOPPING=1.
use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use killpath_sandbox::{Client, Sandbox};
use serde_json::json;

use super::{run, text};
use crate::harness::{alive, root, wait_until, BIN};

/// Kills the agent this test started itself if the test ends early.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `killpath agent` on the sandbox's paths, with NOTIFY_SOCKET set.
fn agent(sandbox: &Sandbox, notify: &Path, state_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .arg("--socket")
        .arg(sandbox.socket())
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--pin-dir")
        .arg(sandbox.pin_dir())
        .arg("--cgroup-parent")
        .arg(sandbox.cgroup_parent())
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// The next notification, as its lines.
fn next(rx: &UnixDatagram) -> std::io::Result<Vec<String>> {
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect())
}

#[test]
fn service_agent_notifies_ready_only_when_serving() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox::in_dir("kptest", dir.path()).expect("sandbox");
    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).expect("bind notify socket");
    rx.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let log = std::fs::File::create(sandbox.log()).expect("log");
    let mut agent = Started(agent(&sandbox, &notify, sandbox.state_dir()).stderr(log).spawn().expect("spawn agent"));
    let log_text = || std::fs::read_to_string(sandbox.log()).unwrap_or_default();

    let ready = next(&rx).unwrap_or_else(|e| panic!("no notification from the agent ({e}):\n{}", log_text()));
    // The moment READY=1 is read: the socket answers the first connection.
    let pong = Client::connect(sandbox.socket(), Duration::from_secs(10)).and_then(|mut c| c.call("ping", json!({})));
    assert_eq!(ready.first().map(String::as_str), Some("READY=1"), "first notification: {ready:?}");
    assert!(ready.iter().any(|l| l.starts_with("STATUS=serving ")), "{ready:?}");
    let (_, pong) = pong.unwrap_or_else(|e| panic!("READY=1 was sent before the socket answered: {e}\n{}", log_text()));
    assert_eq!(pong["pid"], agent.0.id(), "the agent that answered is the one that notified");

    // And it enforces: a real process adopted and stopped, dead from outside.
    let mut victim = Command::new("sleep").arg("1000").spawn().expect("sleep");
    let kp = |args: &[&str]| run(Command::new(BIN).arg("--json").args(args).env("KILLPATH_SOCKET", sandbox.socket()).env_remove("KILLPATH_LOG"));
    let out = kp(&["adopt", "v", "--pid", &victim.id().to_string()]);
    assert!(out.status.success(), "adopt: {}\n{}", text(&out), log_text());
    let out = kp(&["stop", "v"]);
    assert!(out.status.success(), "stop: {}\n{}", text(&out), log_text());
    let pid = victim.id() as i32;
    wait_until(Duration::from_secs(10), || !alive(pid)).unwrap_or_else(|| panic!("the stopped process {pid} survived"));
    let _ = victim.wait();

    // SIGTERM: STOPPING=1, then a clean exit.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.0.id() as i32), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopping = next(&rx).unwrap_or_else(|e| panic!("no STOPPING=1 after SIGTERM ({e}):\n{}", log_text()));
    assert_eq!(stopping.first().map(String::as_str), Some("STOPPING=1"), "{stopping:?}");
    let status = agent.0.wait().expect("wait agent");
    assert!(status.success(), "agent exit after SIGTERM: {status:?}\n{}", log_text());
}

#[test]
fn service_agent_that_fails_to_start_never_notifies_ready() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox::in_dir("kptest", dir.path()).expect("sandbox");
    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).expect("bind notify socket");
    // A state dir that cannot be created: a regular file is in the way.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"").expect("file");
    let out = agent(&sandbox, &notify, &blocked.join("state")).output().expect("run agent");
    assert!(!out.status.success(), "the agent started with its state dir under a file: {}", text(&out));
    // Anything it sent is queued by now: it has exited.
    rx.set_nonblocking(true).expect("nonblocking");
    let mut sent = Vec::new();
    while let Ok(lines) = next(&rx) {
        sent.extend(lines);
    }
    assert!(!sent.iter().any(|l| l == "READY=1"), "a failed start said READY=1: {sent:?}");
    assert!(!sandbox.socket().exists(), "a failed start left a socket");
}
