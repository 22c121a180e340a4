//! Targets by the names admins use: a systemd unit, a container id, a
//! Kubernetes pod UID, resolved to the cgroup the service manager or the
//! container runtime made for it, by walking the cgroup2 tree (the way those
//! tools lay cgroups out) and, for a container, the runtime's state files
//! (its init pid) when no cgroup carries the id.
//!
//! Read-only: nothing here changes anything; `adopt` then takes the cgroup
//! (or the init pid's tree) through the journaled transaction.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub mod container;
pub mod pod;
pub mod runtime;
pub mod unit;
mod walk;

pub use walk::Scope;

#[cfg(test)]
mod tests;

/// What `adopt --unit/--container/--pod` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Unit(String),
    Container(String),
    Pod(String),
}

impl Selector {
    /// The one selector of an adopt request, if any (None: --cgroup or --pid).
    pub fn from_request(unit: Option<String>, container: Option<String>, pod: Option<String>) -> Result<Option<Self>> {
        match (unit, container, pod) {
            (None, None, None) => Ok(None),
            (Some(u), None, None) => Ok(Some(Self::Unit(u))),
            (None, Some(c), None) => Ok(Some(Self::Container(c))),
            (None, None, Some(p)) => Ok(Some(Self::Pod(p))),
            _ => Err(Error::InvalidRequest("adopt takes exactly one of --cgroup, --pid, --unit, --container, --pod".into())),
        }
    }

    /// "unit", "container" or "pod": the request's field and the word in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unit(_) => "unit",
            Self::Container(_) => "container",
            Self::Pod(_) => "pod",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Unit(s) | Self::Container(s) | Self::Pod(s) => s,
        }
    }
}

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// The cgroup the service manager or runtime made: adopted as it is.
    Cgroup(PathBuf),
    /// A container whose init process does not have a cgroup of its own
    /// (it shares one with processes outside the container): its process
    /// tree moves into a new cgroup, as `adopt --pid` does.
    Pid(i32),
}

/// A resolved name and how it was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub kind: &'static str,
    /// The name as given.
    pub id: String,
    /// The name as matched (unit with its suffix, pod UID with dashes).
    pub canonical: String,
    pub found: Found,
    /// How: "cgroup layout" or the runtime state file read.
    pub via: String,
}

/// Resolves `sel` on the cgroup2 tree mounted at `mount`, leaving out
/// `skip` (the agent's cgroup parent, where its own targets live).
pub fn resolve(mount: &Path, skip: Option<&Path>, sel: &Selector) -> Result<Resolved> {
    let scope = Scope { mount, skip };
    match sel {
        Selector::Unit(spec) => unit::resolve(scope, spec),
        Selector::Container(spec) => container::resolve(scope, spec, runtime::STATE_ROOTS),
        Selector::Pod(spec) => pod::resolve(scope, spec),
    }
}

/// The one match of a walk, or the error naming what was searched.
fn one(kind: &'static str, id: &str, matches: Vec<PathBuf>, searched: impl FnOnce() -> String) -> Result<Option<PathBuf>> {
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.into_iter().next()),
        _ => Err(Error::NameAmbiguous { kind, id: id.to_owned(), matches: matches.iter().map(|p| p.display().to_string()).collect(), searched: searched() }),
    }
}
