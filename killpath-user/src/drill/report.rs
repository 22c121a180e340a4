//! What a drill reports: checks, steps with their times to effect, and
//! what was left out because this kernel cannot enforce it.

use serde::Serialize;
use serde_json::Value;

use super::*;

/// One verified fact.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One level of the drill.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub level: String,
    pub params: Value,
    pub time_to_effect_us: Option<u64>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

/// Something the drill did not check, and why.
#[derive(Clone, Debug, Serialize)]
pub struct LeftOut {
    pub what: String,
    pub why: String,
}

/// The drill report (human-readable through `Output`, and JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub drill: u64,
    pub target: String,
    pub canary: bool,
    pub scenario: String,
    pub started_unix_us: u64,
    pub duration_ms: u64,
    pub steps: Vec<Step>,
    pub left_out: Vec<LeftOut>,
    pub canary_check: Option<canary::CheckReport>,
    pub interrupted: bool,
    pub passed: bool,
    pub failed_checks: Vec<String>,
    /// What the agent put back at the end.
    pub restored: Value,
    /// Set when someone else changed the target during the drill: what
    /// differs and who changed it; the drill then restored nothing.
    pub conflict: Value,
    /// Where the target's activity trail summary is, when it records.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub trail: Value,
}

pub(super) fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), passed, detail: detail.into() }
}

pub(super) fn threshold(checks: &mut Vec<Check>, level: &str, took: Option<u64>, max: Option<u64>) {
    if let Some(max) = max {
        let t = took.unwrap_or(u64::MAX);
        checks.push(check(format!("{level}: time to effect ≤ {max} µs"), t <= max, format!("took {t} µs (threshold {max} µs)")));
    }
}
