//! The library's error type. Every variant names what went wrong and where;
//! [`Error::code`] gives the stable machine-readable code sent on the socket.
use std::{io, path::PathBuf};

use crate::journal::JournalError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid target name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    #[error("target {0:?} already exists")]
    TargetExists(String),
    #[error("no cgroup2 filesystem is mounted (checked /proc/self/mounts)")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("process {0} does not exist")]
    NoSuchProcess(i32),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("uid {uid} may not change anything: only root or the agent's group may")]
    Forbidden { uid: u32 },
    #[error("target {name:?} is {level}: {why}")]
    WrongLevel {
        name: String,
        level: &'static str,
        why: &'static str,
    },
}

impl Error {
    /// Stable error code for the socket protocol.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "invalid-name",
            Self::UnknownTarget(_) => "unknown-target",
            Self::TargetExists(_) => "target-exists",
            Self::NoCgroup2 => "no-cgroup2",
            Self::Cgroup { .. } => "cgroup",
            Self::NoSuchProcess(_) => "no-such-process",
            Self::InvalidRequest(_) => "bad-request",
            Self::Kernel(_) => "kernel",
            Self::Journal(_) => "journal",
            Self::Io { .. } => "io",
            Self::WrongLevel { .. } => "wrong-level",
            Self::Forbidden { .. } => "forbidden",
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Wraps an I/O error on a cgroup file or directory.
    pub fn cgroup(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Cgroup { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
