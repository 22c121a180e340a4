//! `killpath drill`: the whole kill path, run, verified from outside and
//! timed, on a target or a fresh canary.
//!
//! "Trigger throttle and verify the rate drops. Revoke a capability and
//! confirm the system degrades correctly without silent failures. Isolate
//! the system and verify that every integration point is actually cut.
//! Kill the process and confirm that recovery from the last checkpoint
//! works and that no data is lost or corrupted."
//!
//! The drill runs in this client, on one connection to the agent: the
//! agent journals every command on it with actor `drill`, keeps a snapshot
//! of the target, and puts the target back at `drill-end` — or by itself
//! when the connection closes first (Ctrl-C, a crash) or when it restarts
//! during the drill.
//!
//! - [`scenario`]: scenario files; [`probe`]: the degrade probe run inside
//!   the target; [`canary`]: the built-in checkpointing workload.
pub mod canary;
pub mod probe;
pub mod scenario;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command as Process, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    client::protocol::Command,
    client::Session,
    error::{Error, Result},
};
use scenario::Scenario;

/// How long one request may take (a stop waits for the cgroup to empty;
/// `isolate --verify` runs probes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What to drill.
pub struct Options {
    pub socket: PathBuf,
    pub target: Option<String>,
    pub canary: bool,
    pub scenario: Option<PathBuf>,
}

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
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn client_err(e: crate::client::ClientError) -> Error {
    Error::InvalidRequest(format!("drill: {e}"))
}

/// A tiny HTTP service outside the target, for the canary to call.
struct Service {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Service {
    fn start() -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding the drill's service"))?;
        let addr = l.local_addr().map_err(Error::io("service address"))?;
        l.set_nonblocking(true).map_err(Error::io("service socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 512];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The canary a `--canary` drill starts in its own target.
struct CanaryRun {
    name: String,
    dir: PathBuf,
    cgroup: PathBuf,
    child: Option<Child>,
    service: Service,
}

impl CanaryRun {
    fn start(s: &mut Session) -> Result<Self> {
        let name = format!("drill-canary-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{name}-{}", now_us()));
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let r = s.call(&Command::Create { name: name.clone(), move_caller: false }, REQUEST_TIMEOUT).map_err(client_err)?;
        let cgroup = PathBuf::from(r["target"]["cgroup"].as_str().unwrap_or_default());
        let mut c = CanaryRun { name, dir, cgroup, child: None, service: Service::start()? };
        c.spawn()?;
        // Running, and past its first checkpoint.
        let deadline = Instant::now() + Duration::from_secs(30);
        while canary::read_checkpoint(&c.dir, 0).ok().flatten().is_none() {
            if Instant::now() > deadline {
                return Err(Error::InvalidRequest(format!("the canary in {} wrote no checkpoint within 30 s", c.dir.display())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// Starts (or restarts) the canary inside the target's cgroup, before
    /// its first instruction: the shell moves itself in, then execs.
    fn spawn(&mut self) -> Result<()> {
        let exe = std::env::current_exe().map_err(Error::io("finding own executable"))?;
        let child = Process::new("sh")
            .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
            .arg(&self.cgroup)
            .arg(exe)
            .args(["canary", "--dir"])
            .arg(&self.dir)
            .arg("--service")
            .arg(self.service.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("starting the canary"))?;
        self.child = Some(child);
        Ok(())
    }

    fn committed(&self) -> u64 {
        canary::read_checkpoint(&self.dir, 0).ok().flatten().map_or(0, |c| c.records)
    }
}

impl Drop for CanaryRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Syscalls per second of every task in `cgroup`, from outside: the sum
/// of read and write syscalls in /proc/PID/io over `window`.
fn syscall_rate(cgroup: &Path, window: Duration) -> f64 {
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

fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), passed, detail: detail.into() }
}

fn threshold(checks: &mut Vec<Check>, level: &str, took: Option<u64>, max: Option<u64>) {
    if let Some(max) = max {
        let t = took.unwrap_or(u64::MAX);
        checks.push(check(format!("{level}: time to effect ≤ {max} µs"), t <= max, format!("took {t} µs (threshold {max} µs)")));
    }
}

/// Whether an alert for `action` on `target` was journaled after the
/// step's own result record (`journal_seq` of its response): the agent
/// raises it right after that record.
fn alert_after(s: &mut Session, step: &Value, target: &str, action: &str) -> Result<bool> {
    let seq = step["journal_seq"].as_u64().unwrap_or(0);
    let r = s.call(&Command::Journal { after: seq }, REQUEST_TIMEOUT).map_err(client_err)?;
    Ok(r["records"].as_array().into_iter().flatten().any(|rec| rec["action"] == "alert" && rec["target"] == target && rec["params"]["action"] == action))
}

fn status_row(s: &mut Session, target: &str) -> Result<Value> {
    let r = s.call(&Command::Status { name: Some(target.to_owned()) }, REQUEST_TIMEOUT).map_err(client_err)?;
    Ok(r["targets"][0].clone())
}

/// Runs a drill and returns its report. Errors are reserved for a drill
/// that could not run at all (no agent, unknown target); a check that
/// fails is in the report.
pub fn run(opts: &Options) -> Result<Report> {
    let scenario = match &opts.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    install_interrupt_handler();
    let mut s = Session::open(&opts.socket, Duration::from_secs(5)).map_err(client_err)?;
    let mut canary_run = match (opts.canary, &opts.target) {
        (true, _) => Some(CanaryRun::start(&mut s)?),
        (false, Some(_)) => None,
        (false, None) => return Err(Error::InvalidRequest("drill needs a target NAME, --canary or --history".into())),
    };
    let target = match &canary_run {
        Some(c) => c.name.clone(),
        None => opts.target.clone().unwrap_or_default(),
    };
    let result = drill(&mut s, &scenario, opts, &target, canary_run.as_mut());
    if let Some(c) = canary_run.take() {
        // The drill's own canary: stop it and forget its target.
        let _ = s.call(&Command::Stop { name: c.name.clone(), reason: Some("drill finished".into()) }, REQUEST_TIMEOUT);
        let _ = s.call(&Command::Release { name: c.name.clone() }, REQUEST_TIMEOUT);
        drop(c);
    }
    result
}

fn drill(s: &mut Session, sc: &Scenario, opts: &Options, target: &str, canary: Option<&mut CanaryRun>) -> Result<Report> {
    let started = Instant::now();
    let started_unix_us = now_us();
    let begin = s.call(&Command::DrillBegin { target: target.to_owned() }, REQUEST_TIMEOUT).map_err(client_err)?;
    let drill_id = begin["drill"].as_u64().unwrap_or(0);
    let start_level = begin["snapshot"]["level"].as_u64().unwrap_or(0) as u32;
    let cgroup = PathBuf::from(status_row(s, target)?["cgroup"].as_str().unwrap_or_default());
    let settle = Duration::from_millis(sc.options.settle_ms);
    let mut steps = Vec::new();
    let mut left_out = Vec::new();
    let mut canary_check = None;

    if sc.throttle.enabled && !interrupted() {
        steps.push(throttle_step(s, sc, target, &cgroup, settle)?);
        restore_between(s, sc, target, start_level)?;
    } else if !sc.throttle.enabled {
        left_out.push(LeftOut { what: "throttle".into(), why: "disabled in the scenario".into() });
    }
    if sc.degrade.enabled && !interrupted() {
        steps.push(degrade_step(s, sc, target, &cgroup, settle, &mut left_out)?);
        restore_between(s, sc, target, start_level)?;
    } else if !sc.degrade.enabled {
        left_out.push(LeftOut { what: "degrade".into(), why: "disabled in the scenario".into() });
    }
    if sc.isolate.enabled && !interrupted() {
        steps.push(isolate_step(s, sc, target, &mut left_out)?);
        restore_between(s, sc, target, start_level)?;
    } else if !sc.isolate.enabled {
        left_out.push(LeftOut { what: "isolate".into(), why: "disabled in the scenario".into() });
    }
    let stop_enabled = sc.stop.enabled.unwrap_or(canary.is_some());
    if stop_enabled && !interrupted() {
        let (step, check) = stop_step(s, sc, target, canary)?;
        steps.push(step);
        canary_check = check;
    } else if !stop_enabled {
        let why = if sc.stop.enabled.is_none() {
            "a drill does not kill a named target unless the scenario sets [stop] enabled = true"
        } else {
            "disabled in the scenario"
        };
        left_out.push(LeftOut { what: "stop".into(), why: why.into() });
    }
    let was_interrupted = interrupted();
    let failed_checks: Vec<String> =
        steps.iter().flat_map(|st| st.checks.iter().filter(|c| !c.passed).map(move |c| format!("{}: {}: {}", st.level, c.name, c.detail))).collect();
    let mut report = Report {
        drill: drill_id,
        target: target.to_owned(),
        canary: opts.canary,
        scenario: opts.scenario.as_ref().map_or("built-in default".into(), |p| p.display().to_string()),
        started_unix_us,
        duration_ms: 0,
        passed: failed_checks.is_empty() && !was_interrupted,
        failed_checks,
        steps,
        left_out,
        canary_check,
        interrupted: was_interrupted,
        restored: Value::Null,
    };
    report.duration_ms = started.elapsed().as_millis() as u64;
    let end = s.call(&Command::DrillEnd { report: json!(report), restore: true }, REQUEST_TIMEOUT).map_err(client_err)?;
    report.restored = end["restored"].clone();
    Ok(report)
}

fn restore_between(s: &mut Session, sc: &Scenario, target: &str, start_level: u32) -> Result<()> {
    if !sc.options.restore_between {
        return Ok(());
    }
    let cur = status_row(s, target)?;
    if cur["level"] != crate::target::level_name(start_level) {
        let to = crate::target::level_name(start_level).to_owned();
        s.call(
            &Command::Restore { name: target.to_owned(), to: Some(to), grant: Vec::new(), reason: Some("drill: restore between steps".into()) },
            REQUEST_TIMEOUT,
        )
        .map_err(client_err)?;
    }
    Ok(())
}

fn throttle_step(s: &mut Session, sc: &Scenario, target: &str, cgroup: &Path, settle: Duration) -> Result<Step> {
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

fn degrade_step(s: &mut Session, sc: &Scenario, target: &str, cgroup: &Path, settle: Duration, left_out: &mut Vec<LeftOut>) -> Result<Step> {
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
    let cmd =
        Command::Degrade { name: target.to_owned(), revoke: revoke.clone(), allow_connect: Vec::new(), allow_write: Vec::new(), reason: Some("drill".into()) };
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
fn run_probes(cgroup: &Path, caps: &[String]) -> Result<Vec<Value>> {
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

fn isolate_step(s: &mut Session, sc: &Scenario, target: &str, left_out: &mut Vec<LeftOut>) -> Result<Step> {
    let cmd = Command::Isolate { name: target.to_owned(), reason: Some("drill".into()), verify: true, netdev: Vec::new() };
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

fn stop_step(s: &mut Session, sc: &Scenario, target: &str, canary: Option<&mut CanaryRun>) -> Result<(Step, Option<canary::CheckReport>)> {
    let committed_before = canary.as_ref().map(|c| c.committed());
    let cmd = Command::Stop { name: target.to_owned(), reason: Some("drill".into()) };
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
            &Command::Restore { name: target.to_owned(), to: Some("normal".into()), grant: Vec::new(), reason: Some("drill: restart the canary".into()) },
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
