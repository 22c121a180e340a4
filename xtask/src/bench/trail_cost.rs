//! Benchmark: what recording the activity trail costs a syscall-heavy
//! workload, inside the recording target and outside every target while
//! another target records. Two loops: getppid() (a syscall no trail hook
//! sees: the cost is the hooks that run anyway) and pwrite() of one byte
//! (the file_permission BPF LSM hook, where BPF LSM runs, counts every
//! write of a recording target and looks every other write's task up).
use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt,
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, rotate},
    helper::thread_cpu_ns,
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};

/// The target that records (or not, by state).
const TARGET: &str = "trcost";
/// Calls per sample of each loop.
const N: u64 = 1_000_000;

/// `bench-helper writes N FILE`: pwrite() one byte at offset 0 N times;
/// prints wall and thread-CPU ns per call.
pub(super) fn write_loop(n: u64, file: &Path) -> Result<ExitCode> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let cpu0 = thread_cpu_ns()?;
    let t0 = Instant::now();
    for _ in 0..n {
        f.write_at(b"x", 0).context("pwrite")?;
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = thread_cpu_ns()? - cpu0;
    drop(f);
    let _ = std::fs::remove_file(file);
    let calls = n.max(1) as f64;
    println!("{:.3} {:.3}", wall / calls, cpu / calls);
    Ok(ExitCode::SUCCESS)
}

/// Runs one loop (`syscalls N` or `writes N FILE`) in cgroup `cg` (None:
/// where the harness runs, outside every target); (wall, cpu) ns per call.
fn sample(sb: &Sandbox, cg: Option<&Path>, args: &[String]) -> Result<(f64, f64)> {
    let mut cmd = Command::new("sh");
    match cg {
        Some(cg) => cmd.args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#]).arg(cg),
        None => cmd.args(["-c", r#"exec "$@""#, "sh"]),
    };
    let out = cmd
        .arg(&sb.helper)
        .arg("bench-helper")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the loop")?;
    if !out.status.success() {
        bail!(
            "the loop {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<f64>);
    match (words.next(), words.next()) {
        (Some(Ok(wall)), Some(Ok(cpu))) => Ok((wall, cpu)),
        _ => bail!("the loop {args:?} printed {:?}", text.trim()),
    }
}

pub(super) fn trail_cost(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Cost of recording the activity trail (syscall-heavy)".into();
    s.description = format!(
        "Target `{TARGET}` recording its trail (`trail {TARGET} --on`) or not (`--off`). Two loops of {N} calls, \
         run inside `{TARGET}` and outside every target: getppid() (no trail hook sees it: the cost of the \
         hooks that run anyway) and pwrite() of one byte to a file (BPF LSM `file_permission`, where BPF LSM \
         runs: every write of the recording target counted per file, every other write's task looked up). \
         {} repetitions, the order of the two states rotating. CPU ns per call of the looping thread \
         (`CLOCK_THREAD_CPUTIME_ID`). Where BPF LSM does not run (this host: `probe`'s `trail_files`), the \
         file hooks are not attached and the write loop measures the trail's other hooks only.",
        p.overhead_reps
    );
    if sb.call("status", json!({"name": TARGET})).is_err() {
        sb.call("create", json!({"name": TARGET}))?;
    }
    let probe = sb.kp(&["probe", "--json"]).unwrap_or_default();
    let files = serde_json::from_str::<serde_json::Value>(&probe)
        .ok()
        .map(|v| v["trail_files"]["recorded"] == true);
    s.notes.push(match files {
        Some(true) => "File hooks attached (BPF LSM runs here): the write loop pays `file_permission`.".into(),
        _ => "File hooks NOT attached here (no BPF LSM): the write loop does not exercise them; their cost is measured only where BPF LSM runs.".into(),
    });
    let cg = sb.parent().join(TARGET);
    for rep in 0..p.overhead_reps {
        for on in rotate(&[false, true], rep) {
            check_interrupted()?;
            let tag = if on { "on" } else { "off" };
            sb.kp(&["trail", TARGET, if on { "--on" } else { "--off" }])?;
            for (inside, place) in [(true, "in the target"), (false, "outside every target")] {
                let at = inside.then_some(cg.as_path());
                let where_ = if inside { "in" } else { "out" };
                let file = sb.tmp().join(format!("trail-cost-{where_}"));
                let loops: [(&str, Vec<String>); 2] = [
                    ("getppid", vec!["syscalls".into(), N.to_string()]),
                    (
                        "pwrite",
                        vec!["writes".into(), N.to_string(), file.to_string_lossy().into_owned()],
                    ),
                ];
                for (name, args) in loops {
                    let (wall, cpu) = sample(sb, at, &args)?;
                    s.push(
                        &format!("{name}_{where_}_{tag}"),
                        &format!("{name}(): CPU ns per call, {place}, recording {tag}"),
                        Unit::NsPerCall,
                        cpu,
                    );
                    println!("bench:   trail cost, {name} {place}, recording {tag}: {cpu:.1} CPU ns/call ({wall:.1} wall)");
                }
            }
        }
    }
    let _ = sb.kp(&["trail", TARGET, "--off"]);
    let _ = sb.call("release", json!({"name": TARGET}));
    s.ratio(
        "trail_getppid_out",
        "getppid() CPU ns outside every target, another target recording / none recording (p50)",
        "getppid_out_on",
        "getppid_out_off",
        0.5,
        Some("≤ 1.05"),
    );
    s.ratio(
        "trail_pwrite_out",
        "pwrite() CPU ns outside every target, another target recording / none recording (p50)",
        "pwrite_out_on",
        "pwrite_out_off",
        0.5,
        Some("≤ 1.05"),
    );
    s.ratio(
        "trail_getppid_in",
        "getppid() CPU ns in the recording target, recording / not (p50)",
        "getppid_in_on",
        "getppid_in_off",
        0.5,
        None,
    );
    s.ratio(
        "trail_pwrite_in",
        "pwrite() CPU ns in the recording target, recording / not (p50)",
        "pwrite_in_on",
        "pwrite_in_off",
        0.5,
        None,
    );
    Ok(())
}
