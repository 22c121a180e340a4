//! Blocking calls to the agent over its unix socket: one JSON request per
//! line, one JSON answer per line, matched by id.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One connection to an agent's socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to `socket`; a call waits at most `timeout` for its answer.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let what = || format!("connecting to {}", socket.display());
        let writer = UnixStream::connect(socket).map_err(Error::io(what()))?;
        writer.set_read_timeout(Some(timeout)).map_err(Error::io(what()))?;
        let reader = BufReader::new(writer.try_clone().map_err(Error::io(what()))?);
        Ok(Self { reader, writer, next_id: 1 })
    }

    /// Sends `{"id", "cmd", "args"}` and waits for its answer: the client's
    /// wall time from the write to the answer, and `result`. An answer
    /// with `ok: false` is [`Error::Refused`].
    pub fn call(&mut self, cmd: &str, args: Value) -> Result<(Duration, Value)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"id": id, "cmd": cmd, "args": args}).to_string();
        line.push('\n');
        let mut reply = String::new();
        let t0 = Instant::now();
        self.writer.write_all(line.as_bytes()).map_err(Error::io(format!("sending {cmd} to the agent")))?;
        self.reader.read_line(&mut reply).map_err(Error::io(format!("reading the agent's answer to {cmd}")))?;
        let wall = t0.elapsed();
        let v: Value = serde_json::from_str(&reply).map_err(|source| Error::BadReply { cmd: cmd.into(), reply: reply.clone(), source })?;
        if v["id"] != json!(id) {
            return Err(Error::WrongId { got: v["id"].clone(), want: id });
        }
        if v["ok"] != json!(true) {
            return Err(Error::Refused {
                cmd: cmd.into(),
                args,
                code: v["error"]["code"].as_str().unwrap_or("?").into(),
                message: v["error"]["message"].as_str().unwrap_or("?").into(),
            });
        }
        Ok((wall, v["result"].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::unix::net::UnixListener,
        thread,
    };

    use super::*;

    /// A one-connection fake agent that answers each request with `answer(request)`.
    fn fake_agent(dir: &Path, answer: fn(&Value) -> Value) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join("s")).expect("bind");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut out = stream.try_clone().expect("clone");
            for line in BufReader::new(stream).lines() {
                let req: Value = serde_json::from_str(&line.expect("line")).expect("json");
                writeln!(out, "{}", answer(&req)).expect("write");
            }
        })
    }

    #[test]
    fn calls_match_ids_and_return_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = fake_agent(dir.path(), |r| json!({"id": r["id"], "ok": true, "result": {"cmd": r["cmd"], "args": r["args"]}}));
        let mut c = Client::connect(&dir.path().join("s"), Duration::from_secs(5)).expect("connect");
        for n in 0..3 {
            let (_, r) = c.call("ping", json!({"n": n})).expect("call");
            assert_eq!(r, json!({"cmd": "ping", "args": {"n": n}}));
        }
        drop(c);
        agent.join().expect("fake agent");
    }

    #[test]
    fn refusals_and_bad_answers_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _agent = fake_agent(dir.path(), |r| match r["cmd"].as_str() {
            Some("stop") => json!({"id": r["id"], "ok": false, "error": {"code": "no-such-target", "message": "no target x"}}),
            _ => json!({"id": 99, "ok": true, "result": {}}),
        });
        let mut c = Client::connect(&dir.path().join("s"), Duration::from_secs(5)).expect("connect");
        let e = c.call("stop", json!({"name": "x"})).expect_err("refused");
        assert_eq!(e.to_string(), r#"agent: stop {"name":"x"} failed: no target x (no-such-target)"#);
        assert!(matches!(c.call("ping", json!({})), Err(Error::WrongId { want: 2, .. })));
    }
}
