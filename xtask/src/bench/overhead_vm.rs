//! Benchmark: the bystander tax of each syscall class on a kernel that has
//! the class hooks. This host refuses tracing programs (fentry/fexit), so a
//! `fs-write` ceiling is charged at `sys_exit` here and puts every syscall of
//! the host on the slow path; the VM kernel (Debian 6.1, BPF trampolines)
//! has fexit, where a class's hook runs only for that class's syscalls. The
//! measurement is [`overhead`]'s getppid() part, run inside the VM by
//! `bench-helper vm-overhead` (this binary again, on the host's root
//! filesystem the guest shares), its samples brought back as JSON.
use std::{fs, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    overhead::{self, Plan},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::{
    proc::{self, shell_quote},
    setup::Env,
    vm,
};

/// getppid() calls per sample in the guest: a syscall under software
/// emulation costs ~10× the host's, so fewer calls give a sample of a
/// similar length.
const VM_CALLS: u64 = 200_000;
/// getppid() samples per visit of a state in the guest.
const VM_SAMPLES: usize = 4;
/// Visits of each state in the guest (the host's `overhead_reps`, at most).
const VM_REPS: usize = 4;
/// The guest's CPUs: the agent (and everything else the helper starts) on
/// the first, the getppid() loop alone on the second. The idle agent's
/// periodic work, ~10× slower under emulation, otherwise shares the loop's
/// CPU in the "agent" states only, which the "none" state never sees.
const AGENT_CPU: usize = 0;
const LOOP_CPU: usize = 1;
/// How long the guest's log may stay unchanged before the VM is given up on
/// (an agent start under emulation takes ~10 s; a sample well under one).
const VM_STALL: Duration = Duration::from_mins(5);
/// How long the whole VM run may take.
const VM_TIMEOUT: Duration = Duration::from_mins(20);

pub(super) fn overhead_vm(env: &Env, kp: &Path, p: &Params, s: &mut Section) -> Result<()> {
    let reps = p.overhead_reps.min(VM_REPS);
    s.title = "Overhead on a process outside any target, in the VM (a kernel with fexit)".into();
    s.description = format!(
        "The getppid() part of the overhead benchmark above, on the VM kernel ({}, booted by virtme-ng \
         under software emulation, 2 vCPUs), which has BPF trampolines: there a `net` or `fs-write` \
         ceiling is charged at `fexit` on that class's syscall functions and `fork` at \
         `sched_process_fork`, so only `all` needs the `sys_exit` tracepoint (the hooks the guest's agent \
         chose are in the notes, from its `probe`). Same states, same rotation: {reps} repetitions, \
         {VM_SAMPLES} samples per visit, {VM_CALLS} calls each, the getppid() loop pinned to vCPU {LOOP_CPU} \
         and the agent to vCPU {AGENT_CPU} (the idle agent's periodic work is ~10× slower under emulation \
         and would otherwise share the loop's CPU in the agent states only). Emulation makes every \
         syscall slower than on the host (compare ratios, not nanoseconds); no iperf3 here. The ratios \
         are held to the goal on the minimum of each state's samples, the p50 beside it: a vCPU thread \
         the host preempts counts that time as the guest thread's CPU time, so the samples are bimodal \
         in every state alike (~600 ns a call undisturbed, ~1,000 ns disturbed, in the run of \
         2026-12-04), while a hook's cost is in every call, the undisturbed ones included.",
        env.kernel_version,
    );
    let dir = vm::fresh_results_dir(env, "bench")?;
    // The helper runs from the results directory: target/debug/xtask may
    // be relinked by another cargo command while the VM runs.
    let exe = dir.join("xtask");
    fs::copy("/proc/self/exe", &exe)
        .with_context(|| format!("copying the xtask executable to {}", exe.display()))?;
    let (out, log, console) = (dir.join("overhead.json"), dir.join("vm-bench.log"), dir.join("vng-console.log"));
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let command = format!(
        "{exe} bench-helper vm-overhead --kp {kp} --reps {reps} --calls {VM_CALLS} --out {out} > {log} 2>&1",
        exe = q(&exe),
        kp = q(kp),
        out = q(&out),
        log = q(&log),
    );
    let mut cmd = vm::vng_command(env, &command, &[&dir]);
    println!("bench:   {} (guest log {})", proc::describe(&cmd), log.display());
    let status = proc::run_until_stalled(&mut cmd, &console, VM_TIMEOUT, Some((&log, VM_STALL)))?;
    let Ok(text) = fs::read_to_string(&out) else {
        bail!(
            "the VM wrote no results ({}); its log ends:\n{}\nconsole:\n{}",
            status.map_or_else(|| "given up on: stalled or timed out".to_owned(), |s| s.to_string()),
            proc::tail(&log, 20),
            proc::tail(&console, 20)
        );
    };
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
    for x in v["series"].as_array().into_iter().flatten() {
        let (Some(id), Some(label)) = (x["id"].as_str(), x["label"].as_str()) else {
            continue;
        };
        let unit = if x["unit"] == Unit::NsPerCall.name() { Unit::NsPerCall } else { Unit::Count };
        for v in x["samples"].as_array().into_iter().flatten().filter_map(Value::as_f64) {
            s.push(id, &format!("{label} (VM)"), unit, v);
        }
    }
    s.notes.extend(v["notes"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
    if let Some(e) = v["error"].as_str() {
        bail!("in the VM: {e}");
    }
    vm_ratios(s);
    s.notes.push(format!(
        "The guest agent's syscall class hooks (`probe`): `{}`.",
        v["syscall_class_hooks"]
    ));
    Ok(())
}

/// Each state's getppid() CPU cost over none's: (min ratio id, its label,
/// p50 ratio id, its label, the state's series).
const VM_RATIOS: &[(&str, &str, &str, &str, &str)] = &[
    ("vm_agent_over_none_min", "VM: getppid() CPU ns per call, agent / none (min)", "vm_agent_over_none", "VM: the same (p50)", "getppid_cpu_agent"),
    (
        "vm_throttled_over_none_min",
        "VM: getppid() CPU ns per call, another target throttled (all, sys_exit) / none (min)",
        "vm_throttled_over_none",
        "VM: the same (p50)",
        "getppid_cpu_throttled",
    ),
    ("vm_net_over_none_min", "VM: getppid() CPU ns per call, another target under a net ceiling / none (min)", "vm_net_over_none", "VM: the same (p50)", "getppid_cpu_net"),
    ("vm_fork_over_none_min", "VM: getppid() CPU ns per call, another target under a fork ceiling / none (min)", "vm_fork_over_none", "VM: the same (p50)", "getppid_cpu_fork"),
    (
        "vm_fswrite_over_none_min",
        "VM: getppid() CPU ns per call, another target under an fs-write ceiling / none (min)",
        "vm_fswrite_over_none",
        "VM: the same (p50)",
        "getppid_cpu_fswrite",
    ),
];

/// The VM's ratios, held to the goal on the minimum: under emulation the
/// samples are bimodal (a vCPU thread the host preempts counts that time
/// as the guest thread's CPU time: ~600 ns a call undisturbed, ~1,000 ns
/// disturbed, in every state alike), while a hook's cost is in every call
/// and so in the floor. The p50 is shown beside it.
fn vm_ratios(s: &mut Section) {
    for &(min_id, min_label, p50_id, p50_label, num) in VM_RATIOS {
        // `all` at sys_exit is the one state expected over the goal.
        let goal = (num != "getppid_cpu_throttled").then_some("≤ 1.05");
        s.ratio(min_id, min_label, num, "getppid_cpu_none", 0.0, goal);
        s.ratio(p50_id, p50_label, num, "getppid_cpu_none", 0.5, None);
    }
}

/// `bench-helper vm-overhead`, in the guest: the agent in a sandbox of its
/// own, the overhead states visited, and the samples written to `out` as
/// JSON, with the error that ended the measurement, if one did (the
/// samples taken before it are kept, as the host's sections keep theirs).
pub(super) fn guest(kp: &Path, reps: usize, calls: u64, out: &Path) -> Result<()> {
    let mut s = Section::new("overhead_vm", "");
    let mut hooks = Value::Null;
    let error = guest_measure(kp, reps, calls, &mut s, &mut hooks).err().map(|e| format!("{e:#}"));
    let series: Vec<Value> = s
        .series
        .iter()
        .map(|x| json!({"id": x.id, "label": x.label, "unit": x.unit.name(), "samples": x.samples}))
        .collect();
    let v = json!({"series": series, "notes": s.notes, "syscall_class_hooks": hooks, "error": error});
    fs::write(out, v.to_string() + "\n").with_context(|| format!("writing {}", out.display()))
}

fn guest_measure(kp: &Path, reps: usize, calls: u64, s: &mut Section, hooks: &mut Value) -> Result<()> {
    // virtme-ng's guest has no bpffs mounted; the agent pins there.
    crate::setup::ensure_bpffs()?;
    // Pinned only where the guest has the two CPUs asked for (vng without
    // `--cpus` boots one).
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() > LOOP_CPU);
    if two_cpus {
        pin_self(AGENT_CPU)?;
    } else {
        s.notes.push("The guest had one CPU: the getppid() loop and the agent were not pinned apart.".into());
    }
    let mut sb = Sandbox::new(kp)?;
    sb.start_agent()?;
    *hooks = sb.call("probe", json!({}))?.1["syscall_class_hooks"].clone();
    let plan = Plan { reps, calls, samples: VM_SAMPLES, loop_cpu: two_cpus.then_some(LOOP_CPU), iperf: false };
    overhead::measure(&mut sb, &plan, s)
}

/// Pins the calling process (and what it starts later: the agent) to `cpu`.
fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity(2) on this process with a valid set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("sched_setaffinity(CPU {cpu}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}
