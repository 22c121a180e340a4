//! Callers identified by SO_PEERCRED: only root (or the configured group)
//! may change anything; every refusal is journaled.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

use super::{assert_agent_serves, assert_error, assert_ok, assert_untouched};
use crate::{
    harness::{alive, wait_until, Agent, BIN},
    support::process::sleeping_target,
};

const NOBODY: u32 = 65534;

/// Makes the agent's socket reachable by any uid: the private tempdir is
/// 0700, the socket 0600.
fn open_to_everyone(agent: &Agent) {
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// Connects as another user: `setpriv` drops to uid/gid (and exactly
/// `groups`), then python connects to `socket`, sends each request line and
/// prints each response line. Returns (first line: its own identity,
/// responses, its pid).
const CLIENT_PY: &str = r#"
import json, os, socket, sys
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}), flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rb")
for req in sys.argv[2:]:
    s.sendall(req.encode() + b"\n")
    line = f.readline()
    sys.stdout.write(line.decode())
    sys.stdout.flush()
"#;

fn as_user(socket: &Path, uid: u32, gid: u32, groups: &[u32], requests: &[&str]) -> (Value, Vec<Value>, u32) {
    let (out, pid) = run_as_user(socket, uid, gid, groups, requests);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client as uid {uid} failed: {}\nstdout: {stdout}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")));
    let ident = lines.next().expect("identity line");
    assert_eq!(ident["uid"], uid, "{ident}");
    assert_eq!(ident["euid"], uid, "{ident}");
    assert_eq!(ident["gid"], gid, "{ident}");
    let responses: Vec<Value> = lines.collect();
    assert_eq!(responses.len(), requests.len(), "one response per request: {responses:?}");
    (ident, responses, pid)
}

fn run_as_user(socket: &Path, uid: u32, gid: u32, groups: &[u32], requests: &[&str]) -> (std::process::Output, u32) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")));
    }
    cmd.args(["/usr/bin/python3", "-c", CLIENT_PY]).arg(socket).args(requests);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn setpriv python3");
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// Journal records with action `refused`.
fn refusals(agent: &Agent) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == "refused").collect()
}

#[test]
fn non_root_caller_may_read_but_not_change() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    // Default socket: 0600, root only.
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode without --group");
    open_to_everyone(&agent);

    let (_, r, client_pid) = as_user(
        &agent.socket,
        NOBODY,
        NOBODY,
        &[],
        &[
            r#"{"id":1,"cmd":"stop","args":{"name":"t","reason":"not allowed"}}"#,
            r#"{"id":2,"cmd":"status"}"#,
            r#"{"id":3,"cmd":"ping"}"#,
            r#"{"id":4,"cmd":"release","args":{"name":"t"}}"#,
            r#"{"id":5,"cmd":"create","args":{"name":"evil","move_caller":true}}"#,
            r#"{"id":6,"cmd":"adopt","args":{"name":"evil2","pid":1}}"#,
            r#"{"id":7,"cmd":"status","args":{"name":"t"}}"#,
        ],
    );
    assert_error(&r[0], &json!(1), "forbidden");
    assert_ok(&r[1], &json!(2));
    assert_eq!(r[1]["result"]["targets"][0]["name"], "t", "{}", r[1]);
    assert_ok(&r[2], &json!(3));
    assert_error(&r[3], &json!(4), "forbidden");
    assert_error(&r[4], &json!(5), "forbidden");
    assert_error(&r[5], &json!(6), "forbidden");
    assert_ok(&r[6], &json!(7));
    assert_eq!(r[6]["result"]["targets"][0]["level"], "normal", "{}", r[6]);

    // Nothing changed: target alive and normal, no cgroup made, no intent journaled.
    assert_untouched(&agent, "t", pid);
    assert!(!agent.target_cgroup("evil").exists() && !agent.target_cgroup("evil2").exists());
    let st = agent.json(&["status"]);
    assert_eq!(st["targets"].as_array().unwrap().len(), 1, "{st}");
    let journal = agent.journal();
    assert!(journal.iter().all(|r| r["actor"]["uid"] != NOBODY || r["action"] == "refused"), "{journal:?}");

    // Every refusal is journaled with the caller's kernel-reported identity.
    let refused = refusals(&agent);
    let cmds: Vec<&str> = refused.iter().map(|r| r["params"]["cmd"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["stop", "release", "create", "adopt"], "{refused:?}");
    for rec in &refused {
        assert_eq!(rec["phase"], "event", "{rec}");
        assert_eq!(rec["actor"]["uid"], NOBODY, "{rec}");
        assert_eq!(rec["actor"]["pid"], client_pid, "{rec}");
        assert_eq!(rec["params"]["gid"], NOBODY, "{rec}");
        assert!(rec["outcome"].as_str().unwrap().starts_with("forbidden"), "{rec}");
    }

    // The CLI as nobody: refused, and no fallback to a direct stop.
    let out = Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", BIN, "stop", "t"])
        .env("KILLPATH_SOCKET", &agent.socket)
        .env("KILLPATH_STATE_DIR", &agent.state_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "stop as nobody succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&agent, "t", pid);
    assert_eq!(refusals(&agent).len(), 5);

    // Root still may.
    let r = agent.json(&["stop", "t"]);
    assert_eq!(r["survivors"], 0, "{r}");
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)).is_some());
    assert_agent_serves(&agent);
}

/// Restarts `agent` on the same paths with `--group GID` (the harness
/// passes it again on any later restart, and stops it with the test).
fn restart_with_group(agent: &mut Agent, gid: u32) {
    agent.kill9();
    agent.extra_args = vec!["--group".to_owned(), gid.to_string()];
    agent.spawn();
}

#[test]
fn configured_group_may_change_others_may_not() {
    let Some(mut agent) = Agent::start() else { return };
    let group = 4242;
    let (_ra, pa) = sleeping_target(&agent, "a");
    let (_rb, pb) = sleeping_target(&agent, "b");
    let (_rc, pc) = sleeping_target(&agent, "c");
    restart_with_group(&mut agent, group);
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode with --group");
    assert_eq!(meta.gid(), group, "socket group with --group");
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // Primary group.
    let (_, r, _) = as_user(&agent.socket, NOBODY, group, &[], &[r#"{"id":1,"cmd":"stop","args":{"name":"a"}}"#]);
    assert_ok(&r[0], &json!(1));
    assert_eq!(r[0]["result"]["survivors"], 0, "{}", r[0]);
    assert!(wait_until(Duration::from_secs(5), || !alive(pa)).is_some());

    // Supplementary group.
    let (ident, r, client_pid) = as_user(&agent.socket, NOBODY, NOBODY, &[group], &[r#"{"id":2,"cmd":"stop","args":{"name":"b"}}"#]);
    assert!(ident["groups"].as_array().unwrap().contains(&json!(group)), "{ident}");
    assert_ok(&r[0], &json!(2));
    assert!(wait_until(Duration::from_secs(5), || !alive(pb)).is_some());
    let stop_b: Vec<Value> = agent.journal().into_iter().filter(|r| r["action"] == "stop" && r["target"] == "b").collect();
    assert_eq!(stop_b.len(), 2, "intent and result: {stop_b:?}");
    assert!(stop_b.iter().all(|r| r["actor"]["uid"] == NOBODY && r["actor"]["pid"] == client_pid), "{stop_b:?}");

    // Not in the group: the 0660 socket keeps it out; opened up, the agent
    // itself refuses.
    let (out, _) = run_as_user(&agent.socket, NOBODY, NOBODY, &[], &[r#"{"id":3,"cmd":"stop","args":{"name":"c"}}"#]);
    assert!(!out.status.success(), "a non-member connected to the 0660 socket");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionError"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (_, r, _) = as_user(&agent.socket, NOBODY, NOBODY, &[], &[r#"{"id":3,"cmd":"stop","args":{"name":"c"}}"#, r#"{"id":4,"cmd":"status"}"#]);
    assert_error(&r[0], &json!(3), "forbidden");
    assert_ok(&r[1], &json!(4));
    assert!(alive(pc));
    let st = agent.json(&["status", "c"]);
    assert_eq!(st["targets"][0]["level"], "normal", "{st}");
    let refused = refusals(&agent);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["actor"]["uid"], NOBODY);
}
