//! A task inside a target may read but never change anything over the
//! socket, whatever its uid: root inside a target sending `restore`,
//! `release`, `stop`, `run` (create) or `drill-begin` is refused with
//! `forbidden`, the refusal is journaled as high priority, and the
//! target's level is unchanged, as seen from outside.
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{assert_error, assert_ok};
use crate::{
    harness::{alive, Agent},
    support::process::{py, show, sleeping_target, text},
};

/// Connects to the socket FIRST, then (with a cgroup dir as argv[1], not
/// "-") moves itself into that cgroup, then sends each request line and
/// prints each response line: the agent must judge the caller where it is
/// when it asks, not where it was when it connected. The first line
/// printed is its pid and cgroup. A `SLEEP` argument waits 1.1 s.
const CLIENT_PY: &str = r#"
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[2])
if sys.argv[1] != "-":
    with open(sys.argv[1] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
print(json.dumps({"pid": os.getpid(), "uid": os.getuid(), "cgroup": open("/proc/self/cgroup").read().strip()}), flush=True)
fr = s.makefile("rb")
for req in sys.argv[3:]:
    if req == "SLEEP":
        time.sleep(1.1)
        continue
    s.sendall(req.encode() + b"\n")
    sys.stdout.write(fr.readline().decode())
    sys.stdout.flush()
"#;

/// The client's identity line and its responses.
fn parse(out: &std::process::Output, n: usize) -> (Value, Vec<Value>) {
    assert!(out.status.success(), "client failed: {}", show(out));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")));
    let ident = lines.next().expect("identity line");
    let responses: Vec<Value> = lines.collect();
    assert_eq!(responses.len(), n, "one response per request: {responses:?}");
    (ident, responses)
}

/// Journal records with action `refused` from `pid`.
fn refusals_from(agent: &Agent, pid: u64) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == "refused" && r["actor"]["pid"] == pid).collect()
}

fn assert_inside(resp: &Value, id: u64, target: &str) {
    assert_error(resp, &json!(id), "forbidden");
    let msg = resp["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("inside target \"{target}\"")) && msg.contains("may only read"), "{resp}");
}

#[test]
fn root_inside_target_cannot_lift_its_own_level() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let r = agent.json(&["throttle", "t", "--syscalls", "100000"]);
    assert_eq!(r["level"], "throttle", "{r}");
    let cg = agent.target_cgroup("t");

    let reqs = [
        r#"{"id":1,"cmd":"restore","args":{"name":"t","to":"normal"}}"#,
        r#"{"id":2,"cmd":"release","args":{"name":"t"}}"#,
        r#"{"id":3,"cmd":"stop","args":{"name":"t"}}"#,
        r#"{"id":4,"cmd":"create","args":{"name":"evil","move_caller":true}}"#,
        r#"{"id":5,"cmd":"drill-begin","args":{"target":"t"}}"#,
        r#"{"id":6,"cmd":"status","args":{"name":"t"}}"#,
        r#"{"id":7,"cmd":"ping"}"#,
    ];
    let out = Command::new(py()).args(["-c", CLIENT_PY]).arg(cg.path()).arg(&agent.socket).args(reqs).stdin(Stdio::null()).output().unwrap();
    let (ident, r) = parse(&out, reqs.len());
    assert_eq!(ident["uid"], 0, "the client must be root: {ident}");
    assert!(ident["cgroup"].as_str().unwrap().ends_with("/t"), "the client must be inside t when it asks: {ident}");
    for (i, resp) in r.iter().take(5).enumerate() {
        assert_inside(resp, i as u64 + 1, "t");
    }
    assert_ok(&r[5], &json!(6));
    assert_eq!(r[5]["result"]["targets"][0]["level"], "throttle", "{}", r[5]);
    assert_ok(&r[6], &json!(7));

    // From outside: nothing changed.
    assert!(alive(pid), "the target's process was killed");
    let st = agent.json(&["status", "t"]);
    assert_eq!(st["targets"][0]["level"], "throttle", "{st}");
    assert_eq!(st["targets"][0]["kernel_level"], "throttle", "{st}");
    assert!(!agent.target_cgroup("evil").exists(), "a target was created from inside one");
    assert_eq!(agent.json(&["status"])["targets"].as_array().unwrap().len(), 1);

    // Each refusal journaled, high priority, naming the target.
    let client = ident["pid"].as_u64().unwrap();
    let refused = refusals_from(&agent, client);
    let cmds: Vec<&str> = refused.iter().map(|r| r["params"]["cmd"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["restore", "release", "stop", "create", "drill-begin"], "{refused:?}");
    for rec in &refused {
        assert_eq!(rec["high_priority"], true, "{rec}");
        assert_eq!(rec["params"]["inside_target"], "t", "{rec}");
        assert_eq!(rec["actor"]["uid"], 0, "{rec}");
        assert!(rec["outcome"].as_str().unwrap().starts_with("forbidden"), "{rec}");
    }
    assert!(agent.journal().iter().all(|r| r["phase"] != "intent" || r["actor"]["pid"] != client), "an intent was journaled for the refused caller");

    // The same requests from outside (root, the test's own cgroup) work:
    // the refusal was about where the caller is.
    let r = agent.json(&["restore", "t", "--to", "normal"]);
    assert_eq!(r["level"], "normal", "{r}");
}

#[test]
fn a_workload_started_by_run_cannot_release_or_stop() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let reqs = [r#"{"id":1,"cmd":"release","args":{"name":"inner"}}"#, r#"{"id":2,"cmd":"stop","args":{"name":"t"}}"#, r#"{"id":3,"cmd":"status"}"#];
    let sock = agent.socket.to_string_lossy().into_owned();
    let mut args = vec!["run", "inner", "--", py(), "-c", CLIENT_PY, "-", &sock];
    args.extend_from_slice(&reqs);
    let out = agent.cmd(&args).stdin(Stdio::null()).output().unwrap();
    let (ident, r) = parse(&out, reqs.len());
    assert!(ident["cgroup"].as_str().unwrap().ends_with("/inner"), "{ident}");
    assert_inside(&r[0], 1, "inner");
    assert_inside(&r[1], 2, "inner");
    assert_ok(&r[2], &json!(3));
    assert!(alive(pid), "target t was stopped from inside target inner");
    let st = agent.json(&["status"]);
    let names: Vec<&str> = st["targets"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["inner", "t"], "{st}");
    assert_eq!(refusals_from(&agent, ident["pid"].as_u64().unwrap()).len(), 2);
}

#[test]
fn a_flood_of_refused_requests_is_counted_not_journaled_one_by_one() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let cg = agent.target_cgroup("t");
    let release = r#"{"id":1,"cmd":"release","args":{"name":"t"}}"#;
    let mut reqs = vec![release; 100];
    reqs.push("SLEEP");
    reqs.push(release);
    let out = Command::new(py()).args(["-c", CLIENT_PY]).arg(cg.path()).arg(&agent.socket).args(&reqs).stdin(Stdio::null()).output().unwrap();
    let (ident, r) = parse(&out, 101);
    for resp in &r {
        assert_inside(resp, 1, "t");
    }
    assert!(alive(pid));
    assert_eq!(agent.json(&["status", "t"])["targets"][0]["level"], "normal");
    let refused = refusals_from(&agent, ident["pid"].as_u64().unwrap());
    // At most 10 a second are journaled; the rest are counted in the next
    // journaled one, so journaled + counted = every refusal.
    assert!(refused.len() < 60, "{} refusals journaled one by one", refused.len());
    let counted: u64 = refused.iter().map(|r| r["params"]["refusals_not_journaled_before"].as_u64().unwrap()).sum();
    assert_eq!(refused.len() as u64 + counted, 101, "{refused:?}");
    assert!(counted > 0, "the flood was not rate-limited: {refused:?}");
}
