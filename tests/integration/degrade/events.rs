//! A `killpath --json events` subscriber that collects every event.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::{
    harness::{wait_until, Agent},
    support::process::{run_bg, Reaped},
};

/// `killpath --json events`, spawned with stdout piped; a thread collects
/// every line. Dropping it kills the subscriber.
pub(crate) struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    _sentinel: Reaped,
}

impl Events {
    /// Subscribes, and returns once the subscription is known to be live:
    /// a sentinel target is degraded (with a unique reason) until its alert
    /// shows up on the stream, so nothing after this call can be missed.
    pub(crate) fn start(agent: &Agent) -> Events {
        let sentinel = run_bg(agent, "events-sentinel", &["sleep", "1000"], 1);
        let mut child = agent
            .cmd(&["--json", "events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn killpath events");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| json!({"unparsed": line, "error": e.to_string()}));
                l2.lock().unwrap().push(v);
            }
        });
        let ev = Events { child, lines, _sentinel: sentinel };
        for i in 0..100 {
            let reason = format!("events-sentinel-{i}");
            agent.json(&["degrade", "events-sentinel", "--revoke", "net.connect", "--reason", &reason]);
            if wait_until(Duration::from_millis(500), || ev.all().iter().any(|e| e["type"] == "alert" && e["reason"] == reason.as_str())).is_some() {
                return ev;
            }
        }
        panic!("the events subscriber never received an alert: {:?}\nagent log:\n{}", ev.all(), agent.log_text());
    }

    pub(crate) fn all(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Events about target `name` of type `ty`.
    pub(crate) fn of(&self, name: &str, ty: &str) -> Vec<Value> {
        self.all().into_iter().filter(|e| e["target"] == name && e["type"] == ty).collect()
    }

    /// Waits until `f` holds for the collected events.
    pub(crate) fn wait(&self, timeout: Duration, what: &str, f: impl Fn(&[Value]) -> bool) {
        if wait_until(timeout, || f(&self.all())).is_none() {
            panic!("events: never saw {what}; got {:?}", self.all());
        }
    }

    /// Waits until no new event arrived for `quiet`.
    pub(crate) fn settle(&self, quiet: Duration) {
        let mut n = self.all().len();
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            thread::sleep(Duration::from_millis(50));
            let m = self.all().len();
            if m != n {
                (n, since) = (m, Instant::now());
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
