//! Tests: human checkpoints. `propose` asks for a level that waits for a
//! human; `approve` applies it, `deny` drops it, a timeout follows its
//! policy. The level is judged from outside the target: a TCP listener
//! outside counts the connections `nc` makes from inside the target's
//! cgroup (isolation refuses them), and /proc/PID/io counts the
//! workload's syscalls (throttle paces them).
use std::{path::Path, time::Duration};

use serde_json::Value;

mod approvers;
mod timeouts;

use crate::{
    harness::{wait_until, Agent},
    support::{
        cgroup::in_cgroup_within,
        net::Server,
        process::{py, run_bg, show, syscall_rate, text},
        status::target_row,
    },
};

/// A TCP listener outside every target: one `conn` line per accept.
const LISTENER_PY: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print("port", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    print("conn", flush=True)
    c.close()
"#;

/// A tight loop of read(2) of 0 bytes: its syscalls show in /proc/PID/io `syscr`.
const READ_LOOP: &str = "import os\nfd = os.open('/dev/zero', os.O_RDONLY)\nwhile True:\n    os.read(fd, 0)\n";

pub(super) fn listener(agent: &Agent) -> (Server, u16) {
    let mut s = Server::start(agent.dir.path(), "listener", &[py(), "-u", "-c", LISTENER_PY]);
    let port = s.port();
    (s, port)
}

/// Whether a connect from inside `cg` reaches the listener: nc's exit
/// status AND the listener's own count must agree.
pub(super) fn connects(srv: &Server, port: u16, cg: &Path) -> bool {
    let before = srv.count("conn");
    let out = in_cgroup_within(10, cg, &["nc", "-z", "-w", "2", "127.0.0.1", &port.to_string()]);
    let seen = wait_until(Duration::from_secs(2), || srv.count("conn") > before).is_some();
    assert_eq!(out.status.success(), seen, "nc and the listener disagree: {}\n{}", show(&out), srv.describe());
    seen
}

pub(super) fn propose(agent: &Agent, args: &[&str]) -> u64 {
    let mut a = vec!["propose"];
    a.extend_from_slice(args);
    let r = agent.json(&a);
    r["id"].as_u64().unwrap_or_else(|| panic!("no id in {r}"))
}

/// The pending action `id` as `pending --json` lists it.
pub(super) fn pending(agent: &Agent, id: u64) -> Option<Value> {
    agent.json(&["pending"])["pending"].as_array().and_then(|l| l.iter().find(|p| p["id"] == id).cloned())
}

pub(super) fn level(agent: &Agent, name: &str) -> String {
    target_row(agent, name).map(|r| r["level"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

/// Runs a killpath command expected to fail; its stderr.
pub(super) fn fails(agent: &Agent, args: &[&str]) -> String {
    let out = agent.kp(args);
    assert!(!out.status.success(), "killpath {args:?} should fail: {}", show(&out));
    text(&out.stderr)
}

/// Journal records with this action and this pending id.
pub(super) fn records(agent: &Agent, action: &str, id: u64) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == action && r["params"]["id"] == id).collect()
}

/// propose isolate: listed, nothing enforced (the workload still
/// connects); approve: isolated (the connect fails, the listener sees
/// nothing), the journal names the approver's uid and pid; approving
/// again is an error.
#[test]
fn approve_applies_the_proposed_level() {
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("t");
    let (srv, port) = listener(&agent);
    assert!(connects(&srv, port, cg.path()), "the target cannot connect before anything");

    let id = propose(&agent, &["t", "--level", "isolate", "--reason", "exfil suspected", "--evidence", r#"{"egress_bytes_per_s": 12345678}"#]);
    let p = pending(&agent, id).expect("the proposal is listed");
    assert_eq!(p["target"], "t", "{p}");
    assert_eq!(p["level"], "isolate", "{p}");
    assert_eq!(p["reason"], "exfil suspected", "{p}");
    assert_eq!(p["evidence"]["egress_bytes_per_s"], 12345678, "{p}");
    assert_eq!(p["origin"]["caller"]["uid"], 0, "{p}");
    assert_eq!(p["on_timeout"], "hold", "{p}");
    assert_eq!(p["timeout_ms"], 300_000, "{p}");
    let row = target_row(&agent, "t").unwrap();
    assert_eq!(row["level"], "normal", "{row}");
    assert_eq!(row["pending"]["count"], 1, "{row}");
    assert_eq!(row["pending"]["ids"][0], id, "{row}");
    assert!(connects(&srv, port, cg.path()), "a pending isolate must not isolate");
    assert!(agent.journal().iter().any(|r| r["action"] == "pending" && r["high_priority"] == true && r["params"]["id"] == id), "no high-priority alert");

    let out = agent.cmd(&["--json", "approve", &id.to_string(), "--reason", "confirmed"]).output().expect("approve");
    assert!(out.status.success(), "approve: {}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["applied"]["level"], "isolate", "{r}");
    assert!(!connects(&srv, port, cg.path()), "approved isolate did not cut the target off");
    assert_eq!(level(&agent, "t"), "isolate");
    assert!(pending(&agent, id).is_none());

    let approve = records(&agent, "approve", id);
    let intent = approve.iter().find(|r| r["phase"] == "intent").expect("approve intent journaled");
    assert_eq!(intent["actor"]["uid"], 0, "{intent}");
    assert_eq!(intent["params"]["approver"]["uid"], 0, "{intent}");
    assert_eq!(intent["params"]["approver"]["user"], "root", "{intent}");
    assert_eq!(intent["params"]["reason"], "confirmed", "{intent}");
    let pid = intent["actor"]["pid"].as_i64().unwrap();
    assert!(pid > 0 && intent["params"]["approver"]["pid"] == pid, "{intent}");
    // The skip (normal -> isolate) is journaled with the approval as reason.
    let skip = agent.journal().into_iter().find(|r| r["action"] == "level-skipped").expect("skip journaled");
    assert!(skip["params"]["skip_reason"].as_str().unwrap().contains(&format!("approved pending action {id}")), "{skip}");

    let again = fails(&agent, &["approve", &id.to_string()]);
    assert!(again.contains("not pending") && again.contains("approved"), "{again}");
}

/// The same asker (one connection: same pid, so the same origin) proposing
/// the same level twice gets the one pending action back; another level
/// is another action.
#[test]
fn repeated_proposal_is_one_pending_action() {
    use std::io::{BufRead, Write};
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut ask = |n: u32, level: &str| -> Value {
        writeln!(s, r#"{{"id":{n},"cmd":"propose","args":{{"name":"t","level":"{level}","evidence":{{"n":{n}}}}}}}"#).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        v["result"].clone()
    };
    let a = ask(1, "isolate");
    let b = ask(2, "isolate");
    let c = ask(3, "stop");
    assert_eq!(a["id"], b["id"], "{a} {b}");
    assert_eq!(b["already_pending"], true, "{b}");
    assert_ne!(a["id"], c["id"]);
    assert_eq!(agent.json(&["pending"])["pending"].as_array().unwrap().len(), 2);
    assert_eq!(agent.journal().iter().filter(|r| r["action"] == "propose" && r["phase"] == "intent").count(), 2);
}

/// deny: dropped, the target untouched (still connects), the reason
/// journaled; an empty reason is refused and the action stays.
#[test]
fn deny_drops_with_a_reason() {
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("t");
    let (srv, port) = listener(&agent);
    let id = propose(&agent, &["t", "--level", "stop"]);
    let e = fails(&agent, &["deny", &id.to_string(), "--reason", "  "]);
    assert!(e.contains("deny needs a reason"), "{e}");
    let e = fails(&agent, &["deny", &id.to_string()]);
    assert!(e.contains("--reason"), "{e}");
    assert!(pending(&agent, id).is_some(), "a refused deny dropped the action");

    let r = agent.json(&["deny", &id.to_string(), "--reason", "false positive: backup job"]);
    assert_eq!(r["reason"], "false positive: backup job", "{r}");
    assert!(pending(&agent, id).is_none());
    assert_eq!(level(&agent, "t"), "normal");
    assert!(connects(&srv, port, cg.path()), "a denied stop changed the target");
    assert_eq!(cg.procs_recursive().len(), 1, "a denied stop killed tasks");
    let deny = records(&agent, "deny", id);
    assert!(deny.iter().any(|r| r["phase"] == "intent" && r["params"]["reason"] == "false positive: backup job"), "{deny:?}");
    let e = fails(&agent, &["approve", &id.to_string()]);
    assert!(e.contains("denied"), "{e}");
}

/// `--meanwhile throttle`: the throttle (escalation defaults: 1,000
/// syscalls/s) is in force at once, measured on the workload's syscalls
/// from outside, while isolate waits; approve then isolates.
#[test]
fn meanwhile_throttles_while_isolate_waits() {
    let Some(agent) = Agent::start() else { return };
    let w = run_bg(&agent, "loop", &[py(), "-c", READ_LOOP], 1);
    let pid = w.pid();
    let free = syscall_rate(pid, Duration::from_secs(1));
    assert!(free > 20_000.0, "the unthrottled loop is too slow to show a ceiling: {free:.0}/s");
    let id = propose(&agent, &["loop", "--level", "isolate", "--meanwhile", "throttle"]);
    std::thread::sleep(Duration::from_millis(300));
    let paced = syscall_rate(pid, Duration::from_secs(2));
    eprintln!("meanwhile throttle: {free:.0}/s before, {paced:.0}/s after (default ceiling 1000/s)");
    assert!(paced < 1_500.0, "meanwhile throttle not in force: {paced:.0}/s");
    assert_eq!(level(&agent, "loop"), "throttle");
    let p = pending(&agent, id).expect("isolate still pending");
    assert_eq!(p["meanwhile"], "throttle", "{p}");
    assert_eq!(p["meanwhile_outcome"], "ok", "{p}");

    let (srv, port) = listener(&agent);
    let cg = agent.target_cgroup("loop");
    assert!(connects(&srv, port, cg.path()), "throttled (not yet isolated) target cannot connect");
    agent.json(&["approve", &id.to_string()]);
    assert_eq!(level(&agent, "loop"), "isolate");
    assert!(!connects(&srv, port, cg.path()), "approved isolate did not cut the target off");
}

/// A proposal acknowledged before a SIGKILL of the agent is pending
/// after the restart, with its id; ids are not reused; approve works.
#[test]
fn pending_survives_agent_kill9() {
    let Some(mut agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("t");
    let (srv, port) = listener(&agent);
    let id = propose(&agent, &["t", "--level", "isolate", "--reason", "before the crash", "--timeout", "10m"]);
    agent.kill9();
    agent.spawn();
    let p = pending(&agent, id).expect("the proposal survived kill -9");
    assert_eq!(p["reason"], "before the crash", "{p}");
    assert_eq!(p["timeout_ms"], 600_000, "{p}");
    assert!(connects(&srv, port, cg.path()), "a pending isolate must not isolate after a restart");
    let id2 = propose(&agent, &["t", "--level", "stop"]);
    assert!(id2 > id, "id {id2} reused after restart (first was {id})");
    agent.json(&["approve", &id.to_string()]);
    assert!(!connects(&srv, port, cg.path()), "approved isolate did not cut the target off");
}

/// Bad requests get clear errors and change nothing; the agent keeps
/// serving. A task inside the target may not propose, approve or deny, nor
/// list pending actions or tripwire rules.
#[test]
fn approvals_bad_input_and_confinement() {
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let cases: &[(&[&str], &str)] = &[
        (&["propose", "nosuch", "--level", "isolate"], "unknown target"),
        (&["propose", "t", "--level", "vaporize"], "unknown level"),
        (&["propose", "t", "--level", "normal"], "from throttle to stop"),
        (&["propose", "t", "--level", "degrade", "--meanwhile", "degrade"], "not below"),
        (&["propose", "t", "--level", "isolate", "--meanwhile", "isolate"], "throttle or degrade"),
        (&["propose", "t", "--level", "isolate", "--timeout", "0"], "zero"),
        (&["propose", "t", "--level", "isolate", "--timeout", "soon"], "bad timeout"),
        (&["propose", "t", "--level", "isolate", "--on-timeout", "later"], "hold, apply or drop"),
        (&["propose", "t", "--level", "isolate", "--evidence", "{not json"], "not JSON"),
        (&["approve", "999"], "no such pending action"),
        (&["deny", "999", "--reason", "x"], "no such pending action"),
    ];
    for (args, want) in cases {
        let e = fails(&agent, args);
        assert!(e.contains(want), "killpath {args:?}: expected {want:?} in: {e}");
        assert!(crate::harness::alive(agent.pid()), "agent died after {args:?}");
        assert!(agent.kp(&["status"]).status.success(), "agent not serving after {args:?}");
    }
    assert_eq!(agent.json(&["pending"])["pending"], Value::Array(vec![]));
    assert_eq!(level(&agent, "t"), "normal");

    // From inside the target: every decision is refused, and so is
    // reading what waits for approval (and the tripwire rules): a workload
    // must not learn how close it is to being cut.
    let id = propose(&agent, &["t", "--level", "isolate"]);
    let cg = agent.target_cgroup("t");
    let env = [("KILLPATH_SOCKET", agent.socket.to_str().unwrap())];
    for args in [
        vec!["propose", "t", "--level", "stop"],
        vec!["approve", &id.to_string()],
        vec!["deny", &id.to_string(), "--reason", "mine"],
        vec!["pending"],
        vec!["tripwire", "list"],
    ] {
        let mut cmd = vec!["env"];
        let kv = format!("{}={}", env[0].0, env[0].1);
        cmd.push(&kv);
        cmd.push(crate::harness::BIN);
        cmd.extend(args.iter().copied());
        let out = in_cgroup_within(10, cg.path(), &cmd);
        assert!(!out.status.success() && text(&out.stderr).contains("inside target"), "{args:?} from inside the target: {}", show(&out));
    }
    assert!(pending(&agent, id).is_some(), "a confined caller changed the pending action");
    assert_eq!(agent.json(&["pending"])["pending"].as_array().unwrap().len(), 1);
    assert_eq!(level(&agent, "t"), "normal");
}
