//! The sandbox's one error type.
use std::{
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use serde_json::Value;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while setting up, driving or calling a sandboxed agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system or socket operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("the agent exited ({0}) before answering")]
    AgentExited(ExitStatus),
    #[error("the agent did not answer on {} within {} s", socket.display(), timeout.as_secs())]
    AgentNotReady { socket: PathBuf, timeout: Duration },
    #[error("the agent is already running (pid {0})")]
    AgentRunning(u32),
    #[error("the agent is not running")]
    AgentNotRunning,
    #[error("the agent answered {cmd} with {reply:?}")]
    BadReply {
        cmd: String,
        reply: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent answered id {got} to request {want}")]
    WrongId { got: Value, want: u64 },
    /// The agent answered `ok: false`.
    #[error("agent: {cmd} {args} failed: {message} ({code})")]
    Refused { cmd: String, args: Value, code: String, message: String },
    #[error("{} did not say `{key} {want}` within {} s", path.display(), timeout.as_secs())]
    EventTimeout { path: PathBuf, key: String, want: String, timeout: Duration },
}

impl Error {
    /// For `map_err`: an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
