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
    #[error("kernel: loading the eBPF object: {}", chain(.0.as_ref()))]
    Load(#[source] Box<aya::EbpfError>),
    #[error("kernel: {what}: {}", chain(source))]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("kernel: {what}: {}", chain(source))]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("kernel: {what}: {}", chain(source))]
    Link {
        what: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("kernel: pinning {}: {}", path.display(), chain(source))]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
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
    WrongLevel { name: String, level: &'static str, why: &'static str },
    #[error("the caller (pid {pid}) is inside target {target:?} and may only read (ping, probe, status, capabilities, journal, events)")]
    InsideTarget { pid: i32, target: String },
    #[error("the caller (pid {pid}) is inside a target (cgroup id {cgroup_id}) and may only read (ping, probe, status, capabilities, journal, events)")]
    InsideTargetCgroup { pid: i32, cgroup_id: u64 },
    #[error("the caller (pid {pid}) is gone or its cgroup cannot be read: refusing to change anything for it")]
    CallerUnknown { pid: i32 },
    #[error("target {name:?}: its cgroup path does not lead to its cgroup (id {cgroup_id}): {why}; refused")]
    CgroupMismatch { name: String, cgroup_id: u64, why: String },
    #[error("pending action {id} is not pending: {why}")]
    NotPending { id: u64, why: String },
    #[error("not an approver of pending action {id}: {why}; it stays pending")]
    NotApprover { id: u64, why: String },
    #[error("drill {drill}: target {target:?} was changed by someone else during the drill ({what}); the drill leaves it alone")]
    DrillConflict { drill: u64, target: String, what: String },
    #[error("busy: {cap} requests are already in flight (the agent's cap); this one was not run, retry it (a stop is never refused for this)")]
    Busy { cap: usize },
    #[error("no {kind} {id:?} found: {searched}")]
    NameNotFound { kind: &'static str, id: String, searched: String },
    #[error("{kind} {id:?} is ambiguous: it matches {} ({searched}); adopt the one meant with --cgroup", matches.join(", "))]
    NameAmbiguous { kind: &'static str, id: String, matches: Vec<String>, searched: String },
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
            Self::Kernel(_) | Self::Load(_) | Self::Program { .. } | Self::Map { .. } | Self::Link { .. } | Self::Pin { .. } => "kernel",
            // Distinct: nothing is journaled (so nothing changes) until the
            // agent restarts; `killpath stop` then stops without it.
            Self::Journal(JournalError::Poisoned { .. }) => crate::client::JOURNAL_POISONED,
            Self::Journal(_) => "journal",
            Self::Io { .. } => "io",
            Self::WrongLevel { .. } => "wrong-level",
            Self::Forbidden { .. } | Self::InsideTarget { .. } | Self::InsideTargetCgroup { .. } | Self::CallerUnknown { .. } | Self::NotApprover { .. } => {
                "forbidden"
            }
            Self::NotPending { .. } => "bad-request",
            Self::CgroupMismatch { .. } => "cgroup-mismatch",
            Self::DrillConflict { .. } => "drill-conflict",
            Self::Busy { .. } => "busy",
            Self::NameNotFound { .. } | Self::NameAmbiguous { .. } => "bad-request",
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Wraps an aya program error with what was being done.
    pub fn program(what: impl std::fmt::Display) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        let what = what.to_string();
        move |source| Self::Program { what, source }
    }

    /// Wraps an aya map error with the map and what was being done.
    pub fn map(what: impl std::fmt::Display) -> impl FnOnce(aya::maps::MapError) -> Self {
        let what = what.to_string();
        move |source| Self::Map { what, source }
    }

    /// Wraps an aya link error with what was being done.
    pub fn link(what: impl std::fmt::Display) -> impl FnOnce(aya::programs::links::LinkError) -> Self {
        let what = what.to_string();
        move |source| Self::Link { what, source }
    }

    /// Wraps an aya pin error with the pin's path.
    pub fn pin(path: impl Into<PathBuf>) -> impl FnOnce(aya::pin::PinError) -> Self {
        let path = path.into();
        move |source| Self::Pin { path, source }
    }

    /// Wraps an I/O error on a cgroup file or directory.
    pub fn cgroup(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Cgroup { path, source }
    }
}

/// An error and all its sources, joined: aya keeps the verifier log and the
/// kernel's errno in the sources, and the socket sends only the message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
