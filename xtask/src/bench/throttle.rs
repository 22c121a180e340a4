//! Benchmark: throttle (level 1) accuracy and command-to-effect time.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, listening, micros, num, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

/// A tight loop of read(2) of 0 bytes: its rate is /proc/PID/io `syscr`,
/// read from outside the target.
const READ_LOOP: &str = "import os\nfd = os.open('/dev/zero', os.O_RDONLY)\nwhile True:\n    os.read(fd, 0)\n";
const SYSCALL_CEILINGS: [u64; 4] = [10, 100, 1_000, 10_000];
const EGRESS_CEILINGS: [u64; 2] = [1_000_000, 10_000_000];
const ACCURACY_WINDOW: Duration = Duration::from_secs(3);
const IPERF_SECS: u64 = 6;

/// The distribution's python3 when there is one: a `python3` found on PATH
/// may be a pyenv shim, bash scripts that make ~9,500 syscalls (and exec
/// several times) before the loop starts.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Waits until the read loop itself runs: at least 5,000 reads in 100 ms.
/// Its comm is `python3` from the exec on, but the interpreter's start
/// (360 syscalls for /usr/bin/python3, ~9,500 through a pyenv shim) comes
/// before the loop; a ceiling applied then is spent on the start, and
/// `syscr` (reads only) showed 6/s under a 100/s ceiling in the first
/// repetition (it was the shim's start, paced exactly at 100/s).
fn wait_loop(pid: u32) -> Result<f64> {
    let start = Instant::now();
    loop {
        let (a, t) = (syscr(pid)?, Instant::now());
        std::thread::sleep(Duration::from_millis(100));
        let n = syscr(pid)? - a;
        if n >= 5_000 {
            return Ok(n as f64 / t.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the read loop in process {pid} never ran (last: {n} reads in 100 ms)");
        }
    }
}

fn syscr(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).with_context(|| format!("reading /proc/{pid}/io"))?;
    io.lines().find_map(|l| l.strip_prefix("syscr: ")).and_then(|n| n.trim().parse().ok()).context("no syscr line")
}

pub(super) fn throttle(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Throttle: accuracy and command to effect".into();
    s.description = format!(
        "**Syscall accuracy**: a python loop of `read(fd, 0)` in a target (the distribution's python3, not a pyenv shim; \
         measured once the loop runs, not while the interpreter starts), throttled with `--syscalls` at {SYSCALL_CEILINGS:?}/s, \
         the ceilings in turn in each repetition (so each starts right after a change of ceiling, 10,000/s to 10/s between repetitions); \
         its rate is read from outside (`syscr` in /proc/PID/io) over {} s after a 0.5 s settle, {} repetitions each; \
         the ratio is measured / ceiling, at p50 and for the lowest and highest repetition (goal: every repetition within ±10%). \
         **Egress accuracy**: `iperf3 -c` inside the target against `iperf3 -s -1 -J` outside, \
         `--egress-bytes` at {EGRESS_CEILINGS:?} B/s, the server's received bytes over seconds 2–{IPERF_SECS}, {} repetitions. \
         **Command to effect**: {} `throttle` requests alternating the ceiling between 1,000/s and 2,000/s: client wall time, \
         the agent's `time_to_effect_us` (receipt, intent journaled and fsynced, map update) and `map_update_us`. \
         There is no administrator's alternative for a per-workload syscall ceiling (seccomp cannot rate-limit, cgroup cpu.max \
         caps CPU time, not calls), so no ratio is given for it.",
        ACCURACY_WINDOW.as_secs(),
        syscall_reps(p),
        egress_reps(p),
        p.effect_reps
    );
    let name = "thr";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let mut target = spawn_in_cgroup(&cg, &[python(), "-c", READ_LOOP])?;
    let result = (|| -> Result<()> {
        wait_comm(target.id(), "python3")?;
        let free = wait_loop(target.id())?;
        println!("bench:   throttle: the read loop runs unthrottled at {free:.0}/s");
        accuracy(sb, p, s, name, target.id())?;
        effect(sb, p, s, name)?;
        Ok(())
    })();
    proc::terminate(&mut target, Duration::from_secs(1));
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    let egress = egress_accuracy(sb, p, s);
    // p50, and the worst repetition each way: the goal is every repetition
    // within ±10% (a throttle that starves the workload in one repetition
    // is not a throttle).
    for c in SYSCALL_CEILINGS {
        let ids: [(&'static str, &'static str); 3] = match c {
            10 => [
                ("syscalls_10_accuracy", "syscalls: measured / ceiling at 10/s (p50)"),
                ("syscalls_10_accuracy_min", "syscalls: measured / ceiling at 10/s (lowest repetition)"),
                ("syscalls_10_accuracy_max", "syscalls: measured / ceiling at 10/s (highest repetition)"),
            ],
            100 => [
                ("syscalls_100_accuracy", "syscalls: measured / ceiling at 100/s (p50)"),
                ("syscalls_100_accuracy_min", "syscalls: measured / ceiling at 100/s (lowest repetition)"),
                ("syscalls_100_accuracy_max", "syscalls: measured / ceiling at 100/s (highest repetition)"),
            ],
            1_000 => [
                ("syscalls_1000_accuracy", "syscalls: measured / ceiling at 1,000/s (p50)"),
                ("syscalls_1000_accuracy_min", "syscalls: measured / ceiling at 1,000/s (lowest repetition)"),
                ("syscalls_1000_accuracy_max", "syscalls: measured / ceiling at 1,000/s (highest repetition)"),
            ],
            _ => [
                ("syscalls_10000_accuracy", "syscalls: measured / ceiling at 10,000/s (p50)"),
                ("syscalls_10000_accuracy_min", "syscalls: measured / ceiling at 10,000/s (lowest repetition)"),
                ("syscalls_10000_accuracy_max", "syscalls: measured / ceiling at 10,000/s (highest repetition)"),
            ],
        };
        for ((id, label), q) in ids.into_iter().zip([0.5, 0.0, 1.0]) {
            s.ratio(id, label, &format!("sys_{c}"), &format!("ceiling_{c}"), q, Some("1.00 ± 0.10"));
        }
    }
    for c in EGRESS_CEILINGS {
        let ids: [(&'static str, &'static str); 3] = match c {
            1_000_000 => [
                ("egress_1mb_accuracy", "egress TCP: received / ceiling at 1 MB/s (p50)"),
                ("egress_1mb_accuracy_min", "egress TCP: received / ceiling at 1 MB/s (lowest repetition)"),
                ("egress_1mb_accuracy_max", "egress TCP: received / ceiling at 1 MB/s (highest repetition)"),
            ],
            _ => [
                ("egress_10mb_accuracy", "egress TCP: received / ceiling at 10 MB/s (p50)"),
                ("egress_10mb_accuracy_min", "egress TCP: received / ceiling at 10 MB/s (lowest repetition)"),
                ("egress_10mb_accuracy_max", "egress TCP: received / ceiling at 10 MB/s (highest repetition)"),
            ],
        };
        for ((id, label), q) in ids.into_iter().zip([0.5, 0.0, 1.0]) {
            s.ratio(id, label, &format!("egress_{c}"), &format!("ceiling_{c}"), q, Some("1.00 ± 0.10"));
        }
    }
    egress
}

/// Repetitions of the syscall accuracy runs: 5 (3 with --quick).
fn syscall_reps(p: &Params) -> usize {
    (p.effect_reps / 20).max(3)
}

/// Repetitions of the egress accuracy runs: 3 (2 with --quick).
fn egress_reps(p: &Params) -> usize {
    (p.effect_reps / 33).max(2)
}

fn accuracy(sb: &mut Sandbox, p: &Params, s: &mut Section, name: &str, pid: u32) -> Result<()> {
    for rep in 0..syscall_reps(p) {
        for c in SYSCALL_CEILINGS {
            check_interrupted()?;
            sb.call("throttle", json!({"name": name, "syscalls": c, "reason": "bench"}))?;
            std::thread::sleep(Duration::from_millis(500));
            let (a, t) = (syscr(pid)?, Instant::now());
            std::thread::sleep(ACCURACY_WINDOW);
            let rate = (syscr(pid)? - a) as f64 / t.elapsed().as_secs_f64();
            s.push(&format!("sys_{c}"), &format!("syscalls/s measured under a {c}/s ceiling"), Unit::PerSecond, rate);
            s.push(&format!("ceiling_{c}"), &format!("ceiling {c}/s"), Unit::PerSecond, c as f64);
            println!("bench:   throttle rep {rep}: ceiling {c}/s, measured {rate:.1}/s");
        }
    }
    Ok(())
}

fn effect(sb: &mut Sandbox, p: &Params, s: &mut Section, name: &str) -> Result<()> {
    for rep in 0..p.effect_reps {
        check_interrupted()?;
        let c = if rep % 2 == 0 { 1_000 } else { 2_000 };
        let (wall, r) = sb.call("throttle", json!({"name": name, "syscalls": c, "reason": "bench"}))?;
        s.push("kp_wall", "killpath throttle: client wall time", Unit::Micros, micros(wall));
        s.push("kp_effect", "killpath throttle: time_to_effect_us (agent)", Unit::Micros, num(&r, "time_to_effect_us")?);
        s.push("kp_map", "killpath throttle: map_update_us (agent)", Unit::Micros, num(&r, "map_update_us")?);
    }
    Ok(())
}

/// What one iperf3 run under a ceiling showed.
struct Received {
    /// Bytes per second the server received, seconds 2.. of its report.
    rate: f64,
    /// Each interval's rate, as a fraction of the ceiling (all seconds).
    per_second: Vec<f64>,
    /// The sender's TCP retransmissions (policer drops), when its report
    /// could be read.
    retransmits: Option<u64>,
}

/// Bytes per second the iperf3 server received, seconds 2.. of its
/// report, and each interval's rate.
fn received_rate(report: &str) -> Result<(f64, Vec<f64>)> {
    let v: Value = serde_json::from_str(report).with_context(|| format!("iperf3 -J output: {report}"))?;
    let (mut bytes, mut secs) = (0.0, 0.0);
    let mut per_second = Vec::new();
    for i in v["intervals"].as_array().into_iter().flatten() {
        let sum = &i["sum"];
        let (b, t) = (sum["bytes"].as_f64().unwrap_or(0.0), sum["seconds"].as_f64().unwrap_or(0.0));
        if t > 0.0 {
            per_second.push(b / t);
        }
        if sum["start"].as_f64().unwrap_or(0.0) >= 2.0 {
            bytes += b;
            secs += t;
        }
    }
    if secs < 1.0 {
        bail!("iperf3 report without intervals: {report}");
    }
    Ok((bytes / secs, per_second))
}

fn egress_accuracy(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let name = "thr-egress";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let result = (|| -> Result<()> {
        for rep in 0..egress_reps(p) {
            for c in EGRESS_CEILINGS {
                check_interrupted()?;
                sb.call("throttle", json!({"name": name, "egress_bytes": c, "reason": "bench"}))?;
                let r = iperf_in(&cg)?;
                let rate = r.rate;
                s.push(&format!("egress_{c}"), &format!("TCP bytes/s received under a {c} B/s ceiling"), Unit::PerSecond, rate);
                s.push(&format!("ceiling_{c}"), &format!("ceiling {c} B/s"), Unit::PerSecond, c as f64);
                // Each second and the sender's retransmissions, to tell a
                // policer drop (retransmission timeouts) from a slow sender.
                let seconds: Vec<String> = r.per_second.iter().map(|b| format!("{:.2}", b / c as f64)).collect();
                let retransmits = r.retransmits.map_or("?".to_owned(), |n| n.to_string());
                println!(
                    "bench:   throttle egress rep {rep}: ceiling {c} B/s, received {rate:.0} B/s ({:.2}x; each second {}; sender retransmits {retransmits})",
                    rate / c as f64,
                    seconds.join(" ")
                );
            }
        }
        Ok(())
    })();
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    Ok(())
}

fn iperf_in(cg: &Path) -> Result<Received> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let server = Command::new("iperf3")
        .args(["-s", "-1", "-J", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let start = Instant::now();
    while !listening(&port) {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("iperf3 -s never listened on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::env::temp_dir().join(format!("killpath-bench-iperf-{port}.json"));
    let log_arg = log.to_string_lossy().into_owned();
    let mut client = spawn_in_cgroup(cg, &["iperf3", "-c", "127.0.0.1", "-p", &port, "-t", &IPERF_SECS.to_string(), "-J", "--logfile", &log_arg])?;
    let _ = client.wait();
    let out = server.wait_with_output().context("waiting for iperf3 -s")?;
    let (rate, per_second) = received_rate(&String::from_utf8_lossy(&out.stdout))?;
    let retransmits =
        std::fs::read_to_string(&log).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()).and_then(|v| v["end"]["sum_sent"]["retransmits"].as_u64());
    let _ = std::fs::remove_file(&log);
    Ok(Received { rate, per_second, retransmits })
}
