//! Benchmark: the loaded agent's overhead on processes outside any target
//! (a getppid() loop, loopback iperf3), with no agent, the agent, and the
//! agent with another target throttled: on `all` (the sys_exit hook), and
//! on each syscall class alone (`net`, `fork`, `fs-write`), which the
//! agent charges at the class's own hook where this kernel has one.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, count_f64, rotate},
    iperf::iperf,
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

/// getppid() calls per overhead sample.
const SYSCALLS_N: u64 = 2_000_000;
/// getppid() samples per visit of a state (agent / no agent).
pub(super) const SYSCALL_SAMPLES: usize = 3;
/// iperf3 test length per overhead sample, seconds.
const IPERF_SECS: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum OverheadState {
    None,
    Agent,
    /// Another target under a ceiling on this syscall class.
    Throttled(&'static str),
}

/// The throttled states: (class, tag, label). `all` keeps the tag
/// "throttled" of earlier runs.
const CLASSES: &[(&str, &str, &str)] = &[
    ("all", "throttled", "agent loaded, another target throttled (--syscalls)"),
    ("net", "net", "agent loaded, another target under --syscall-class net"),
    ("fork", "fork", "agent loaded, another target under --syscall-class fork"),
    ("fs-write", "fswrite", "agent loaded, another target under --syscall-class fs-write"),
];

/// The other target the "throttled" state throttles (holding no task).
const OVERHEAD_TARGET: &str = "ovh";

pub(super) fn overhead(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Overhead on a process outside any target".into();
    s.description = format!(
        "Nothing stopped or isolated. **agent**: the agent running with its programs attached (the level-4 \
         guard on `sched_process_fork` and `sched_switch` runs for every task on the host). **throttled**: \
         the same, and another target (holding no task) under a `--syscalls 1000/s` ceiling, so the \
         `sys_exit` throttle is attached and runs on every syscall of the host, exiting after its lookup \
         for processes outside throttled targets. **net** / **fork** / **fswrite**: the same target under a \
         1000/s ceiling on that class alone (`--syscall-class CLASS=1000`), charged at the class's own hook \
         where this kernel has one (the `syscall_class_hooks` of `probe`: net at fexit or the socket tracepoints, \
         fork at `sched_process_fork`, fs-write at fexit, else `sys_exit`); the ratio to none is the tax that \
         class's ceiling puts on the host's bystanders. **none**: the agent stopped and its pins removed, which \
         detaches its programs. {} repetitions, the order of the six states rotating. (a) {SYSCALL_SAMPLES} times per visit of a state, a \
         child process calling getppid() {SYSCALLS_N} times: wall ns per call, and the thread's CPU ns per call (`CLOCK_THREAD_CPUTIME_ID`: the \
         eBPF programs run in the caller's context and are charged to it, while time spent preempted by \
         other work on a busy machine is not). (b) Loopback TCP throughput, `iperf3 -c 127.0.0.1 -t \
         {IPERF_SECS} -J` against `iperf3 -s -1`: received bits per second, and the same per CPU-second \
         of sender and receiver together (iperf3's own `cpu_utilization_percent`), the less noisy of \
         the two on a shared machine. Also recorded: how many `sys_enter`/`sys_exit` raw tracepoint links were \
         attached host-wide in each state (`bpftool link show`): other killpath agents, e.g. concurrent \
         test runs, add their own.",
        p.overhead_reps
    );
    measure(
        sb,
        &Plan {
            reps: p.overhead_reps,
            calls: SYSCALLS_N,
            samples: SYSCALL_SAMPLES,
            loop_cpu: None,
            iperf: true,
        },
        s,
    )?;
    ratios(s);
    Ok(())
}

/// What one overhead measurement does: repetitions of the rotation of
/// states, getppid() calls per sample and samples per visit of a state,
/// the CPU the getppid() loop is pinned to (None: not pinned), and whether
/// iperf3 runs too.
pub(super) struct Plan {
    pub(super) reps: usize,
    pub(super) calls: u64,
    pub(super) samples: usize,
    pub(super) loop_cpu: Option<usize>,
    pub(super) iperf: bool,
}

/// Visits every state `plan.reps` times, in rotating order, recording the
/// getppid() samples (and iperf3's, when asked) of each into `s`.
pub(super) fn measure(sb: &mut Sandbox, plan: &Plan, s: &mut Section) -> Result<()> {
    // Warm-up: page cache, CPU frequency.
    syscall_sample(sb, plan)?;
    for rep in 0..plan.reps {
        let mut states = vec![OverheadState::None, OverheadState::Agent];
        states.extend(CLASSES.iter().map(|(c, _, _)| OverheadState::Throttled(c)));
        for state in rotate(&states, rep) {
            check_interrupted()?;
            let (tag, label) = match state {
                OverheadState::None => ("none", "no agent"),
                OverheadState::Agent => ("agent", "agent loaded"),
                OverheadState::Throttled(c) => CLASSES
                    .iter()
                    .find(|(k, _, _)| *k == c)
                    .map(|(_, t, l)| (*t, *l))
                    .unwrap_or(("throttled", "agent loaded, another target throttled")),
            };
            sb.set_agent(state != OverheadState::None)?;
            if state != OverheadState::None {
                // The registry survives the agent restart, and with it the
                // other target's ceiling: set it for this state.
                if sb.call("status", json!({"name": OVERHEAD_TARGET})).is_err() {
                    sb.call("create", json!({"name": OVERHEAD_TARGET}))?;
                }
                // Ceilings merge: lift the last state's before setting this one.
                let _ = sb.call("restore", json!({"name": OVERHEAD_TARGET, "to": "normal"}));
                match state {
                    OverheadState::Throttled("all") => {
                        sb.call("throttle", json!({"name": OVERHEAD_TARGET, "syscalls": 1000, "reason": "bench"}))?;
                    }
                    OverheadState::Throttled(c) => {
                        sb.call(
                            "throttle",
                            json!({"name": OVERHEAD_TARGET, "syscall_class": {c: 1000}, "reason": "bench"}),
                        )?;
                    }
                    _ => {}
                }
                // A throttle hook no longer needed is detached 1 s later
                // (killpath's throttle::hook::LINGER): wait it out, so the
                // last state's hook is not measured in this one.
                std::thread::sleep(std::time::Duration::from_millis(1600));
            }
            if let Some(n) = sys_enter_links() {
                s.push(
                    &format!("links_{tag}"),
                    &format!("sys_enter/sys_exit links host-wide, {label}"),
                    Unit::Count,
                    count_f64(n),
                );
            }
            let (mut wall_ns, mut cpu_ns) = (0.0, 0.0);
            for _ in 0..plan.samples {
                (wall_ns, cpu_ns) = syscall_sample(sb, plan)?;
                s.push(
                    &format!("getppid_cpu_{tag}"),
                    &format!("getppid(): CPU ns per call, {label}"),
                    Unit::NsPerCall,
                    cpu_ns,
                );
                s.push(
                    &format!("getppid_{tag}"),
                    &format!("getppid(): wall ns per call, {label}"),
                    Unit::NsPerCall,
                    wall_ns,
                );
            }
            if !plan.iperf {
                println!("bench:   overhead {label}: getppid {cpu_ns:.1} CPU ns/call ({wall_ns:.1} wall)");
                continue;
            }
            let (bps, per_cpu) = iperf(IPERF_SECS, None)?;
            s.push(
                &format!("iperf_{tag}"),
                &format!("iperf3 loopback TCP, {label}"),
                Unit::BitsPerSecond,
                bps,
            );
            s.push(
                &format!("iperf_cpu_{tag}"),
                &format!("iperf3 loopback TCP per CPU-second, {label}"),
                Unit::BitsPerCpuSecond,
                per_cpu,
            );
            println!(
                "bench:   overhead {label}: getppid {cpu_ns:.1} CPU ns/call ({wall_ns:.1} wall), iperf3 {:.2} Gbit/s ({:.2} Gbit/CPU-s)",
                bps / 1e9,
                per_cpu / 1e9
            );
        }
    }
    if sb.call("status", json!({"name": OVERHEAD_TARGET})).is_ok() {
        let _ = sb.call("release", json!({"name": OVERHEAD_TARGET}));
    }
    if s.stat("links_none", 1.0).is_some_and(|n| n > 0.0) {
        s.notes.push(
            "In some \"none\" runs other killpath agents (not this harness's) had `sys_enter` guards attached: \
             the baseline is then not a host without BPF, and the ratio understates the overhead."
                .into(),
        );
    }
    sb.set_agent(true)
}

/// The overhead ratios, each state to none.
fn ratios(s: &mut Section) {
    s.ratio(
        "getppid_cpu_agent_over_none",
        "getppid() CPU ns per call, agent / none (p50)",
        "getppid_cpu_agent",
        "getppid_cpu_none",
        0.5,
        Some("≤ 1.05"),
    );
    s.ratio(
        "getppid_agent_over_none",
        "getppid() wall ns per call, agent / none (p50)",
        "getppid_agent",
        "getppid_none",
        0.5,
        Some("≤ 1.05"),
    );
    s.ratio(
        "getppid_cpu_throttled_over_none",
        "getppid() CPU ns per call, another target throttled / none (p50)",
        "getppid_cpu_throttled",
        "getppid_cpu_none",
        0.5,
        Some("≤ 1.05"),
    );
    for (id, label, num) in [
        (
            "getppid_cpu_net_over_none",
            "getppid() CPU ns per call, another target under a net ceiling / none (p50)",
            "getppid_cpu_net",
        ),
        (
            "getppid_cpu_fork_over_none",
            "getppid() CPU ns per call, another target under a fork ceiling / none (p50)",
            "getppid_cpu_fork",
        ),
        (
            "getppid_cpu_fswrite_over_none",
            "getppid() CPU ns per call, another target under an fs-write ceiling / none (p50)",
            "getppid_cpu_fswrite",
        ),
    ] {
        s.ratio(id, label, num, "getppid_cpu_none", 0.5, Some("≤ 1.05"));
    }
    s.ratio(
        "iperf_agent_over_none",
        "iperf3 loopback throughput, agent / none (p50)",
        "iperf_agent",
        "iperf_none",
        0.5,
        Some("≥ 0.95"),
    );
    s.ratio(
        "iperf_net_over_none",
        "iperf3 loopback throughput, another target under a net ceiling / none (p50)",
        "iperf_net",
        "iperf_none",
        0.5,
        Some("≥ 0.95"),
    );
    s.ratio(
        "iperf_throttled_over_none",
        "iperf3 loopback throughput, another target throttled / none (p50)",
        "iperf_throttled",
        "iperf_none",
        0.5,
        Some("≥ 0.95"),
    );
    s.ratio(
        "iperf_cpu_agent_over_none",
        "iperf3 loopback throughput per CPU-second, agent / none (p50)",
        "iperf_cpu_agent",
        "iperf_cpu_none",
        0.5,
        Some("≥ 0.95"),
    );
}

/// Runs the getppid helper once; (wall, CPU) ns per call.
fn syscall_sample(sb: &Sandbox, plan: &Plan) -> Result<(f64, f64)> {
    let mut cmd = match plan.loop_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&sb.helper);
            c
        }
        None => Command::new(&sb.helper),
    };
    let out = cmd
        .args(["bench-helper", "syscalls", &plan.calls.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the getppid loop")?;
    if !out.status.success() {
        bail!(
            "the getppid loop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<f64>);
    match (words.next(), words.next()) {
        (Some(Ok(wall)), Some(Ok(cpu))) => Ok((wall, cpu)),
        _ => bail!("the getppid loop printed {:?}", text.trim()),
    }
}

/// Count of raw tracepoint links on `sys_enter`, host-wide; None if bpftool fails.
fn sys_enter_links() -> Option<usize> {
    let out = proc::output_ok(Command::new("bpftool").args(["-j", "link", "show"]))?;
    let links: Value = serde_json::from_str(&out).ok()?;
    Some(
        links
            .as_array()?
            .iter()
            .filter(|l| l["type"] == "raw_tracepoint" && (l["tp_name"] == "sys_enter" || l["tp_name"] == "sys_exit"))
            .count(),
    )
}
