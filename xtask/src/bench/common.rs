//! Helpers shared by the benchmarks: processes in cgroups, waiting for
//! them, turning agent results into samples.
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use super::section::{Section, Unit};

/// Fails once SIGINT, SIGTERM or SIGHUP arrived (the sandbox's tasks are
/// already dead then): the run stops and cleans up.
pub(super) fn check_interrupted() -> Result<()> {
    if killpath_sandbox::interrupt::interrupted() {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Starts `argv` inside cgroup `cg` (it joins before exec).
pub(super) fn spawn_in_cgroup(cg: &Path, argv: &[&str]) -> Result<Child> {
    Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(cg)
        .args(argv)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} in {}", argv.join(" "), cg.display()))
}

/// Waits until process `pid` runs `comm` (it has exec'd).
pub(super) fn wait_comm(pid: u32, comm: &str) -> Result<()> {
    let start = Instant::now();
    let path = format!("/proc/{pid}/comm");
    while read_trimmed(&path) != comm {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("process {pid} did not exec {comm} within 10 s");
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

pub(super) fn count_procs(cg: &Path) -> Result<usize> {
    let path = cg.join("cgroup.procs");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .count())
}

pub(super) fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

pub(super) fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `items` rotated left by `rep`: each variant takes each position in turn.
pub(super) fn rotate<T: Copy>(items: &[T], rep: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = rep % v.len();
        v.rotate_left(k);
    }
    v
}

/// The three times every killpath stop reports: client wall, and the
/// agent's time to halt and to empty.
pub(super) fn push_stop_times(s: &mut Section, wall: Duration, r: &Value) -> Result<()> {
    s.push("kp_wall", "killpath stop: client wall time", Unit::Micros, micros(wall));
    s.push("kp_halt", "killpath stop: time_to_halt_us (agent)", Unit::Micros, num(r, "time_to_halt_us")?);
    s.push("kp_empty", "killpath stop: time_to_empty_us (agent)", Unit::Micros, num(r, "time_to_empty_us")?);
    if let Ok(v) = num(r, "intent_durable_us") {
        s.push("kp_intent", "killpath stop: receipt to intent durable (agent; part of halt and empty)", Unit::Micros, v);
    }
    Ok(())
}

/// Where a stop's time went, as its result gives it (receipt to the stop
/// thread, to the state lock, to the durable intent, to the halt; the
/// intent's append alone; how long the stop thread waited for a CPU;
/// whether the check after empty went by the marks read early), pushed as
/// `{tag}_{key}` series.
pub(super) fn push_stop_phases(s: &mut Section, tag: &str, r: &Value) {
    let phases = [
        ("queued_us", "receipt to handed to the stop threads (confinement checked before queueing)"),
        ("picked_up_us", "receipt to picked up by the stop thread"),
        ("lock_held_us", "receipt to state lock held"),
        ("checked_us", "receipt to caller checked (authorization, confinement)"),
        ("intent_durable_us", "receipt to intent durable"),
        ("journal_intent_us", "the intent's append (write + fdatasync)"),
        ("time_to_halt_us", "receipt to halt (the kill written)"),
        ("run_delay_us", "stop thread runnable but not running (schedstat)"),
    ];
    for (key, what) in phases {
        if let Some(v) = r[key].as_f64() {
            s.push(&format!("{tag}_{key}"), &format!("stop, {tag} agent: {what}"), Unit::Micros, v);
        }
    }
    s.push(
        &format!("{tag}_marks_early"),
        &format!("stop, {tag} agent: marks checked in the index (2), from the early read (1) or every mark read (0)"),
        Unit::Count,
        marks_early(r),
    );
}

/// How a stop checked the marks: 2 from the agent's index of every mark
/// (`marks_checked: index`), 1 from the read made beside it (`early`), 0
/// from a read of every mark.
pub(super) fn marks_early(r: &Value) -> f64 {
    match r["marks_checked"].as_str() {
        Some("index") => 2.0,
        Some("early") => 1.0,
        _ => 0.0,
    }
}

pub(super) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(super) fn count_f64(n: usize) -> f64 {
    n as f64
}

/// A numeric field of an agent result.
pub(super) fn num(r: &Value, key: &str) -> Result<f64> {
    r[key]
        .as_f64()
        .ok_or_else(|| anyhow!("the agent's result has no number {key:?}: {r}"))
}

/// Whether something listens on TCP `port` (from /proc/net/tcp and tcp6).
pub(super) fn listening(port: &str) -> bool {
    let Ok(port) = port.parse::<u16>() else {
        return false;
    };
    let hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.get(1).is_some_and(|a| a.ends_with(&hex)) && w.get(3) == Some(&"0A")
            })
    })
}
