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
const SYSCALL_CEILINGS: [u64; 3] = [100, 1_000, 10_000];
const EGRESS_CEILINGS: [u64; 2] = [1_000_000, 10_000_000];
const ACCURACY_WINDOW: Duration = Duration::from_secs(3);
const IPERF_SECS: u64 = 6;

fn syscr(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).with_context(|| format!("reading /proc/{pid}/io"))?;
    io.lines().find_map(|l| l.strip_prefix("syscr: ")).and_then(|n| n.trim().parse().ok()).context("no syscr line")
}

pub(super) fn throttle(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Throttle: accuracy and command to effect".into();
    s.description = format!(
        "**Syscall accuracy**: a python loop of `read(fd, 0)` in a target, throttled with `--syscalls` at {SYSCALL_CEILINGS:?}/s; \
         its rate is read from outside (`syscr` in /proc/PID/io) over {} s after a 0.5 s settle, {} repetitions each; \
         the ratio is measured / ceiling. **Egress accuracy**: `iperf3 -c` inside the target against `iperf3 -s -1 -J` outside, \
         `--egress-bytes` at {EGRESS_CEILINGS:?} B/s, the server's received bytes over seconds 2–{IPERF_SECS}. \
         **Command to effect**: {} `throttle` requests alternating the ceiling between 1,000/s and 2,000/s: client wall time, \
         the agent's `time_to_effect_us` (receipt, intent journaled and fsynced, map update) and `map_update_us`. \
         There is no administrator's alternative for a per-workload syscall ceiling (seccomp cannot rate-limit, cgroup cpu.max \
         caps CPU time, not calls), so no ratio is given for it.",
        ACCURACY_WINDOW.as_secs(),
        (p.effect_reps / 30).max(2),
        p.effect_reps
    );
    let name = "thr";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let mut target = spawn_in_cgroup(&cg, &["python3", "-c", READ_LOOP])?;
    let result = (|| -> Result<()> {
        wait_comm(target.id(), "python3")?;
        accuracy(sb, p, s, name, target.id())?;
        effect(sb, p, s, name)?;
        Ok(())
    })();
    proc::terminate(&mut target, Duration::from_secs(1));
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    let egress = egress_accuracy(sb, p, s);
    for c in SYSCALL_CEILINGS {
        let (id, label): (&'static str, &'static str) = match c {
            100 => ("syscalls_100_accuracy", "syscalls: measured / ceiling at 100/s (p50)"),
            1_000 => ("syscalls_1000_accuracy", "syscalls: measured / ceiling at 1,000/s (p50)"),
            _ => ("syscalls_10000_accuracy", "syscalls: measured / ceiling at 10,000/s (p50)"),
        };
        s.ratio(id, label, &format!("sys_{c}"), &format!("ceiling_{c}"), 0.5, Some("1.00 ± 0.10"));
    }
    for c in EGRESS_CEILINGS {
        let (id, label): (&'static str, &'static str) = match c {
            1_000_000 => ("egress_1mb_accuracy", "egress TCP: received / ceiling at 1 MB/s (p50)"),
            _ => ("egress_10mb_accuracy", "egress TCP: received / ceiling at 10 MB/s (p50)"),
        };
        s.ratio(id, label, &format!("egress_{c}"), &format!("ceiling_{c}"), 0.5, Some("1.00 ± 0.10"));
    }
    egress
}

fn accuracy(sb: &mut Sandbox, p: &Params, s: &mut Section, name: &str, pid: u32) -> Result<()> {
    for rep in 0..(p.effect_reps / 30).max(2) {
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

/// Bytes per second the iperf3 server received, seconds 2.. of its report.
fn received_rate(report: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(report).with_context(|| format!("iperf3 -J output: {report}"))?;
    let (mut bytes, mut secs) = (0.0, 0.0);
    for i in v["intervals"].as_array().into_iter().flatten() {
        let sum = &i["sum"];
        if sum["start"].as_f64().unwrap_or(0.0) >= 2.0 {
            bytes += sum["bytes"].as_f64().unwrap_or(0.0);
            secs += sum["seconds"].as_f64().unwrap_or(0.0);
        }
    }
    if secs < 1.0 {
        bail!("iperf3 report without intervals: {report}");
    }
    Ok(bytes / secs)
}

fn egress_accuracy(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let name = "thr-egress";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let result = (|| -> Result<()> {
        for rep in 0..(p.effect_reps / 50).max(1) {
            for c in EGRESS_CEILINGS {
                check_interrupted()?;
                sb.call("throttle", json!({"name": name, "egress_bytes": c, "reason": "bench"}))?;
                let rate = iperf_in(&cg, c)?;
                s.push(&format!("egress_{c}"), &format!("TCP bytes/s received under a {c} B/s ceiling"), Unit::PerSecond, rate);
                s.push(&format!("ceiling_{c}"), &format!("ceiling {c} B/s"), Unit::PerSecond, c as f64);
                println!("bench:   throttle egress rep {rep}: ceiling {c} B/s, received {rate:.0} B/s");
            }
        }
        Ok(())
    })();
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    Ok(())
}

fn iperf_in(cg: &Path, _ceiling: u64) -> Result<f64> {
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
    let mut client = spawn_in_cgroup(cg, &["iperf3", "-c", "127.0.0.1", "-p", &port, "-t", &IPERF_SECS.to_string(), "--logfile", "/dev/null"])?;
    let _ = client.wait();
    let out = server.wait_with_output().context("waiting for iperf3 -s")?;
    received_rate(&String::from_utf8_lossy(&out.stdout))
}
