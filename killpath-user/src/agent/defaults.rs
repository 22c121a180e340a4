//! The escalation order and each level's defaults, from the agent's
//! config file (`killpath agent --config FILE`, TOML):
//!
//! ```toml
//! [throttle]            # what `escalate` applies at level 1
//! syscalls = 1000       # per second, all syscalls
//! syscall_class = { net = 50 }
//! egress_bytes = 1000000
//! egress_packets = 2000
//! tasks = 64
//!
//! [degrade]             # what `escalate` revokes at level 2
//! revoke = ["net.connect", "exec", "fs.write"]
//! allow_connect = ["10.0.0.0/8:5432"]
//! allow_write = ["/var/tmp/job"]
//!
//! [trail]               # targets recorded from creation (as `run --trail`)
//! record = ["agent-*", "batch"]
//! ```
//!
//! Without a file (or a section), throttle caps syscalls at 1,000/s and
//! egress at 1 MB/s, and degrade revokes every capability in
//! [`default_revoke`] that this kernel can enforce.
use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    degrade::Capability,
    error::{Error, Result},
    throttle::Ceilings,
};

/// Capabilities a default degrade step revokes, where enforceable (see
/// [`Capability::revoked_by_default`]).
pub fn default_revoke() -> impl Iterator<Item = Capability> {
    Capability::ALL.into_iter().filter(|c| c.revoked_by_default())
}

/// Level-1 defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleDefaults {
    #[serde(default)]
    pub syscalls: Option<u64>,
    #[serde(default)]
    pub syscall_class: BTreeMap<String, u64>,
    #[serde(default)]
    pub egress_bytes: Option<u64>,
    #[serde(default)]
    pub egress_packets: Option<u64>,
    #[serde(default)]
    pub tasks: Option<u64>,
}

impl Default for ThrottleDefaults {
    fn default() -> Self {
        Self { syscalls: Some(1_000), syscall_class: BTreeMap::new(), egress_bytes: Some(1_000_000), egress_packets: None, tasks: None }
    }
}

impl ThrottleDefaults {
    pub fn ceilings(&self) -> Ceilings {
        let mut c = Ceilings { egress_bytes: self.egress_bytes, egress_packets: self.egress_packets, tasks: self.tasks, ..Default::default() };
        c.syscalls = self.syscall_class.clone();
        if let Some(n) = self.syscalls {
            c.syscalls.insert("all".into(), n);
        }
        c
    }
}

/// Level-2 defaults. `revoke` absent: [`default_revoke`], where enforceable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradeDefaults {
    #[serde(default)]
    pub revoke: Option<Vec<String>>,
    #[serde(default)]
    pub allow_connect: Vec<String>,
    #[serde(default)]
    pub allow_write: Vec<String>,
}

/// `[trail]`: which targets record their activity trail from the moment
/// they are created or adopted, as if `--trail` had been given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrailDefaults {
    /// Target names: exact, `prefix*`, or `*` for every target.
    #[serde(default)]
    pub record: Vec<String>,
}

impl TrailDefaults {
    /// Whether a target named `name` records from its creation.
    pub fn records(&self, name: &str) -> bool {
        self.record.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }

    fn check(&self) -> std::result::Result<(), String> {
        for p in &self.record {
            if p.is_empty() || p.trim_end_matches('*').contains('*') || p.ends_with("**") {
                return Err(format!("record: {p:?} is not a target name, `prefix*` or `*`"));
            }
        }
        Ok(())
    }
}

/// The `[throttle]`, `[degrade]` and `[trail]` sections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    #[serde(default)]
    pub throttle: ThrottleDefaults,
    #[serde(default)]
    pub degrade: DegradeDefaults,
    #[serde(default)]
    pub trail: TrailDefaults,
    /// `[[tripwires]]`: rules armed at start (see `crate::tripwire::RuleSpec`).
    #[serde(default)]
    pub tripwires: Vec<crate::tripwire::RuleSpec>,
}

impl Escalation {
    /// Reads and checks the config file: a bad file is an error naming it,
    /// the line and the field, and the agent does not start on it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
        let e: Escalation = toml::from_str(&text).map_err(|e| Error::InvalidRequest(format!("{}: {e}", path.display())))?;
        e.throttle.ceilings().validate().map_err(|err| Error::InvalidRequest(format!("{}: [throttle]: {err}", path.display())))?;
        for c in e.degrade.revoke.iter().flatten() {
            crate::degrade::bit(c).map_err(|err| Error::InvalidRequest(format!("{}: [degrade]: {err}", path.display())))?;
        }
        e.trail.check().map_err(|err| Error::InvalidRequest(format!("{}: [trail]: {err}", path.display())))?;
        for r in &e.tripwires {
            crate::tripwire::Rule::check(r).map_err(|err| Error::InvalidRequest(format!("{}: [[tripwires]]: {err}", path.display())))?;
        }
        Ok(e)
    }
}

/// Parses a level for `escalate --to` / `restore --to`.
pub use crate::level::parse as parse_level;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_what_it_cannot_apply() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, "[throttle]\nsyscalls = 500\nsyscall_class = { net = 20 }\n[degrade]\nrevoke = [\"net.connect\"]\n").unwrap();
        let e = Escalation::load(&p).unwrap();
        assert_eq!(e.throttle.ceilings().syscalls.get("all"), Some(&500));
        assert_eq!(e.throttle.ceilings().syscalls.get("net"), Some(&20));
        assert_eq!(e.throttle.egress_bytes, None);
        std::fs::write(&p, "[throttle]\nsyscals = 500\n").unwrap();
        assert!(Escalation::load(&p).unwrap_err().to_string().contains("syscals"));
        std::fs::write(&p, "[throttle]\nsyscalls = 1\n").unwrap();
        assert!(Escalation::load(&p).unwrap_err().to_string().contains("out of range"));
        std::fs::write(&p, "[degrade]\nrevoke = [\"teleport\"]\n").unwrap();
        assert!(Escalation::load(&p).is_err());
        assert_eq!(Escalation::default().throttle.ceilings().syscalls.get("all"), Some(&1000));
    }

    #[test]
    fn config_trail_record_patterns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, "[trail]\nrecord = [\"agent-*\", \"batch\"]\n").unwrap();
        let t = Escalation::load(&p).unwrap().trail;
        assert!(t.records("agent-7") && t.records("batch"));
        assert!(!t.records("batch2") && !t.records("agent") && !t.records("web"));
        assert!(!Escalation::default().trail.records("anything"), "nothing records by default");
        std::fs::write(&p, "[trail]\nrecord = [\"*\"]\n").unwrap();
        assert!(Escalation::load(&p).unwrap().trail.records("web"));
        for bad in ["\"a*b\"", "\"\"", "\"x**\""] {
            std::fs::write(&p, format!("[trail]\nrecord = [{bad}]\n")).unwrap();
            assert!(Escalation::load(&p).unwrap_err().to_string().contains("[trail]"), "{bad}");
        }
        std::fs::write(&p, "[trail]\nrecrd = []\n").unwrap();
        assert!(Escalation::load(&p).unwrap_err().to_string().contains("recrd"));
    }
}
