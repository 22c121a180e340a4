//! Many targets: each command writes the registry once (its level and its
//! history together), and `status` reads the kernel's files outside the
//! state lock. With 24 targets at four levels, the agent is SIGKILLed and
//! restarted: every target is back at its level, in the registry and in
//! the kernel, and it holds from outside (an isolated target's connect is
//! refused, a normal one's reaches a listener the test holds); `status`
//! counts each target's tasks as its cgroup.procs does.
use std::{
    io::ErrorKind,
    net::TcpListener,
    path::Path,
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{wait_until, Agent};

const TARGETS: usize = 24;

/// The level target `i` is put at: normal, throttle, degrade, isolate.
fn level_of(i: usize) -> &'static str {
    ["normal", "throttle", "degrade", "isolate"][i % 4]
}

/// A connect to `port` from a process inside `cgroup`: whether it connected.
fn connect_from(cgroup: &Path, port: u16) -> bool {
    let py = format!("import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), timeout=2)\nexcept OSError:\n raise SystemExit(1)");
    let script = format!("echo $$ > {}/cgroup.procs && exec /usr/bin/python3 -c \"$0\"", cgroup.display());
    Command::new("sh").args(["-c", &script, &py]).status().expect("sh").success()
}

/// Connections the listener has accepted so far.
fn accepted(l: &TcpListener) -> usize {
    let mut n = 0;
    loop {
        match l.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn scale_every_target_keeps_its_level_across_sigkill() {
    let Some(mut agent) = Agent::start() else { return };
    let mut kids: Vec<Child> = Vec::new();
    for i in 0..TARGETS {
        let name = format!("s{i}");
        kids.push(agent.run_bg(&name, &["sleep", "1000"], 1));
        match level_of(i) {
            "throttle" => drop(agent.json(&["throttle", &name, "--syscalls", "100000/s"])),
            "degrade" => drop(agent.json(&["degrade", &name, "--revoke", "net.connect"])),
            "isolate" => drop(agent.json(&["isolate", &name])),
            _ => {}
        }
    }
    agent.kill9();
    agent.spawn();

    let st = agent.json(&["status"]);
    let rows = st["targets"].as_array().expect("targets");
    for i in 0..TARGETS {
        let name = format!("s{i}");
        let row: &Value = rows.iter().find(|r| r["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} listed: {st}"));
        assert_eq!(row["level"], level_of(i), "{name} back at its level: {row}");
        assert_eq!(row["kernel_level"], level_of(i), "{name} at its level in the kernel: {row}");
        let procs = agent.target_cgroup(&name).procs_recursive().len();
        assert_eq!(row["tasks"].as_u64(), Some(procs as u64), "{name}: status counts what cgroup.procs holds");
        if st["membership"]["tracking"].as_str().is_some_and(|t| t.starts_with("on")) {
            assert_eq!(row["members"].as_u64(), Some(procs as u64), "{name}: every task is marked as the target's (the marks map read in batches)");
        }
        let history = row["history"].as_array().map_or(0, Vec::len);
        assert_eq!(history, usize::from(i % 4 != 0) + 1, "{name}: its level changes were written with it (run, then the level): {row}");
    }

    // From outside: the isolated targets are cut, the normal ones are not.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    for i in (0..TARGETS).filter(|i| matches!(level_of(*i), "isolate" | "normal")) {
        let name = format!("s{i}");
        let cg = agent.target_cgroup(&name);
        let before = accepted(&listener);
        let ok = connect_from(cg.path(), port);
        let reached = wait_until(Duration::from_millis(500), || accepted(&listener) > 0).is_some();
        let expect = level_of(i) == "normal";
        assert_eq!((ok, reached), (expect, expect), "{name} ({}): connect from inside (before: {before} accepted)", level_of(i));
    }
    // A stop next to the others (it reads the marks of its target out of
    // every target's): the process is gone, seen from outside.
    let pids = agent.target_cgroup("s1").procs_recursive();
    let r = agent.json(&["stop", "s1"]);
    assert_eq!(r["survivors"], 0, "{r}");
    assert!(pids.iter().all(|p| !crate::harness::alive(*p)), "s1's processes are dead: {pids:?}");
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
}
