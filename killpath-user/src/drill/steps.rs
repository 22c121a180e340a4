//! The drill's four steps, each triggered through the agent and verified
//! from outside the target: throttle (rate dropped), degrade (each revoked
//! capability denied, counted and alerted), isolate (every channel cut),
//! stop (no survivor; the canary resumes from its checkpoint).
use std::{
    net::TcpListener,
    path::Path,
    process::{Command as Process, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::*;
use crate::{
    client::protocol::Command,
    client::Session,
    error::{Error, Result},
};

/// Syscalls per second of every task in `cgroup`, from outside: the sum
/// of read and write syscalls in /proc/PID/io over `window`.
pub(super) fn syscall_rate(cgroup: &Path, window: Duration) -> f64 {
    let sample = || -> u64 {
        crate::kernel::cgroup::Cgroup::new(cgroup)
            .procs_recursive()
            .iter()
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{p}/io"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.strip_prefix("syscr: ").or_else(|| l.strip_prefix("syscw: ")))
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    };
    let (a, t) = (sample(), Instant::now());
    std::thread::sleep(window);
    sample().saturating_sub(a) as f64 / t.elapsed().as_secs_f64()
}

/// Whether an alert for `action` on `target` was journaled after the
/// step's own result record (`journal_seq` of its response): the agent
/// raises it right after that record.
pub(super) fn alert_after(s: &mut Session, step: &Value, target: &str, action: &str) -> Result<bool> {
    let seq = step["journal_seq"].as_u64().unwrap_or(0);
    let r = s.call(&Command::Journal { after: seq }, REQUEST_TIMEOUT).map_err(client_err)?;
    Ok(r["records"].as_array().into_iter().flatten().any(|rec| rec["action"] == "alert" && rec["target"] == target && rec["params"]["action"] == action))
}

pub(super) fn status_row(s: &mut Session, target: &str) -> Result<Value> {
    let r = s.call(&Command::Status { name: Some(target.to_owned()) }, REQUEST_TIMEOUT).map_err(client_err)?;
    Ok(r["targets"][0].clone())
}

pub(super) fn throttle_step(s: &mut Session, sc: &Scenario, target: &str, cgroup: &Path, settle: Duration) -> Result<Step> {
    let ceiling = sc.throttle.syscalls;
    let before = syscall_rate(cgroup, Duration::from_millis(1500));
    let cmd = Command::Throttle {
        name: target.to_owned(),
        syscalls: Some(ceiling),
        syscall_class: Default::default(),
        egress_bytes: None,
        egress_packets: None,
        tasks: None,
        mode: None,
        netdev: Vec::new(),
        reason: Some("drill".into()),
    };
    let mut checks = Vec::new();
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            checks.push(check("throttle applied", false, e.to_string()));
            return Ok(Step { level: "throttle".into(), params: json!({"syscalls": ceiling}), time_to_effect_us: None, passed: false, checks });
        }
    };
    let took = r["time_to_effect_us"].as_u64();
    std::thread::sleep(settle);
    let after = syscall_rate(cgroup, Duration::from_secs(2));
    let limit = ceiling as f64 * (1.0 + sc.throttle.tolerance);
    let detail = format!("{after:.0}/s under a {ceiling}/s ceiling (was {before:.0}/s)");
    checks.push(check("measured rate at or below the ceiling", after <= limit, detail.clone()));
    if before <= ceiling as f64 {
        checks.push(check("rate was above the ceiling before", true, format!("note: the target made only {before:.0}/s before, so the drop cannot be seen")));
    } else {
        checks.push(check("rate dropped", after < before, detail));
    }
    checks.push(check("alert raised", alert_after(s, &r, target, "throttle")?, "high-priority journal record for the throttle step"));
    threshold(&mut checks, "throttle", took, sc.throttle.max_time_to_effect_us);
    let passed = checks.iter().all(|c| c.passed);
    Ok(Step { level: "throttle".into(), params: json!({"syscalls": ceiling}), time_to_effect_us: took, checks, passed })
}

pub(super) fn degrade_step(s: &mut Session, sc: &Scenario, target: &str, cgroup: &Path, settle: Duration, left_out: &mut Vec<LeftOut>) -> Result<Step> {
    let caps = s.call(&Command::Capabilities {}, REQUEST_TIMEOUT).map_err(client_err)?;
    let catalog: Vec<(String, bool, String)> = caps["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c["enforceable"] == true, c["detail"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let revoke: Vec<String> = match &sc.degrade.revoke {
        Some(r) => r.clone(),
        None => {
            for (name, ok, why) in &catalog {
                if !ok {
                    left_out.push(LeftOut { what: format!("degrade: {name}"), why: format!("this kernel cannot enforce it: {why}") });
                }
            }
            catalog.iter().filter(|(_, ok, _)| *ok).map(|(n, _, _)| n.clone()).collect()
        }
    };
    let denials_before = status_row(s, target)?["denials"].clone();
    let cmd = Command::Degrade {
        name: target.to_owned(),
        revoke: revoke.clone(),
        allow_connect: Vec::new(),
        allow_write: Vec::new(),
        reason: Some("drill".into()),
        audit: false,
    };
    let mut checks = Vec::new();
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            checks.push(check("degrade applied", false, e.to_string()));
            return Ok(Step { level: "degrade".into(), params: json!({"revoke": revoke}), time_to_effect_us: None, passed: false, checks });
        }
    };
    let took = r["time_to_effect_us"].as_u64();
    std::thread::sleep(settle);
    let probes = run_probes(cgroup, &revoke)?;
    let denials_after = status_row(s, target)?["denials"].clone();
    for cap in &revoke {
        let row = probes.iter().find(|p| p["cap"] == cap.as_str()).cloned().unwrap_or(Value::Null);
        let result = row["result"].as_str().unwrap_or("no result").to_owned();
        checks.push(check(
            format!("{cap} denied"),
            result == "denied",
            format!("probe inside the target: {result} {}", row["detail"].as_str().unwrap_or_default()),
        ));
        let (b, a) = (denials_before[cap.as_str()]["total"].as_u64().unwrap_or(0), denials_after[cap.as_str()]["total"].as_u64().unwrap_or(0));
        checks.push(check(format!("{cap} denial counted"), a > b, format!("denials {b} -> {a}")));
    }
    checks.push(check("alert raised", alert_after(s, &r, target, "degrade")?, "high-priority journal record for the degrade step"));
    threshold(&mut checks, "degrade", took, sc.degrade.max_time_to_effect_us);
    let passed = checks.iter().all(|c| c.passed);
    Ok(Step { level: "degrade".into(), params: json!({"revoke": revoke}), time_to_effect_us: took, checks, passed })
}

/// Runs `killpath drill-probe` into the target for `caps`; its rows.
pub(super) fn run_probes(cgroup: &Path, caps: &[String]) -> Result<Vec<Value>> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding the drill's listener"))?;
    let addr = listener.local_addr().map_err(Error::io("listener address"))?;
    let mut outside = Process::new("sleep").arg("60").stdin(Stdio::null()).spawn().map_err(Error::io("starting an outside process"))?;
    let scratch = std::env::temp_dir().join(format!("killpath-drill-scratch-{}", std::process::id()));
    let _ = std::fs::create_dir_all(scratch.join("drill-mount"));
    let exe = std::env::current_exe().map_err(Error::io("finding own executable"))?;
    let out = Process::new(exe)
        .arg("drill-probe")
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--cap")
        .arg(caps.join(","))
        .arg("--connect")
        .arg(addr.to_string())
        .arg("--outside-pid")
        .arg(outside.id().to_string())
        .arg("--scratch")
        .arg(&scratch)
        .stdin(Stdio::null())
        .output();
    let _ = outside.kill();
    let _ = outside.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    let out = out.map_err(Error::io("running the drill probe"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::InvalidRequest(format!("the drill probe failed ({}): {e}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))?;
    Ok(v["probes"].as_array().cloned().unwrap_or_default())
}

pub(super) fn isolate_step(s: &mut Session, sc: &Scenario, target: &str, left_out: &mut Vec<LeftOut>) -> Result<Step> {
    let cmd = Command::Isolate { name: target.to_owned(), reason: Some("drill".into()), verify: true, netdev: Vec::new(), audit: false };
    let mut checks = Vec::new();
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            checks.push(check("isolate applied", false, e.to_string()));
            return Ok(Step { level: "isolate".into(), params: json!({}), time_to_effect_us: None, passed: false, checks });
        }
    };
    let took = r["time_to_effect_us"].as_u64();
    let channels = r["channels"].as_array().cloned().unwrap_or_default();
    for row in r["verify"].as_array().into_iter().flatten() {
        let ch = row["channel"].as_str().unwrap_or_default();
        let result = row["result"].as_str().unwrap_or_default();
        let catalog = channels.iter().find(|c| c["channel"] == ch);
        let enforced = catalog.is_none_or(|c| c["enforced"] == true);
        if !enforced {
            left_out.push(LeftOut {
                what: format!("isolate: channel {ch}"),
                why: format!("this kernel cannot cut it ({}); probe found it {result}", catalog.and_then(|c| c["by"].as_str()).unwrap_or("no mechanism")),
            });
            continue;
        }
        if result == "skipped" {
            left_out.push(LeftOut { what: format!("isolate: channel {ch}"), why: format!("not checked: {}", row["detail"].as_str().unwrap_or_default()) });
            continue;
        }
        checks.push(check(format!("channel {ch} cut"), result == "cut", format!("{result}: {}", row["detail"].as_str().unwrap_or_default())));
    }
    if checks.is_empty() {
        checks.push(check("channels verified", false, "the verify probe reported no channel"));
    }
    threshold(&mut checks, "isolate", took, sc.isolate.max_time_to_effect_us);
    let passed = checks.iter().all(|c| c.passed);
    Ok(Step { level: "isolate".into(), params: json!({"verify": true}), time_to_effect_us: took, checks, passed })
}

pub(super) fn stop_step(s: &mut Session, sc: &Scenario, target: &str, canary: Option<&mut CanaryRun>) -> Result<(Step, Option<canary::CheckReport>)> {
    let committed_before = canary.as_ref().map(|c| c.committed());
    let cmd = Command::Stop { name: target.to_owned(), reason: Some("drill".into()), order: None };
    let mut checks = Vec::new();
    let r = match s.call(&cmd, REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            checks.push(check("stop applied", false, e.to_string()));
            return Ok((Step { level: "stop".into(), params: json!({}), time_to_effect_us: None, passed: false, checks }, None));
        }
    };
    let took = r["time_to_empty_us"].as_u64();
    let survivors = r["survivors"].as_u64().unwrap_or(u64::MAX);
    checks.push(check(
        "no survivor",
        survivors <= sc.stop.max_survivors,
        format!("{survivors} survivor(s) of {} task(s); halted in {} µs, empty in {} µs", r["tasks_at_start"], r["time_to_halt_us"], r["time_to_empty_us"]),
    ));
    threshold(&mut checks, "stop", took, sc.stop.max_time_to_effect_us);
    let mut report = None;
    if let Some(c) = canary {
        if let Some(mut child) = c.child.take() {
            let _ = child.wait();
        }
        // Recovery: back to normal, the canary restarted from its
        // checkpoint, then its own data check.
        s.call(
            &Command::Restore {
                name: target.to_owned(),
                to: Some("normal".into()),
                grant: Vec::new(),
                reason: Some("drill: restart the canary".into()),
                audit_off: false,
            },
            REQUEST_TIMEOUT,
        )
        .map_err(client_err)?;
        let committed = c.committed();
        c.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.committed() <= committed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let resumed = c.committed();
        checks.push(check(
            "canary resumed from its last checkpoint",
            resumed > committed,
            format!("checkpoint before the stop: {} records; after the restart: {resumed}", committed_before.unwrap_or(committed)),
        ));
        let data = canary::check(&c.dir)?;
        let problems: Vec<String> = data.workers.iter().flat_map(|w| w.problems.iter().map(move |p| format!("worker {}: {p}", w.worker))).collect();
        checks.push(check(
            "canary data check: nothing lost, duplicated or torn",
            data.ok,
            if problems.is_empty() { format!("{} workers checked", data.workers.len()) } else { problems.join("; ") },
        ));
        report = Some(data);
    }
    let passed = checks.iter().all(|c| c.passed);
    Ok((Step { level: "stop".into(), params: json!({}), time_to_effect_us: took, checks, passed }, report))
}
