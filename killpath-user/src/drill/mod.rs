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
mod audit;
pub mod canary;
pub mod probe;
mod report;
pub mod scenario;
mod steps;

use report::*;
pub use report::{Check, LeftOut, Report, Step};
use steps::*;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command as Process, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

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
    /// Degrade and isolate in audit mode (nothing enforced); no throttle, no stop.
    pub audit: bool,
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
        let r = s.call(&Command::Create { name: name.clone(), move_caller: false, trail: false }, REQUEST_TIMEOUT).map_err(client_err)?;
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
        let _ = s.call(&Command::Stop { name: c.name.clone(), reason: Some("drill finished".into()), order: None }, REQUEST_TIMEOUT);
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

    // Set when the agent refuses a drill command because someone else
    // changed the target during the drill: the drill stops there.
    let mut halted: Option<String> = None;
    if opts.audit {
        audit::steps(s, sc, target, &cgroup, settle, &mut steps, &mut left_out)?;
    }
    if !opts.audit && sc.throttle.enabled && !interrupted() {
        steps.push(throttle_step(s, sc, target, &cgroup, settle)?);
        restore_between(s, sc, target, start_level, &mut halted)?;
    } else if !opts.audit && !sc.throttle.enabled {
        left_out.push(LeftOut { what: "throttle".into(), why: "disabled in the scenario".into() });
    }
    if !opts.audit && sc.degrade.enabled && !interrupted() && halted.is_none() {
        steps.push(degrade_step(s, sc, target, &cgroup, settle, &mut left_out)?);
        restore_between(s, sc, target, start_level, &mut halted)?;
    } else if !opts.audit && !sc.degrade.enabled {
        left_out.push(LeftOut { what: "degrade".into(), why: "disabled in the scenario".into() });
    }
    if !opts.audit && sc.isolate.enabled && !interrupted() && halted.is_none() {
        steps.push(isolate_step(s, sc, target, &mut left_out)?);
        restore_between(s, sc, target, start_level, &mut halted)?;
    } else if !opts.audit && !sc.isolate.enabled {
        left_out.push(LeftOut { what: "isolate".into(), why: "disabled in the scenario".into() });
    }
    // An audit drill enforces nothing: no stop.
    let stop_enabled = !opts.audit && sc.stop.enabled.unwrap_or(canary.is_some());
    if let Some(why) = &halted {
        left_out.push(LeftOut { what: "remaining steps".into(), why: why.clone() });
    }
    if stop_enabled && !interrupted() && halted.is_none() {
        let (step, check) = stop_step(s, sc, target, canary)?;
        steps.push(step);
        canary_check = check;
    } else if !stop_enabled && !opts.audit {
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
        conflict: Value::Null,
    };
    report.duration_ms = started.elapsed().as_millis() as u64;
    let end = s.call(&Command::DrillEnd { report: json!(report), restore: true }, REQUEST_TIMEOUT).map_err(client_err)?;
    report.restored = end["restored"].clone();
    report.conflict = end["conflict"].clone();
    if !report.conflict.is_null() {
        report.passed = false;
        let summary = report.conflict["summary"].as_str().unwrap_or("changed by someone else").to_owned();
        report.failed_checks.push(format!("target changed by someone else during the drill; left as they set it, nothing restored: {summary}"));
    }
    Ok(report)
}

/// Puts the target back to the drill's start level between steps. A
/// refusal because someone else changed the target (`drill-conflict`)
/// halts the drill instead of failing it: the target is theirs now.
fn restore_between(s: &mut Session, sc: &Scenario, target: &str, start_level: u32, halted: &mut Option<String>) -> Result<()> {
    if !sc.options.restore_between || halted.is_some() {
        return Ok(());
    }
    let cur = status_row(s, target)?;
    if cur["level"] != crate::target::level_name(start_level) {
        let to = crate::target::level_name(start_level).to_owned();
        let cmd = Command::Restore {
            name: target.to_owned(),
            to: Some(to),
            grant: Vec::new(),
            reason: Some("drill: restore between steps".into()),
            audit_off: false,
        };
        match s.call(&cmd, REQUEST_TIMEOUT) {
            Ok(_) => {}
            Err(crate::client::ClientError::Agent(body)) if body.code == "drill-conflict" => *halted = Some(body.message),
            Err(e) => return Err(client_err(e)),
        }
    }
    Ok(())
}
