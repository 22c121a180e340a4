//! The control socket under hostile input, on raw connections: unknown
//! fields, unknown commands, bad arguments, non-JSON, invalid UTF-8,
//! oversized lines and half a line then a hang-up each get an error (or are
//! dropped), the connection and the agent keep serving, and nothing is
//! executed. Callers are identified by SO_PEERCRED: only root (or the
//! configured group) may change anything.
use std::{
    io::{self, BufRead, BufReader, Write},
    net::Shutdown,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::harness::{alive, wait_until, Agent, BIN};

const MAX_LINE: usize = killpath::protocol::MAX_LINE;
/// How long a raw client waits for one response.
const TIMEOUT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------- helpers

/// A raw client connection: bytes out, one JSON response line in.
struct Conn {
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(agent: &Agent) -> Conn {
        Self::open_path(&agent.socket)
    }

    fn open_path(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        Conn { reader: BufReader::new(s) }
    }

    fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.stream();
        s.write_all(bytes)?;
        s.flush()
    }

    /// The next response line; `Ok(None)` when the agent closed the
    /// connection (EOF or reset) without sending one.
    fn recv_opt(&mut self) -> io::Result<Option<Value>> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                assert!(line.ends_with(b"\n"), "response is not a complete line: {:?}", String::from_utf8_lossy(&line));
                let v = serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", String::from_utf8_lossy(&line)));
                Ok(Some(v))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next response; panics on timeout or hang-up.
    fn recv(&mut self) -> Value {
        match self.recv_opt() {
            Ok(Some(v)) => v,
            Ok(None) => panic!("the agent closed the connection without answering"),
            Err(e) => panic!("no response within {TIMEOUT:?}: {e}"),
        }
    }

    /// Sends one line (a newline is appended) and reads its response.
    fn call(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n").as_bytes()).expect("send request");
        self.recv()
    }
}

/// `resp` is an error with `code`, echoing `id`.
fn assert_error(resp: &Value, id: &Value, code: &str) {
    assert_eq!(resp["ok"], false, "expected an error: {resp}");
    assert_eq!(&resp["id"], id, "id not echoed: {resp}");
    assert_eq!(resp["error"]["code"], code, "wrong error code: {resp}");
    assert!(resp["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {resp}");
    assert!(resp.get("result").is_none(), "an error carries no result: {resp}");
}

/// `resp` is a success echoing `id`.
fn assert_ok(resp: &Value, id: &Value) {
    assert_eq!(resp["ok"], true, "expected success: {resp}");
    assert_eq!(&resp["id"], id, "id not echoed: {resp}");
    assert!(resp.get("error").is_none(), "{resp}");
}

/// A ping and a status on `conn` both succeed with their ids echoed.
fn assert_conn_serves(conn: &mut Conn) {
    let r = conn.call(r#"{"id":2,"cmd":"ping"}"#);
    assert_ok(&r, &json!(2));
    assert_eq!(r["result"]["pong"], true, "{r}");
    let r = conn.call(r#"{"id":"status-3","cmd":"status"}"#);
    assert_ok(&r, &json!("status-3"));
    assert!(r["result"]["targets"].is_array(), "{r}");
}

/// The agent process is alive and serves a new raw connection and the CLI.
fn assert_agent_serves(agent: &Agent) {
    assert!(alive(agent.pid()), "agent process died:\n{}", agent.log_text());
    assert_conn_serves(&mut Conn::open(agent));
    let out = agent.kp(&["status"]);
    assert!(out.status.success(), "killpath status failed: {}\n{}", String::from_utf8_lossy(&out.stderr), agent.log_text());
}

/// Sends `bad` (bytes, newline included) on a fresh connection, checks the
/// error, then that the same connection, a new one and the agent still serve.
fn check_bad(agent: &Agent, bad: &[u8], id: Value, code: &str) {
    let mut c = Conn::open(agent);
    c.send(bad).expect("send");
    let r = c.recv();
    assert_error(&r, &id, code);
    assert_conn_serves(&mut c);
    assert_agent_serves(agent);
}

/// `req` padded with trailing spaces (valid JSON whitespace) to `len` bytes.
fn padded(req: &str, len: usize) -> String {
    assert!(req.len() <= len);
    format!("{req}{}", " ".repeat(len - req.len()))
}

/// A running target `name` (a `sleep`); returns its `run` child and pid.
fn target(agent: &Agent, name: &str) -> (Child, i32) {
    let child = agent.run_bg(name, &["sleep", "1000"], 1);
    let pids = agent.target_cgroup(name).procs_recursive();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // run_bg returns once `killpath run` is in the cgroup, which is before
    // the agent has answered (and journaled the result); it execs CMD only
    // after the answer.
    let comm = format!("/proc/{}/comm", pids[0]);
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep"))
        .unwrap_or_else(|| panic!("target {name} never exec'd its command"));
    (child, pids[0])
}

/// Target `name` was not touched: its process lives, its level is normal
/// (in the registry and in the kernel map), and no stop was journaled.
fn assert_untouched(agent: &Agent, name: &str, pid: i32) {
    assert!(alive(pid), "target {name} process {pid} was killed");
    let st = agent.json(&["status", name]);
    let t = &st["targets"][0];
    assert_eq!(t["level"], "normal", "{st}");
    assert_eq!(t["kernel_level"], "normal", "{st}");
    assert_eq!(t["tasks"], 1, "{st}");
    let stops: Vec<Value> = agent.journal().into_iter().filter(|r| r["action"] == "stop").collect();
    assert!(stops.is_empty(), "a stop was journaled: {stops:?}");
}

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

// ------------------------------------------------------------- bad input

#[test]
fn unknown_fields_are_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    // Unknown top-level field.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"ping\",\"extra\":true}\n", json!(1), "bad-request");
    // A stop with an unknown top-level field is not a stop.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"stop\",\"args\":{\"name\":\"t\"},\"force\":true}\n", json!(1), "bad-request");
    // A stop with an unknown argument is not a stop either.
    check_bad(&agent, b"{\"id\":\"k\",\"cmd\":\"stop\",\"args\":{\"name\":\"t\",\"force\":true}}\n", json!("k"), "bad-request");
    // Unknown argument of an argument-less command.
    check_bad(&agent, b"{\"id\":4,\"cmd\":\"ping\",\"args\":{\"x\":1}}\n", json!(4), "bad-request");
    assert_untouched(&agent, "t", pid);
}

#[test]
fn duplicate_keys_are_rejected() {
    // JSON parsers disagree on which of two equal keys wins; a request
    // that reads as "status" to one and "stop" to another is ambiguous and
    // must not be executed.
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    let (_run, pid_u) = target(&agent, "u");
    for (id, bad) in [
        (1, r#"{"id":1,"cmd":"status","cmd":"stop","args":{"name":"t"}}"#),
        (2, r#"{"id":2,"cmd":"stop","args":{"name":"u","name":"t"}}"#),
        (3, r#"{"id":3,"cmd":"stop","args":{"name":"u"},"args":{"name":"t"}}"#),
    ] {
        let mut c = Conn::open(&agent);
        let r = c.call(bad);
        assert_eq!(r["ok"], false, "an ambiguous request was executed: {bad} -> {r}");
        // Valid JSON syntax, invalid request: bad-request echoing the id is
        // the natural answer; a strict parser's "parse" error is fine too.
        let code = r["error"]["code"].as_str().unwrap_or_default();
        assert!(code == "bad-request" || code == "parse", "{r}");
        assert!(r["id"] == id || r["id"].is_null(), "{r}");
        assert_conn_serves(&mut c);
        assert_agent_serves(&agent);
    }
    assert_untouched(&agent, "t", pid);
    assert_untouched(&agent, "u", pid_u);
}

#[test]
fn unknown_command_is_rejected() {
    let Some(agent) = Agent::start() else { return };
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"explode\"}\n", json!(1), "unknown-command");
    check_bad(&agent, b"{\"id\":\"x\",\"cmd\":\"STOP\",\"args\":{\"name\":\"t\"}}\n", json!("x"), "unknown-command");
    check_bad(&agent, b"{\"id\":5,\"cmd\":\"\"}\n", json!(5), "unknown-command");
    // The error lists the known commands.
    let r = Conn::open(&agent).call(r#"{"id":1,"cmd":"explode"}"#);
    assert!(r["error"]["message"].as_str().unwrap().contains("ping"), "{r}");
}

#[test]
fn bad_arguments_are_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    for (bad, id) in [
        // stop without a name
        (&b"{\"id\":1,\"cmd\":\"stop\",\"args\":{}}\n"[..], json!(1)),
        (b"{\"id\":1,\"cmd\":\"stop\"}\n", json!(1)),
        // wrong argument types
        (b"{\"id\":2,\"cmd\":\"stop\",\"args\":{\"name\":5}}\n", json!(2)),
        (b"{\"id\":3,\"cmd\":\"stop\",\"args\":\"t\"}\n", json!(3)),
        (b"{\"id\":4,\"cmd\":\"journal\",\"args\":{\"after\":\"x\"}}\n", json!(4)),
        (b"{\"id\":5,\"cmd\":\"adopt\",\"args\":{\"name\":\"u\",\"pid\":\"1\"}}\n", json!(5)),
        // bad request shape: id of the wrong type or missing, cmd not a string, not an object
        (b"{\"id\":null,\"cmd\":\"ping\"}\n", Value::Null),
        (b"{\"id\":[1],\"cmd\":\"ping\"}\n", json!([1])),
        (b"{\"cmd\":\"ping\"}\n", Value::Null),
        (b"{\"id\":6,\"cmd\":7}\n", json!(6)),
        (b"[1,2,3]\n", Value::Null),
        (b"\"ping\"\n", Value::Null),
    ] {
        check_bad(&agent, bad, id, "bad-request");
    }
    assert_untouched(&agent, "t", pid);
}

#[test]
fn not_json_is_a_parse_error() {
    let Some(agent) = Agent::start() else { return };
    for bad in [&b"{not json\n"[..], b"\n", b"   \n", b"{\"id\":1,\"cmd\":\"ping\"\n", b"{\"id\":1,\"cmd\":\"ping\"}}\n", b"ping\n"] {
        check_bad(&agent, bad, Value::Null, "parse");
    }
    // CRLF: the CR is JSON whitespace, so the request is fine.
    let mut c = Conn::open(&agent);
    c.send(b"{\"id\":9,\"cmd\":\"ping\"}\r\n").unwrap();
    assert_ok(&c.recv(), &json!(9));
}

#[test]
fn invalid_utf8_is_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"\xff\"}\n", Value::Null, "invalid-utf8");
    // A stop whose target name holds invalid UTF-8 is not a stop of anything.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"stop\",\"args\":{\"name\":\"t\xc3\"}}\n", Value::Null, "invalid-utf8");
    check_bad(&agent, b"\xfe\xff\n", Value::Null, "invalid-utf8");
    assert_untouched(&agent, "t", pid);
}

#[test]
fn oversized_line_is_too_long() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    let mut c = Conn::open(&agent);

    // Exactly MAX_LINE bytes (newline excluded) is still a request.
    let exact = padded(r#"{"id":7,"cmd":"ping"}"#, MAX_LINE);
    assert_ok(&c.call(&exact), &json!(7));

    // One byte more is too long, whatever it holds: a stop padded past the
    // limit is not executed, not even its first 64 KiB.
    let over = padded(r#"{"id":8,"cmd":"stop","args":{"name":"t"}}"#, MAX_LINE + 1);
    c.send(format!("{over}\n").as_bytes()).expect("send");
    let r = c.recv();
    assert_error(&r, &Value::Null, "too-long");
    // "discarded up to the next newline": the connection goes on.
    assert_conn_serves(&mut c);
    assert_agent_serves(&agent);

    // A far longer line (4 MiB) directly followed by a ping in the same
    // write, on a new connection: one too-long, then the ping is answered.
    let mut c = Conn::open(&agent);
    let writer = c.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut big = padded(r#"{"id":10,"cmd":"stop","args":{"name":"t"}}"#, 4 << 20);
        big.push_str("\n{\"id\":11,\"cmd\":\"ping\"}\n");
        (&writer).write_all(big.as_bytes())
    });
    let r = c.recv();
    assert_error(&r, &Value::Null, "too-long");
    let sent = sender.join().unwrap();
    let r = c.recv_opt().expect("read");
    assert!(sent.is_ok(), "the agent stopped reading after too-long: {sent:?}");
    let r = r.expect("the agent closed the connection after too-long instead of discarding to the newline");
    assert_ok(&r, &json!(11));
    assert_conn_serves(&mut c);

    assert_agent_serves(&agent);
    assert_untouched(&agent, "t", pid);
}

#[test]
fn oversized_line_closed_connection_still_leaves_agent_serving() {
    // Whatever happens to the offending connection, other connections and
    // the agent are unaffected, and nothing in the long line ran.
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    let other = {
        let mut o = Conn::open(&agent);
        assert_conn_serves(&mut o);
        o
    };
    let mut c = Conn::open(&agent);
    let over = padded(r#"{"id":8,"cmd":"stop","args":{"name":"t"}}"#, MAX_LINE + 100);
    let _ = c.send(format!("{over}\n").as_bytes());
    assert_error(&c.recv(), &Value::Null, "too-long");
    let mut other = other;
    assert_conn_serves(&mut other);
    assert_agent_serves(&agent);
    assert_untouched(&agent, "t", pid);
}

#[test]
fn half_a_line_then_hang_up_is_dropped() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    let stop = br#"{"id":1,"cmd":"stop","args":{"name":"t"}}"#;
    let drops_logged = || agent.log_text().matches("dropping unterminated request").count();

    // Half shutdown: the agent sees EOF after a complete stop request
    // without its newline. No response, nothing executed.
    let mut c = Conn::open(&agent);
    c.send(stop).unwrap();
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.recv_opt().expect("read"), None, "an unterminated request was answered (and so executed)");

    // Full close.
    let c = Conn::open(&agent);
    c.send(stop).unwrap();
    drop(c);

    // A complete ping, then half a stop: the ping is answered, the rest dropped.
    let mut c = Conn::open(&agent);
    let mut bytes = b"{\"id\":5,\"cmd\":\"ping\"}\n".to_vec();
    bytes.extend_from_slice(stop);
    c.send(&bytes).unwrap();
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_ok(&c.recv(), &json!(5));
    assert_eq!(c.recv_opt().expect("read"), None, "an unterminated request was answered");

    // Let the agent finish with all three connections before judging.
    let _ = wait_until(Duration::from_secs(5), || drops_logged() >= 3);
    std::thread::sleep(Duration::from_millis(200));
    assert_untouched(&agent, "t", pid);
    assert_agent_serves(&agent);
}

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

// ------------------------------------------------------ many and idle clients

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

// -------------------------------------------------------------- authorization

#[test]
fn non_root_caller_may_read_but_not_change() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
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

/// An agent process on `agent`'s paths started with `--group GID`; killed
/// on drop (declare it after the `Agent` so it goes first).
struct GroupAgent(Child);

impl GroupAgent {
    fn start(agent: &mut Agent, gid: u32) -> GroupAgent {
        agent.kill9();
        let log = std::fs::OpenOptions::new().append(true).open(&agent.log).unwrap();
        let child = Command::new(BIN)
            .arg("agent")
            .arg("--socket")
            .arg(&agent.socket)
            .arg("--state-dir")
            .arg(&agent.state_dir)
            .arg("--pin-dir")
            .arg(&agent.pin_dir)
            .arg("--cgroup-parent")
            .arg(&agent.cgroup_parent)
            .arg("--group")
            .arg(gid.to_string())
            .env("KILLPATH_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut g = GroupAgent(child);
        let ready = wait_until(Duration::from_secs(30), || {
            assert!(g.0.try_wait().unwrap().is_none(), "agent --group exited:\n{}", agent.log_text());
            agent.kp(&["status"]).status.success()
        });
        assert!(ready.is_some(), "agent --group not ready:\n{}", agent.log_text());
        g
    }
}

impl Drop for GroupAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn configured_group_may_change_others_may_not() {
    let Some(mut agent) = Agent::start() else { return };
    let group = 4242;
    let (_ra, pa) = target(&agent, "a");
    let (_rb, pb) = target(&agent, "b");
    let (_rc, pc) = target(&agent, "c");
    let _g = GroupAgent::start(&mut agent, group);
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
