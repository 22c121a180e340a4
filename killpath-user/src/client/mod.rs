//! Client side of the socket protocol, used by every CLI subcommand.
//! Blocking and single-threaded on purpose: `killpath run` moves its own
//! process into a cgroup and then execs, which wants no helper threads.
//!
//! - [`protocol`]: the socket protocol shared with the agent.
//! - [`fallback`]: `killpath stop` when the agent does not answer.
pub mod fallback;
pub mod protocol;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use protocol::{Command, ErrorBody, Response};

/// The error code of an agent whose journal is poisoned (a write or sync
/// failed): it refuses every change until restarted.
pub const JOURNAL_POISONED: &str = "journal-poisoned";

/// Default agent socket.
pub const DEFAULT_SOCKET: &str = "/run/killpath/agent.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {source} (is `killpath agent` running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("the agent at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent sent an unreadable response: {0}")]
    BadResponse(String),
    #[error("{}: {}", .0.code, .0.message)]
    Agent(ErrorBody),
}

impl ClientError {
    /// The agent could not be reached or did not answer: the cases where
    /// `stop` acts on the cgroup itself.
    pub fn agent_unavailable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. } | Self::Io { .. })
    }

    /// The agent answered that its journal is poisoned: it changes nothing
    /// until restarted, so `stop` acts on the cgroup itself too.
    pub fn journal_poisoned(&self) -> bool {
        matches!(self, Self::Agent(body) if body.code == JOURNAL_POISONED)
    }
}

/// Connects within `timeout`. A blocking connect(2) on a unix socket waits
/// forever when a hung agent's listen backlog is full; the kill path must
/// not, so the connect runs on a helper thread we stop waiting for.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = socket.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(&path));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|source| ClientError::Connect { path: socket.to_owned(), source }),
        Err(_) => Err(ClientError::Timeout { path: socket.to_owned(), timeout }),
    }
}

/// Sends one command on a fresh connection and waits up to `timeout` for
/// its response.
pub fn call(socket: &Path, cmd: &Command, timeout: Duration) -> Result<Value, ClientError> {
    Session::open(socket, timeout)?.call(cmd, timeout)
}

/// Subscribes (`events`): calls `f` for every event line until the agent
/// closes the connection.
pub fn subscribe(socket: &Path, cmd: &Command, mut f: impl FnMut(&Value)) -> Result<(), ClientError> {
    let io = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut stream = connect(socket, Duration::from_secs(5))?;
    let mut line = protocol::encode(1, cmd).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    for l in BufReader::new(stream).lines() {
        let l = l.map_err(io)?;
        let r: Response = serde_json::from_str(&l).map_err(|e| ClientError::BadResponse(format!("{e}: {l}")))?;
        if !r.ok {
            return Err(ClientError::Agent(r.error.unwrap_or_else(|| ErrorBody::new("unknown", "error without a body"))));
        }
        if let Some(ev) = r.result.as_ref().and_then(|v| v.get("event")) {
            f(ev);
        }
    }
    Ok(())
}

/// One connection carrying many requests, in order (a drill: the agent
/// ties the drill to its connection).
pub struct Session {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Session {
    pub fn open(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io { path: socket.to_owned(), source };
        let stream = connect(socket, timeout)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        Ok(Self { path: socket.to_owned(), writer: stream, reader, next_id: 1 })
    }

    /// Sends one command and waits up to `timeout` for its response.
    pub fn call(&mut self, cmd: &Command, timeout: Duration) -> Result<Value, ClientError> {
        let path = self.path.clone();
        let io = |source| ClientError::Io { path: path.clone(), source };
        self.writer.set_write_timeout(Some(timeout)).map_err(io)?;
        self.reader.get_ref().set_read_timeout(Some(timeout)).map_err(io)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut line = protocol::encode(id, cmd).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(io)?;
        let mut resp = String::new();
        match self.reader.read_line(&mut resp) {
            Ok(0) => return Err(ClientError::BadResponse("the agent closed the connection without answering".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout { path: self.path.clone(), timeout })
            }
            Err(e) => return Err(io(e)),
        }
        let r: Response = serde_json::from_str(&resp).map_err(|e| ClientError::BadResponse(format!("{e}: {resp}")))?;
        if r.ok {
            Ok(r.result.unwrap_or(Value::Null))
        } else {
            Err(ClientError::Agent(r.error.unwrap_or_else(|| ErrorBody::new("unknown", "error without a body"))))
        }
    }
}
