//! Many clients at once: pipelined requests answered in order, 50
//! concurrent connections, idle clients that block nobody.
use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{assert_agent_serves, assert_conn_serves, assert_error, assert_ok, Conn};
use crate::harness::Agent;

#[test]
fn pipelined_requests_are_answered_in_order() {
    let Some(agent) = Agent::start() else { return };
    let mut c = Conn::open(&agent);
    let mut batch = String::new();
    for i in 0..20 {
        match i % 4 {
            0 => batch.push_str(&format!("{{\"id\":{i},\"cmd\":\"ping\"}}\n")),
            1 => batch.push_str(&format!("{{\"id\":{i},\"cmd\":\"status\"}}\n")),
            2 => batch.push_str(&format!("{{\"id\":{i},\"cmd\":\"nope\"}}\n")),
            _ => batch.push_str("{garbage\n"),
        }
    }
    c.send(batch.as_bytes()).unwrap();
    for i in 0..20 {
        let r = c.recv();
        match i % 4 {
            0 | 1 => assert_ok(&r, &json!(i)),
            2 => assert_error(&r, &json!(i), "unknown-command"),
            _ => assert_error(&r, &Value::Null, "parse"),
        }
    }
    assert_conn_serves(&mut c);
}

#[test]
fn many_concurrent_connections_are_all_answered() {
    let Some(agent) = Agent::start() else { return };
    let n = 50;
    let connected = Arc::new(Barrier::new(n + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let socket = agent.socket.clone();
            let connected = connected.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open_path(&socket);
                // All 50 connections are open at once before anyone sends.
                connected.wait();
                let cmd = if i % 2 == 0 { "ping" } else { "status" };
                c.call(&format!("{{\"id\":{i},\"cmd\":\"{cmd}\"}}"))
            })
        })
        .collect();
    connected.wait();
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().expect("client thread panicked");
        assert_ok(&r, &json!(i));
        if i % 2 == 0 {
            assert_eq!(r["result"]["pong"], true, "{r}");
        } else {
            assert!(r["result"]["targets"].is_array(), "{r}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "50 pings took {:?}", started.elapsed());
    assert_agent_serves(&agent);
}

#[test]
fn idle_client_does_not_block_others() {
    let Some(agent) = Agent::start() else { return };
    // One client connects and never sends; another sends half a line and waits.
    let mut idle = Conn::open(&agent);
    let mut slow = Conn::open(&agent);
    slow.send(br#"{"id":"slow","cmd":"pi"#).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let t0 = Instant::now();
    let mut c = Conn::open(&agent);
    let r = c.call(r#"{"id":2,"cmd":"ping"}"#);
    assert_ok(&r, &json!(2));
    assert!(t0.elapsed() < Duration::from_secs(2), "ping took {:?} with an idle client connected", t0.elapsed());
    let t0 = Instant::now();
    assert!(agent.kp(&["status"]).status.success());
    assert!(t0.elapsed() < Duration::from_secs(2), "status took {:?} with an idle client connected", t0.elapsed());

    // Both are still served once they do speak.
    slow.send(b"ng\"}\n").unwrap();
    assert_ok(&slow.recv(), &json!("slow"));
    assert_conn_serves(&mut idle);
    assert_agent_serves(&agent);
}
