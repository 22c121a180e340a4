//! Drill scenarios (TOML): which levels a drill runs, with which
//! parameters, and which thresholds its checks hold it to.
//!
//! ```toml
//! [options]
//! restore_between = false    # put the target back after every step
//! settle_ms = 300            # wait after a step before checking it
//!
//! [throttle]
//! syscalls = 500             # ceiling (per second, all syscalls)
//! tolerance = 0.10           # measured rate may exceed it by this much
//! max_time_to_effect_us = 5000
//!
//! [degrade]
//! revoke = ["net.connect"]   # default: every capability this kernel enforces
//!
//! [isolate]
//! max_time_to_effect_us = 5000
//!
//! [stop]
//! enabled = true             # default: on for --canary, off for a named target
//! max_survivors = 0
//! ```
//! Every section may say `enabled = false`. Unknown keys are errors.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub restore_between: bool,
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { restore_between: false, settle_ms: default_settle() }
    }
}

fn default_settle() -> u64 {
    300
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleStep {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_ceiling")]
    pub syscalls: u64,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default)]
    pub max_time_to_effect_us: Option<u64>,
}

impl Default for ThrottleStep {
    fn default() -> Self {
        Self { enabled: true, syscalls: default_ceiling(), tolerance: default_tolerance(), max_time_to_effect_us: None }
    }
}

fn default_ceiling() -> u64 {
    500
}

fn default_tolerance() -> f64 {
    0.10
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradeStep {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// None: every capability this kernel can enforce.
    #[serde(default)]
    pub revoke: Option<Vec<String>>,
    #[serde(default)]
    pub max_time_to_effect_us: Option<u64>,
}

impl Default for DegradeStep {
    fn default() -> Self {
        Self { enabled: true, revoke: None, max_time_to_effect_us: None }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateStep {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub max_time_to_effect_us: Option<u64>,
}

impl Default for IsolateStep {
    fn default() -> Self {
        Self { enabled: true, max_time_to_effect_us: None }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopStep {
    /// None: on for a canary, off for a named target (a drill does not
    /// kill a real workload unless the scenario says so).
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub max_survivors: u64,
    #[serde(default)]
    pub max_time_to_effect_us: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub throttle: ThrottleStep,
    #[serde(default)]
    pub degrade: DegradeStep,
    #[serde(default)]
    pub isolate: IsolateStep,
    #[serde(default)]
    pub stop: StopStep,
}

impl Scenario {
    /// Reads a scenario file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
        let s: Scenario = toml::from_str(&text).map_err(|e| Error::InvalidRequest(format!("scenario {}: {e}", path.display())))?;
        if !(0.0..=1.0).contains(&s.throttle.tolerance) {
            return Err(Error::InvalidRequest(format!("scenario {}: throttle.tolerance must be between 0 and 1", path.display())));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_with_defaults_and_reject_typos() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.toml");
        std::fs::write(&p, "[isolate]\nmax_time_to_effect_us = 1\n[stop]\nenabled = true\n").unwrap();
        let s = Scenario::load(&p).unwrap();
        assert_eq!(s.isolate.max_time_to_effect_us, Some(1));
        assert_eq!(s.throttle.syscalls, 500);
        assert_eq!(s.stop.enabled, Some(true));
        std::fs::write(&p, "[isolate]\nmax_time_to_efect_us = 1\n").unwrap();
        assert!(Scenario::load(&p).unwrap_err().to_string().contains("max_time_to_efect_us"));
        std::fs::write(&p, "[throttle]\ntolerance = 3.0\n").unwrap();
        assert!(Scenario::load(&p).is_err());
    }
}
