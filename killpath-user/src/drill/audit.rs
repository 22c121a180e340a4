//! `killpath drill --audit`: the degrade and isolate steps in audit mode.
//! Nothing is enforced; each step checks that the probes inside the
//! target still succeed (nothing was cut) and that the kernel counted
//! what the level WOULD have refused, and the report lists those counts.
//! Each step ends its audit (`restore --audit-off`), whose result is the
//! step's record of what would have been refused. Throttle and stop have
//! no audit mode: an audit drill leaves them out.
use std::{path::Path, time::Duration};

use serde_json::{json, Value};

use super::{
    client_err,
    report::{check, LeftOut, Step},
    scenario::Scenario,
    steps::{run_probes, status_row},
    REQUEST_TIMEOUT,
};
use crate::{client::protocol::Command, client::Session, error::Result};

/// The audit drill's steps, in level order: degrade, then isolate (each
/// ends its own audit).
pub(super) fn steps(
    s: &mut Session,
    sc: &Scenario,
    target: &str,
    cgroup: &Path,
    settle: Duration,
    steps: &mut Vec<Step>,
    left_out: &mut Vec<LeftOut>,
) -> Result<()> {
    left_out.push(LeftOut { what: "throttle, stop".into(), why: "an audit drill enforces nothing: only degrade and isolate have an audit mode".into() });
    if sc.degrade.enabled && !super::interrupted() {
        steps.push(degrade_audit_step(s, sc, target, cgroup, settle, left_out)?);
    }
    if sc.isolate.enabled && !super::interrupted() {
        steps.push(isolate_audit_step(s, target, left_out)?);
    }
    Ok(())
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Ends the step's audit; what the kernel counted while it ran.
fn audit_off(s: &mut Session, target: &str) -> Result<Value> {
    let cmd = Command::Restore { name: target.to_owned(), to: None, grant: Vec::new(), reason: Some("drill: end of the audit step".into()), audit_off: true };
    let r = s.call(&cmd, REQUEST_TIMEOUT).map_err(client_err)?;
    Ok(r["would_have_refused"].clone())
}

fn failed(level: &str, what: &str, e: impl ToString) -> Step {
    Step { level: level.into(), params: json!({"audit": true}), time_to_effect_us: None, passed: false, checks: vec![check(what, false, e.to_string())] }
}

/// Degrade in audit mode: every capability the catalog can enforce here
/// (or the scenario's list) is audited, probed from inside the target
/// (each probe must still succeed), and its would-be refusal must be counted.
pub(super) fn degrade_audit_step(s: &mut Session, sc: &Scenario, target: &str, cgroup: &Path, settle: Duration, left_out: &mut Vec<LeftOut>) -> Result<Step> {
    let caps = s.call(&Command::Capabilities {}, REQUEST_TIMEOUT).map_err(client_err)?;
    let revoke: Vec<String> = match &sc.degrade.revoke {
        Some(r) => r.clone(),
        None => {
            let mut ok = Vec::new();
            for c in caps["capabilities"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                if c["enforceable"] == true {
                    ok.push(name);
                } else {
                    left_out.push(LeftOut {
                        what: format!("degrade audit: {name}"),
                        why: format!("this kernel cannot check it: {}", c["detail"].as_str().unwrap_or_default()),
                    });
                }
            }
            ok
        }
    };
    let cmd = Command::Degrade {
        name: target.to_owned(),
        revoke: revoke.clone(),
        allow_connect: Vec::new(),
        allow_write: Vec::new(),
        reason: Some("drill (audit)".into()),
        audit: true,
    };
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => return Ok(failed("degrade (audit)", "degrade audit applied", e)),
    };
    let took = r["time_to_effect_us"].as_u64();
    std::thread::sleep(settle);
    let before = status_row(s, target)?;
    let probes = run_probes(cgroup, &revoke)?;
    let after = status_row(s, target)?;
    let mut checks = vec![check("level unchanged", after["level"] == before["level"], format!("level {} (an audit is not a level)", after["level"]))];
    for cap in &revoke {
        let row = probes.iter().find(|p| p["cap"] == cap.as_str()).cloned().unwrap_or(Value::Null);
        let result = row["result"].as_str().unwrap_or("no result").to_owned();
        if result == "not-checked" {
            left_out.push(LeftOut { what: format!("degrade audit: {cap}"), why: format!("not probed: {}", row["detail"].as_str().unwrap_or_default()) });
            continue;
        }
        checks.push(check(format!("{cap} not refused (audit)"), result != "denied", format!("probe inside the target: {result}")));
        let (b, a) = (count(&before["would_have_refused"], cap), count(&after["would_have_refused"], cap));
        checks.push(check(format!("{cap} would have been refused"), a > b, format!("would-be refusals {b} -> {a}")));
    }
    let counted = audit_off(s, target)?;
    let passed = checks.iter().all(|c| c.passed);
    Ok(Step {
        level: "degrade (audit)".into(),
        params: json!({"audit": true, "revoke": revoke, "would_have_refused": counted}),
        time_to_effect_us: took,
        checks,
        passed,
    })
}

/// Isolate in audit mode: every channel is probed from inside the target
/// (`verify`); none may be cut, and isolation's would-be refusals must be counted.
pub(super) fn isolate_audit_step(s: &mut Session, target: &str, left_out: &mut Vec<LeftOut>) -> Result<Step> {
    let cmd = Command::Isolate { name: target.to_owned(), reason: Some("drill (audit)".into()), verify: false, netdev: Vec::new(), audit: true };
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => return Ok(failed("isolate (audit)", "isolate audit applied", e)),
    };
    let took = r["time_to_effect_us"].as_u64();
    for ch in r["not_audited_channels"].as_array().into_iter().flatten() {
        left_out.push(LeftOut {
            what: format!("isolate audit: channel {}", ch.as_str().unwrap_or_default()),
            why: "isolation leaves it OPEN on this kernel, so audit cannot see it".into(),
        });
    }
    let before = status_row(s, target)?;
    let v = match s.call(&Command::Verify { name: target.to_owned() }, REQUEST_TIMEOUT) {
        Ok(v) => v,
        Err(e) => return Ok(failed("isolate (audit)", "channels probed", e)),
    };
    let after = status_row(s, target)?;
    let mut checks = vec![check("level unchanged", after["level"] == before["level"], format!("level {}", after["level"]))];
    for row in v["verify"].as_array().into_iter().flatten() {
        let (ch, result) = (row["channel"].as_str().unwrap_or_default(), row["result"].as_str().unwrap_or_default());
        if result == "skipped" {
            continue;
        }
        checks.push(check(format!("channel {ch} not cut (audit)"), result != "cut", format!("{result}: {}", row["detail"].as_str().unwrap_or_default())));
    }
    let total = |row: &Value| {
        row["would_have_refused"]
            .as_object()
            .map_or(0, |m| m.iter().filter(|(k, _)| k.starts_with("isolate.")).map(|(_, n)| n.as_u64().unwrap_or(0)).sum::<u64>())
    };
    let (b, a) = (total(&before), total(&after));
    checks.push(check("isolation would have refused the probes", a > b, format!("would-be refusals {b} -> {a}")));
    let counted = audit_off(s, target)?;
    let passed = checks.iter().all(|c| c.passed);
    Ok(Step { level: "isolate (audit)".into(), params: json!({"audit": true, "would_have_refused": counted}), time_to_effect_us: took, checks, passed })
}
