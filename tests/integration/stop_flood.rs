//! A stop while a flood of read-only requests goes past the agent's cap on
//! requests in flight: the stop is neither refused nor held behind the
//! flood (its target ends with no process alive, seen from /proc), the
//! requests over the cap are answered at once with `busy` (a clear error,
//! never a hang: every request gets an answer within the client's read
//! timeout), a command that changes something is never `busy` either, and
//! the agent serves normally once the flood ends.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{wait_until, Agent},
    support::{
        process::{assert_all_dead, pids, sleeping_target},
        status::{assert_stopped, stop},
    },
};

/// Connections in the flood, each with [`PIPELINE`] requests written at
/// once: far more than the agent's cap (64) in flight.
const CONNECTIONS: usize = 128;
const PIPELINE: usize = 8;

/// What one flood connection saw: answers ok, answers `busy`, a `busy` message.
type Seen = (usize, usize, Option<String>);

fn flood_connection(socket: &std::path::Path, done: &AtomicBool, busy_seen: &AtomicUsize) -> Seen {
    let mut w = UnixStream::connect(socket).expect("connect");
    // Every request must be answered: a hang fails here, not at a timeout
    // of the whole test.
    w.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
    let mut r = BufReader::new(w.try_clone().expect("clone"));
    let batch: String = (0..PIPELINE).map(|i| format!("{{\"id\":{i},\"cmd\":\"status\",\"args\":{{}}}}\n")).collect();
    let (mut ok, mut busy, mut message) = (0, 0, None);
    while !done.load(Ordering::Relaxed) {
        w.write_all(batch.as_bytes()).expect("send");
        for _ in 0..PIPELINE {
            let mut line = String::new();
            r.read_line(&mut line).expect("every request is answered (no hang)");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"));
            if v["ok"] == true {
                ok += 1;
            } else if v["error"]["code"] == "busy" {
                busy += 1;
                busy_seen.fetch_add(1, Ordering::Relaxed);
                message.get_or_insert_with(|| v["error"]["message"].as_str().unwrap_or_default().to_owned());
            } else {
                panic!("a status request failed with something other than busy: {v}");
            }
        }
    }
    (ok, busy, message)
}

#[test]
fn stop_flood_over_the_cap_stops_the_target_and_answers_busy() {
    let Some(agent) = Agent::start() else { return };
    let (_run, _pid) = sleeping_target(&agent, "capped");
    let (_run2, _pid2) = sleeping_target(&agent, "operated");
    let cg = agent.target_cgroup("capped");
    let before = pids(&cg);
    let done = Arc::new(AtomicBool::new(false));
    let busy_seen = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (done, busy_seen, socket) = (done.clone(), busy_seen.clone(), agent.socket.clone());
            std::thread::spawn(move || flood_connection(&socket, &done, &busy_seen))
        })
        .collect();
    // The flood is past the cap once the agent has refused a request.
    let over = wait_until(Duration::from_secs(15), || busy_seen.load(Ordering::Relaxed) > 0);
    // The stop goes in while the flood runs (a stop is never `busy`).
    let r = if over.is_some() { Some(stop(&agent, "capped")) } else { None };
    if let Some(r) = &r {
        assert_eq!(r["survivors"], 0, "stop under the flood left survivors: {r}");
        // Judged from outside: no process of the target is alive.
        assert_all_dead(&agent, "stop under a flood past the cap", &before);
        // Nor is any other command that changes something: the cap is for
        // reads, which a target may flood too (`json` fails on `busy`).
        let t = agent.json(&["throttle", "operated", "--syscalls", "1000/s"]);
        assert_eq!(t["level"], "throttle", "{t}");
    }
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut busy, mut message) = (0, 0, None);
    for t in threads {
        let (o, b, m) = t.join().expect("flood connection");
        ok += o;
        busy += b;
        message = message.or(m);
    }
    assert!(over.is_some(), "{CONNECTIONS} connections with {PIPELINE} requests each never went past the cap ({ok} answered ok)");
    let r = r.expect("stopped");
    assert!(ok > 0, "no request under the cap was served");
    let message = message.expect("a busy answer has a message");
    assert!(message.contains("in flight") && message.contains("retry"), "busy message does not say what happened: {message}");
    eprintln!("flood: {ok} answered, {busy} busy; stop: {r}");
    // The flood is over: the agent serves as before, and the stop is whole.
    assert_stopped(&agent, "capped", &cg, &r, &before);
}
