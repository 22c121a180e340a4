//! The control socket under hostile input, on raw connections: unknown
//! fields, unknown commands, bad arguments, non-JSON, invalid UTF-8,
//! oversized lines and half a line then a hang-up each get an error (or are
//! dropped), the connection and the agent keep serving, and nothing is
//! executed. Callers are identified by SO_PEERCRED: only root (or the
//! configured group) may change anything.
//!
//! One file per feature; the raw client connection and the assertions
//! below are shared by them.
mod auth;
mod bad_input;
mod client_timeout;
mod concurrency;
mod framing;
mod targets_refused;

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::{json, Value};

use crate::harness::{alive, Agent};

/// How long a raw client waits for one response.
const TIMEOUT: Duration = Duration::from_secs(10);

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
