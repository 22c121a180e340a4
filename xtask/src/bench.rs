//! `cargo xtask bench [--quick]`: the benchmark harness.
//!
//! Runs setup, builds `killpath` in release, starts an agent in a sandbox of
//! its own (socket, state dir, bpffs pin dir, cgroup parent), and measures,
//! side by side in one run, what exists: hard stop (level 4) and isolate
//! (level 3), next to what an administrator would do instead, and the cost of
//! the loaded agent to processes outside any target. Variants alternate
//! their order across repetitions, so that a noisy machine weighs on all of
//! them alike and the ratios stay meaningful. It talks to the agent over its
//! socket directly, so no CLI process start is in the killpath numbers.
//!
//! Writes `bench/RESULTS.md` and `bench/results.json` (raw samples), prints a
//! summary, and exits non-zero if a killpath stop left survivors or a
//! benchmark failed (the failure is recorded in the results, never a number).
//!
//! The fork bombs run under `bench-helper reap`, a re-run of this binary as a
//! child subreaper: the tasks the bombs orphan are reaped by it rather than
//! left to a PID 1 that may not reap (zombies would eat the pid space).

use std::{
    collections::HashMap,
    env,
    ffi::CString,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::FileExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{proc, setup};

mod throttle;

#[derive(clap::Args)]
pub struct Args {
    /// Fewer repetitions: 2 fork-bomb runs per variant (instead of 5), 30
    /// command-to-effect repetitions (instead of 100), 3 overhead repetitions
    /// (instead of 5).
    #[arg(long)]
    quick: bool,
}

/// Helpers the harness runs as child processes (a re-run of this binary).
#[derive(clap::Args)]
pub struct HelperArgs {
    #[command(subcommand)]
    op: Helper,
}

#[derive(clap::Subcommand)]
enum Helper {
    /// Become a child subreaper, run COMMAND, print its pid, reap every
    /// descendant, and exit once none is left.
    Reap {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Call getppid() N times; print the nanoseconds per call.
    Syscalls { n: u64 },
}

/// Parallel shell loops in each fork bomb.
const BOMB_LOOPS: usize = 4;
/// Live tasks a fork bomb must reach before it is stopped.
const BOMB_GOAL: usize = 1300;
/// pids.max of each bomb's cgroup: a cap that keeps a bomb from eating the
/// host's pid space; far enough above the goal that the loops are still
/// forking freely when the stop starts, even when it is slow to start (dash
/// loops die on a failed fork, and their orphans would leave the tree).
const BOMB_CAP: usize = 2 * BOMB_GOAL;

/// The bomb: `BOMB_LOOPS` loops that start `sleep` in the background forever.
fn bomb_script() -> String {
    let loops: Vec<String> = (1..=BOMB_LOOPS).map(|i| i.to_string()).collect();
    format!(
        "for i in {}; do (while :; do sleep 1000 & done) & done; wait",
        loops.join(" ")
    )
}
/// How long a bomb may take to reach the goal.
const BOMB_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the tree walk's leftovers are given before they are counted.
const WALK_SETTLE: Duration = Duration::from_millis(200);
/// getppid() calls per overhead sample.
const SYSCALLS_N: u64 = 2_000_000;
/// getppid() samples per visit of a state (agent / no agent).
const SYSCALL_SAMPLES: usize = 3;
/// iperf3 test length per overhead sample, seconds.
const IPERF_SECS: u32 = 3;
/// How long the agent may take to answer its first ping.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any one socket request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// nft's table for the isolation alternative.
const NFT_TABLE: &str = "kpbench";

struct Params {
    bomb_reps: usize,
    effect_reps: usize,
    overhead_reps: usize,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let command_line = {
        let rest: Vec<String> = env::args().skip(1).map(|a| proc::shell_quote(&a)).collect();
        format!("cargo xtask {}", rest.join(" "))
    };
    let params = if args.quick {
        Params {
            bomb_reps: 2,
            effect_reps: 30,
            overhead_reps: 3,
        }
    } else {
        Params {
            bomb_reps: 5,
            effect_reps: 100,
            overhead_reps: 5,
        }
    };
    let env = setup::run()?;
    build_release(&env)?;
    let kp = env.root.join("target/release/killpath");
    if !kp.is_file() {
        bail!("{} is missing after the release build", kp.display());
    }
    let load_start = read_trimmed("/proc/loadavg");
    let started = Instant::now();

    let mut sb = Sandbox::new(&kp)?;
    install_signal_handlers(&sb.parent.join("cgroup.kill"))?;
    println!(
        "bench: sandbox {} (cgroup {}, pins {})",
        sb.tmp.display(),
        sb.parent.display(),
        sb.pin_dir.display()
    );
    let mut sections = Vec::new();
    match sb.start_agent() {
        Ok(()) => {
            sections.push(run_section(
                &mut sb,
                &params,
                "hard_stop_fork_bomb",
                hard_stop_fork_bomb,
            ));
            sections.push(run_section(&mut sb, &params, "isolate", isolate));
            sections.push(run_section(&mut sb, &params, "stop_single", stop_single));
            sections.push(run_section(&mut sb, &params, "throttle", throttle::throttle));
            sections.push(run_section(&mut sb, &params, "overhead", overhead));
        }
        Err(e) => {
            let mut s = Section::new("agent", "Agent start");
            s.error = Some(format!("{e:#}"));
            sections.push(s);
        }
    }
    let keep = sections.iter().any(|s| s.error.is_some());
    sb.keep_tmp = keep;
    drop(sb);
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal: cleaned up, results not written");
    }
    let elapsed = started.elapsed();

    let info = RunInfo::collect(&env.root, command_line, load_start, elapsed, args.quick);
    let survivors = killpath_survivors(&sections);
    let results = Results {
        info,
        sections,
        survivors,
    };
    let dir = env.root.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("results.json");
    let md_path = dir.join("RESULTS.md");
    let text = serde_json::to_string_pretty(&results.to_json()).context("encoding the results")?;
    fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    fs::write(&md_path, results.markdown())
        .with_context(|| format!("writing {}", md_path.display()))?;
    print!("{}", results.summary());
    println!(
        "bench: wrote {} and {} in {}",
        md_path.display(),
        json_path.display(),
        proc::elapsed(started)
    );

    let mut failed = false;
    for s in &results.sections {
        if let Some(e) = &s.error {
            eprintln!("bench: {} failed: {e}", s.title);
            failed = true;
        }
    }
    if results.survivors > 0 {
        eprintln!(
            "bench: killpath stop left {} survivor(s)",
            results.survivors
        );
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `cargo build --release -p killpath-user` with bpf-linker on PATH.
fn build_release(env: &setup::Env) -> Result<()> {
    let start = Instant::now();
    let mut cmd = env.cargo()?;
    cmd.args(["build", "--release", "-p", "killpath-user"]);
    println!("bench: {}", proc::describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", proc::describe(&cmd)))?;
    if !status.success() {
        bail!("`cargo build --release -p killpath-user` failed ({status})");
    }
    println!("bench: release build done in {}", proc::elapsed(start));
    Ok(())
}

/// Runs one benchmark; an error is recorded in its section (with whatever
/// samples were taken before it) instead of ending the run.
fn run_section(
    sb: &mut Sandbox,
    params: &Params,
    id: &'static str,
    f: fn(&mut Sandbox, &Params, &mut Section) -> Result<()>,
) -> Section {
    let mut section = Section::new(id, "");
    let start = Instant::now();
    let load = read_trimmed("/proc/loadavg");
    println!("bench: {id} ...");
    if let Err(e) = f(sb, params, &mut section) {
        println!("bench: {id} FAILED: {e:#}");
        section.error = Some(format!("{e:#}"));
    } else {
        println!("bench: {id} done in {}", proc::elapsed(start));
    }
    section.notes.push(format!(
        "Load average (/proc/loadavg) at the start of this benchmark: {load}; at its end: {}. Took {}.",
        read_trimmed("/proc/loadavg"),
        proc::elapsed(start)
    ));
    section
}

// ---------------------------------------------------------------------------
// Benchmark 1: hard stop against a fork bomb.

#[derive(Clone, Copy)]
enum BombVariant {
    Killpath,
    Freeze,
    Kill,
    Walk,
}

fn hard_stop_fork_bomb(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Hard stop of a fork bomb".into();
    s.description = format!(
        "A tree that keeps forking: `sh -c '{}'`, started inside its cgroup, stopped as soon as \
         the cgroup holds {BOMB_GOAL} live tasks (pids.max {BOMB_CAP} as a safety cap, so the loops are \
         still forking freely when the stop starts). {} runs of each variant, the order of the variants \
         rotating from one repetition to the next. **killpath**: `stop` over the agent's socket; \
         `time_to_halt_us` is command receipt to the `cgroup.kill` write returning, `time_to_empty_us` \
         command receipt to `populated 0`. **Bare cgroup.freeze** (halt floor): write `cgroup.freeze`, \
         wait for `frozen 1`. **Bare cgroup.kill** (empty floor): write `cgroup.kill`, wait for \
         `populated 0`. **Tree walk** (what `pkill -9`-style tools do): one pass from the bomb's root, \
         descendants collected from `/proc/*/stat` ppids, SIGKILL to each, root first; survivors are the \
         bomb's tasks still alive {} ms later. The definitions of halt differ: killpath's `time_to_halt_us` \
         ends when its `cgroup.kill` write returns (it writes `cgroup.freeze` first but does not wait for \
         `frozen 1`), the freeze floor ends at `frozen 1`; the bare `cgroup.kill` variant also records when \
         its write returned, which is killpath's definition applied to the floor.",
        bomb_script(),
        p.bomb_reps,
        WALK_SETTLE.as_millis()
    );
    let variants = [
        BombVariant::Killpath,
        BombVariant::Freeze,
        BombVariant::Kill,
        BombVariant::Walk,
    ];
    for rep in 0..p.bomb_reps {
        for v in rotate(&variants, rep) {
            check_interrupted()?;
            match v {
                BombVariant::Killpath => bomb_killpath(sb, rep, s)?,
                BombVariant::Freeze | BombVariant::Kill => bomb_bare(sb, rep, v, s)?,
                BombVariant::Walk => bomb_walk(sb, rep, s)?,
            }
        }
        println!(
            "bench:   fork bomb repetition {}/{} done",
            rep + 1,
            p.bomb_reps
        );
    }
    s.ratio(
        "halt_killpath_over_freeze",
        "killpath time_to_halt / bare cgroup.freeze halt (p50)",
        "kp_halt",
        "bare_freeze",
        0.5,
        Some("≤ 1.2"),
    );
    s.ratio(
        "halt_killpath_over_kill_write",
        "killpath time_to_halt / bare cgroup.kill write returned (p50)",
        "kp_halt",
        "bare_kill_write",
        0.5,
        None,
    );
    s.ratio(
        "empty_killpath_over_kill",
        "killpath time_to_empty / bare cgroup.kill empty (p50)",
        "kp_empty",
        "bare_kill",
        0.5,
        Some("≤ 1.2"),
    );
    s.ratio(
        "wall_killpath_over_kill",
        "killpath stop client wall / bare cgroup.kill empty (p50)",
        "kp_wall",
        "bare_kill",
        0.5,
        None,
    );
    s.ratio(
        "walk_over_killpath_empty",
        "tree walk time / killpath time_to_empty (p50)",
        "walk_time",
        "kp_empty",
        0.5,
        None,
    );
    Ok(())
}

fn bomb_killpath(sb: &mut Sandbox, rep: usize, s: &mut Section) -> Result<()> {
    let name = format!("bomb-{rep}");
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent.join(&name);
    let bomb = Bomb::start(sb, &name, &cg, false)?;
    let reached = bomb.wait_goal()?;
    let (wall, r) = sb.call("stop", json!({"name": name, "reason": "bench"}))?;
    let left = count_procs(&cg).unwrap_or(0);
    let reported = r["survivors"].as_u64().unwrap_or(0);
    push_stop_times(s, wall, &r)?;
    s.push(
        "kp_tasks",
        "killpath stop: tasks at start (agent)",
        Unit::Count,
        num(&r, "tasks_at_start")?,
    );
    s.push(
        "kp_survivors",
        "killpath stop: survivors",
        Unit::Count,
        count_f64(usize::try_from(reported).unwrap_or(usize::MAX).max(left)),
    );
    s.push(
        "kp_guard_kills",
        "killpath stop: guard kills (agent)",
        Unit::Count,
        num(&r, "guard_kills").unwrap_or(0.0),
    );
    if left > 0 {
        s.notes.push(format!(
            "repetition {rep}: {left} task(s) still in the target's cgroup after the stop answered"
        ));
    }
    drop(bomb);
    sb.call("release", json!({"name": name}))?;
    println!(
        "bench:   killpath stop: {reached} tasks, halt {}, empty {}, survivors {}",
        fmt_us(num(&r, "time_to_halt_us")?),
        fmt_us(num(&r, "time_to_empty_us")?),
        reported.max(left as u64)
    );
    Ok(())
}

fn bomb_bare(sb: &mut Sandbox, rep: usize, v: BombVariant, s: &mut Section) -> Result<()> {
    let (tag, file, key, want) = match v {
        BombVariant::Freeze => ("freeze", "cgroup.freeze", "frozen", "1"),
        _ => ("kill", "cgroup.kill", "populated", "0"),
    };
    let name = format!("bare-{tag}-{rep}");
    let cg = sb.parent.join(&name);
    let bomb = Bomb::start(sb, &name, &cg, true)?;
    bomb.wait_goal()?;
    let tasks = count_procs(&cg)?;
    let t0 = Instant::now();
    fs::write(cg.join(file), "1").with_context(|| format!("writing {}/{file}", cg.display()))?;
    let written = t0.elapsed();
    wait_event(&cg, key, want, Duration::from_secs(30))?;
    let dt = t0.elapsed();
    drop(bomb);
    if matches!(v, BombVariant::Kill) {
        s.push(
            "bare_kill_write",
            "bare cgroup.kill: write returned (killpath's definition of halt)",
            Unit::Micros,
            micros(written),
        );
    }
    let (id, label, tid, tlabel) = match v {
        BombVariant::Freeze => (
            "bare_freeze",
            "bare cgroup.freeze → frozen 1 (halt floor)",
            "bare_freeze_tasks",
            "bare cgroup.freeze: tasks at start",
        ),
        _ => (
            "bare_kill",
            "bare cgroup.kill → populated 0 (empty floor)",
            "bare_kill_tasks",
            "bare cgroup.kill: tasks at start",
        ),
    };
    s.push(id, label, Unit::Micros, micros(dt));
    s.push(tid, tlabel, Unit::Count, count_f64(tasks));
    println!(
        "bench:   bare {file}: {tasks} tasks, {}",
        fmt_us(micros(dt))
    );
    Ok(())
}

fn bomb_walk(sb: &mut Sandbox, rep: usize, s: &mut Section) -> Result<()> {
    let name = format!("walk-{rep}");
    let cg = sb.parent.join(&name);
    let bomb = Bomb::start(sb, &name, &cg, true)?;
    bomb.wait_goal()?;
    let tasks = count_procs(&cg)?;
    let t0 = Instant::now();
    let signalled = walk_and_kill(bomb.root)?;
    let dt = t0.elapsed();
    thread::sleep(WALK_SETTLE);
    let survivors = count_procs(&cg)?;
    drop(bomb);
    s.push(
        "walk_time",
        "tree walk: time to collect and signal",
        Unit::Micros,
        micros(dt),
    );
    s.push(
        "walk_tasks",
        "tree walk: tasks at start",
        Unit::Count,
        count_f64(tasks),
    );
    s.push(
        "walk_signalled",
        "tree walk: tasks signalled",
        Unit::Count,
        count_f64(signalled),
    );
    s.push(
        "walk_survivors",
        "tree walk: survivors after 200 ms",
        Unit::Count,
        count_f64(survivors),
    );
    println!(
        "bench:   tree walk: {tasks} tasks, {} , {survivors} survivors",
        fmt_us(micros(dt))
    );
    Ok(())
}

/// One pass of a process-tree walk: every descendant of `root` by the ppids
/// in `/proc/*/stat`, then SIGKILL to each, root first. Returns how many.
fn walk_and_kill(root: i32) -> Result<usize> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces and ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut order = vec![root];
    let mut i = 0;
    while let Some(&pid) = order.get(i) {
        if let Some(kids) = children.get(&pid) {
            order.extend(kids);
        }
        i += 1;
    }
    for &pid in &order {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    Ok(order.len())
}

/// A fork bomb running in `cg` under a subreaper helper; killed, reaped and
/// its cgroups removed when dropped.
struct Bomb {
    cg: PathBuf,
    v1: Option<PathBuf>,
    remove_cg: bool,
    reaper: Option<Child>,
    /// The bomb's root shell.
    root: i32,
}

impl Bomb {
    /// Starts the bomb in `cg` (created first when `create`), capped by pids.max.
    fn start(sb: &Sandbox, name: &str, cg: &Path, create: bool) -> Result<Self> {
        if create {
            fs::create_dir(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        let mut bomb = Self {
            cg: cg.to_owned(),
            v1: None,
            remove_cg: create,
            reaper: None,
            root: 0,
        };
        match &sb.pids {
            PidsCap::V2 => write_file(&cg.join("pids.max"), &BOMB_CAP.to_string())?,
            PidsCap::V1(base) => {
                let dir = base.join(name);
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                bomb.v1 = Some(dir.clone());
                write_file(&dir.join("pids.max"), &BOMB_CAP.to_string())?;
            }
            PidsCap::None => {}
        }
        let v1 = bomb
            .v1
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Joins both cgroups before the bomb starts, so that every task it
        // forks is inside from its first instruction.
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 1
if [ -n "$2" ]; then echo $$ > "$2/cgroup.procs" || exit 1; fi
exec sh -c "$3" 2>/dev/null"#;
        let mut reaper = Command::new(&sb.helper)
            .args(["bench-helper", "reap", "--", "sh", "-c", script, "sh"])
            .arg(cg)
            .arg(&v1)
            .arg(bomb_script())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the fork bomb's reaper")?;
        let out = reaper.stdout.take();
        bomb.reaper = Some(reaper);
        let mut line = String::new();
        if let Some(out) = out {
            BufReader::new(out)
                .read_line(&mut line)
                .context("reading the bomb's pid from its reaper")?;
        }
        bomb.root = line
            .trim()
            .parse()
            .with_context(|| format!("the reaper printed {:?}, not a pid", line.trim()))?;
        Ok(bomb)
    }

    /// Waits until the bomb's cgroup holds `BOMB_GOAL` tasks; returns the count.
    fn wait_goal(&self) -> Result<usize> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let n = count_procs(&self.cg)?;
            if n >= BOMB_GOAL {
                return Ok(n);
            }
            if start.elapsed() > BOMB_TIMEOUT {
                bail!(
                    "the fork bomb in {} reached only {n} of {BOMB_GOAL} tasks in {}s",
                    self.cg.display(),
                    BOMB_TIMEOUT.as_secs()
                );
            }
            if n == 0 && start.elapsed() > Duration::from_secs(5) {
                bail!("the fork bomb never joined {}", self.cg.display());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.cg.exists() {
            let _ = fs::write(self.cg.join("cgroup.kill"), "1");
            let _ = wait_event(&self.cg, "populated", "0", Duration::from_secs(10));
        }
        if let Some(mut reaper) = self.reaper.take() {
            let start = Instant::now();
            while !matches!(reaper.try_wait(), Ok(Some(_)) | Err(_))
                && start.elapsed() < Duration::from_secs(10)
            {
                thread::sleep(Duration::from_millis(10));
            }
            proc::terminate(&mut reaper, Duration::from_millis(500));
        }
        if let Some(v1) = &self.v1 {
            let _ = fs::remove_dir(v1);
        }
        if self.remove_cg && self.cg.exists() {
            let _ = fs::write(self.cg.join("cgroup.freeze"), "0");
            let _ = fs::remove_dir(&self.cg);
        }
    }
}

// ---------------------------------------------------------------------------
// Benchmark 2: isolate, next to an nftables drop rule.

#[derive(Clone, Copy)]
enum IsoVariant {
    Killpath,
    Nft,
    Spawn,
}

fn isolate(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Isolate: command to effect".into();
    s.description = format!(
        "A target running `sleep 1000`, {} repetitions, the order of the variants rotating. **killpath**: \
         `isolate` over the socket (client wall time, and the agent's `time_to_effect_us` — receipt, intent \
         journaled and fsynced, to the map update — and `map_update_us`), then `restore --to normal` (timed \
         too, not part of the ratio). **nftables**: the administrator's alternative, `nft add rule inet \
         {NFT_TABLE} out socket cgroupv2 level L \"PATH\" drop` on an output chain created once, timed as the \
         wall time of the `nft` command (it is a CLI: its process start is in the number), the rule flushed \
         after each repetition. **Process spawn floor**: the wall time of running `true`, for scale. \
         killpath's client wall time contains its journal: the intent is fsynced before the map update and \
         the result before the answer, so it follows the disk's fsync latency (other work on the machine \
         moves it a lot); `time_to_effect_us` ends at the map update. nftables cuts network traffic only; \
         killpath's isolate also refuses connects and sends with EPERM and, with BPF LSM, unix and packet \
         sockets.",
        p.effect_reps
    );
    let name = "iso";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent.join(name);
    let mut target = spawn_in_cgroup(&cg, &["sleep", "1000"])?;
    let result = isolate_inner(sb, p, s, name, &cg, &target);
    proc::terminate(&mut target, Duration::from_secs(1));
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    s.ratio(
        "isolate_wall_over_nft",
        "killpath isolate client wall / nft add rule wall (p50)",
        "kp_wall",
        "nft_add",
        0.5,
        None,
    );
    s.ratio(
        "isolate_wall_over_nft_p99",
        "killpath isolate client wall / nft add rule wall (p99)",
        "kp_wall",
        "nft_add",
        0.99,
        None,
    );
    s.ratio(
        "isolate_effect_over_nft",
        "killpath isolate time_to_effect (agent) / nft add rule wall (p50)",
        "kp_effect",
        "nft_add",
        0.5,
        None,
    );
    Ok(())
}

fn isolate_inner(
    sb: &mut Sandbox,
    p: &Params,
    s: &mut Section,
    name: &str,
    cg: &Path,
    target: &Child,
) -> Result<()> {
    wait_comm(target.id(), "sleep")?;
    let mut nft = match Nft::setup(sb, cg) {
        Ok(n) => Some(n),
        Err(e) => {
            s.notes
                .push(format!("nftables alternative not measured: {e:#}"));
            s.series_error(
                "nft_add",
                "nft add rule (socket cgroupv2 … drop): wall",
                Unit::Micros,
                format!("{e:#}"),
            );
            None
        }
    };
    if let Some(n) = &nft {
        s.notes.push(n.note.clone());
    }
    let variants = [IsoVariant::Killpath, IsoVariant::Nft, IsoVariant::Spawn];
    for rep in 0..p.effect_reps {
        for v in rotate(&variants, rep) {
            check_interrupted()?;
            match v {
                IsoVariant::Killpath => {
                    let (wall, r) = sb.call("isolate", json!({"name": name, "reason": "bench"}))?;
                    s.push(
                        "kp_wall",
                        "killpath isolate: client wall time",
                        Unit::Micros,
                        micros(wall),
                    );
                    s.push(
                        "kp_effect",
                        "killpath isolate: time_to_effect_us (agent)",
                        Unit::Micros,
                        num(&r, "time_to_effect_us")?,
                    );
                    s.push(
                        "kp_map",
                        "killpath isolate: map_update_us (agent)",
                        Unit::Micros,
                        num(&r, "map_update_us")?,
                    );
                    let (wall, r) = sb.call(
                        "restore",
                        json!({"name": name, "to": "normal", "reason": "bench"}),
                    )?;
                    s.push(
                        "kp_restore_wall",
                        "killpath restore --to normal: client wall time",
                        Unit::Micros,
                        micros(wall),
                    );
                    s.push(
                        "kp_restore_effect",
                        "killpath restore --to normal: time_to_effect_us (agent)",
                        Unit::Micros,
                        num(&r, "time_to_effect_us")?,
                    );
                }
                IsoVariant::Nft => {
                    if let Some(n) = &nft {
                        match n.add_rule_timed() {
                            Ok(dt) => s.push(
                                "nft_add",
                                "nft add rule (socket cgroupv2 … drop): wall",
                                Unit::Micros,
                                micros(dt),
                            ),
                            Err(e) => {
                                s.notes.push(format!("nft add rule failed at repetition {rep}, nftables samples stop there: {e:#}"));
                                nft = None;
                            }
                        }
                        if let Some(n) = &nft {
                            n.flush()?;
                        }
                    }
                }
                IsoVariant::Spawn => {
                    let t0 = Instant::now();
                    let status = Command::new("true").status().context("running `true`")?;
                    let dt = t0.elapsed();
                    if !status.success() {
                        bail!("`true` exited with {status}");
                    }
                    s.push(
                        "spawn_true",
                        "process spawn floor: `true` wall",
                        Unit::Micros,
                        micros(dt),
                    );
                }
            }
        }
    }
    // Effect checks: a TCP connect from inside the target to a listener
    // outside, with killpath's isolate, with the nft rule, and with neither.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a local listener")?;
    let port = listener.local_addr()?.port();
    let open = connect_probe(cg, port)?;
    sb.call(
        "isolate",
        json!({"name": name, "reason": "bench effect check"}),
    )?;
    let under_kp = connect_probe(cg, port);
    sb.call(
        "restore",
        json!({"name": name, "to": "normal", "reason": "bench"}),
    )?;
    let under_kp = under_kp?;
    let mut check = format!(
        "Effect check, a TCP connect from inside the target to 127.0.0.1:{port}: with nothing applied, {}; under killpath isolate, {}",
        open.describe(),
        under_kp.describe()
    );
    if let (Some(p50), Some(p99)) = (s.stat("kp_effect", 0.5), s.stat("kp_effect", 0.99)) {
        s.notes.push(format!(
            "Design goal: time to effect under 1 ms at the agent, p50 and p99. Measured time_to_effect_us: p50 {}, p99 {}.",
            fmt_us(p50),
            fmt_us(p99)
        ));
    }
    if let Some(n) = &nft {
        n.add_rule_timed()?;
        let under_nft = connect_probe(cg, port);
        n.flush()?;
        let _ = write!(check, "; under the nft rule, {}", under_nft?.describe());
    }
    check.push('.');
    s.notes.push(check);
    Ok(())
}

/// The outcome of one connect attempt from inside a cgroup.
struct Probe {
    code: Option<i32>,
    took: Duration,
}

impl Probe {
    fn describe(&self) -> String {
        let took = fmt_us(micros(self.took));
        match self.code {
            Some(0) => format!("it connected ({took})"),
            Some(124) => "it hung until the 2 s timeout (packets dropped)".into(),
            Some(c) => format!("it failed at once (exit {c}, {took})"),
            None => format!("the probe was killed by a signal ({took})"),
        }
    }
}

/// Runs `bash -c 'exec 3<>/dev/tcp/127.0.0.1/PORT'` inside `cg` (2 s timeout).
fn connect_probe(cg: &Path, port: u16) -> Result<Probe> {
    let t0 = Instant::now();
    let status = Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null"#])
        .arg(cg)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .status()
        .context("running the connect probe")?;
    Ok(Probe {
        code: status.code(),
        took: t0.elapsed(),
    })
}

/// The nftables table and output chain of the isolation alternative.
struct Nft {
    rule: Vec<String>,
    note: String,
}

impl Nft {
    fn setup(sb: &mut Sandbox, cg: &Path) -> Result<Self> {
        which::which("nft").context("`nft` is not installed (package nftables)")?;
        sb.nft_table = true;
        nft(&["add", "table", "inet", NFT_TABLE])?;
        nft(&[
            "add", "chain", "inet", NFT_TABLE, "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ])?;
        nft(&["flush", "chain", "inet", NFT_TABLE, "out"])?;
        let rel = cg
            .strip_prefix(&sb.mount)
            .context("the target's cgroup is not below the cgroup2 mount")?;
        let level = rel.components().count().to_string();
        let rule = |path: &str| -> Vec<String> {
            [
                "add",
                "rule",
                "inet",
                NFT_TABLE,
                "out",
                "socket",
                "cgroupv2",
                "level",
                &level,
                &format!("\"{path}\""),
                "drop",
            ]
            .iter()
            .map(|w| (*w).to_owned())
            .collect()
        };
        // nft resolves the path below /sys/fs/cgroup whatever the cgroup2
        // mount is; on a hybrid host (cgroup2 at /sys/fs/cgroup/unified)
        // the path relative to the mount is not found, so try both.
        let mut spellings = vec![rel.to_string_lossy().into_owned()];
        if let Ok(alt) = cg.strip_prefix("/sys/fs/cgroup") {
            let alt = alt.to_string_lossy().into_owned();
            if !spellings.contains(&alt) {
                spellings.push(alt);
            }
        }
        let mut errors = Vec::new();
        for path in &spellings {
            let words = rule(path);
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            match nft(&args) {
                Ok(()) => {
                    nft(&["flush", "chain", "inet", NFT_TABLE, "out"])?;
                    let mut note = format!(
                        "nft rule: `nft {}` (nftables {}).",
                        words.join(" "),
                        nft_version()
                    );
                    if let Some(first) = errors.first() {
                        let _ = write!(
                            note,
                            " nft looks cgroupv2 paths up below /sys/fs/cgroup whatever the cgroup2 mount is; with cgroup2 at {} the path relative to the mount is refused ({first}), so the rule names the same cgroup by its path below /sys/fs/cgroup, and `level` is its depth in the cgroup2 tree.",
                            sb.mount.display()
                        );
                    }
                    return Ok(Self { rule: words, note });
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("nft refused the rule: {}", errors.join("; "))
    }

    fn add_rule_timed(&self) -> Result<Duration> {
        let args: Vec<&str> = self.rule.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        nft(&args)?;
        Ok(t0.elapsed())
    }

    fn flush(&self) -> Result<()> {
        nft(&["flush", "chain", "inet", NFT_TABLE, "out"])
    }
}

fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running nft")?;
    if !out.status.success() {
        bail!(
            "`nft {}` failed ({}): {}",
            args.join(" "),
            out.status,
            // nft's first line is the message; the next ones repeat the command.
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(())
}

fn nft_version() -> String {
    proc::output_ok(Command::new("nft").arg("--version"))
        .map(|v| v.trim().trim_start_matches("nftables ").to_owned())
        .unwrap_or_else(|| "version unknown".into())
}

// ---------------------------------------------------------------------------
// Benchmark 3: stop of a single process, next to kill -9.

fn stop_single(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Stop of a single process: command to effect".into();
    s.description = format!(
        "{} repetitions, alternating. **killpath**: a fresh target running `sleep 1000`, `stop` over the \
         socket (client wall time, agent `time_to_halt_us` and `time_to_empty_us`, survivors), then \
         `release`. **kill -9**: the same `sleep 1000` started by the harness, `kill(pid, SIGKILL)` + \
         `waitpid`. killpath's stop journals an fsynced intent first, freezes, kills the cgroup and waits \
         for it to be empty.",
        p.effect_reps
    );
    for rep in 0..p.effect_reps {
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for killpath in order {
            check_interrupted()?;
            if killpath {
                let name = format!("one-{rep}");
                sb.call("create", json!({"name": name}))?;
                let cg = sb.parent.join(&name);
                let mut child = spawn_in_cgroup(&cg, &["sleep", "1000"])?;
                let measured = wait_comm(child.id(), "sleep")
                    .and_then(|()| sb.call("stop", json!({"name": name, "reason": "bench"})));
                let left = count_procs(&cg).unwrap_or(0);
                proc::terminate(&mut child, Duration::from_secs(1));
                let (wall, r) = measured?;
                let reported =
                    usize::try_from(r["survivors"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
                push_stop_times(s, wall, &r)?;
                s.push(
                    "kp_survivors",
                    "killpath stop: survivors",
                    Unit::Count,
                    count_f64(reported.max(left)),
                );
                sb.call("release", json!({"name": name}))?;
            } else {
                let mut child = Command::new("sleep")
                    .arg("1000")
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting sleep")?;
                wait_comm(child.id(), "sleep")?;
                let t0 = Instant::now();
                child.kill().context("kill -9")?;
                child.wait().context("waitpid")?;
                s.push(
                    "kill9",
                    "kill -9 + waitpid: wall",
                    Unit::Micros,
                    micros(t0.elapsed()),
                );
            }
        }
    }
    s.ratio(
        "stop_wall_over_kill9",
        "killpath stop client wall / kill -9 + waitpid (p50)",
        "kp_wall",
        "kill9",
        0.5,
        None,
    );
    s.ratio(
        "stop_empty_over_kill9",
        "killpath time_to_empty (agent) / kill -9 + waitpid (p50)",
        "kp_empty",
        "kill9",
        0.5,
        None,
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Benchmark 4: overhead on processes outside any target.

/// The states the overhead benchmark compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OverheadState {
    None,
    Agent,
    Throttled,
}

/// The other target the "throttled" state throttles (holding no task).
const OVERHEAD_TARGET: &str = "ovh";

fn overhead(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Overhead on a process outside any target".into();
    s.description = format!(
        "Nothing stopped or isolated. **agent**: the agent running with its programs attached (the level-4 \
         guard on `sched_process_fork` and `sched_switch` runs for every task on the host). **throttled**: \
         the same, and another target (holding no task) under a `--syscalls 1000/s` ceiling, so the \
         `sys_exit` throttle is attached and runs on every syscall of the host, exiting after its lookup \
         for processes outside throttled targets. **none**: the agent stopped and its pins removed, which \
         detaches its programs. {} repetitions, the order of the three states rotating. (a) {SYSCALL_SAMPLES} times per visit of a state, a \
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
    // Warm-up: page cache, CPU frequency.
    syscall_sample(sb)?;
    for rep in 0..p.overhead_reps {
        for state in rotate(&[OverheadState::None, OverheadState::Agent, OverheadState::Throttled], rep) {
            check_interrupted()?;
            let (tag, label) = match state {
                OverheadState::None => ("none", "no agent"),
                OverheadState::Agent => ("agent", "agent loaded"),
                OverheadState::Throttled => ("throttled", "agent loaded, another target throttled"),
            };
            sb.set_agent(state != OverheadState::None)?;
            if state != OverheadState::None {
                // The registry survives the agent restart, and with it the
                // other target's ceiling: set it for this state.
                if sb.call("status", json!({"name": OVERHEAD_TARGET})).is_err() {
                    sb.call("create", json!({"name": OVERHEAD_TARGET}))?;
                }
                if state == OverheadState::Throttled {
                    sb.call("throttle", json!({"name": OVERHEAD_TARGET, "syscalls": 1000, "reason": "bench"}))?;
                } else {
                    let _ = sb.call("restore", json!({"name": OVERHEAD_TARGET, "to": "normal"}));
                }
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
            for _ in 0..SYSCALL_SAMPLES {
                (wall_ns, cpu_ns) = syscall_sample(sb)?;
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
            let (bps, per_cpu) = iperf()?;
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
    sb.set_agent(true)?;
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
        "iperf_agent_over_none",
        "iperf3 loopback throughput, agent / none (p50)",
        "iperf_agent",
        "iperf_none",
        0.5,
        Some("≥ 0.95"),
    );
    s.ratio(
        "getppid_cpu_throttled_over_none",
        "getppid() CPU ns per call, another target throttled / none (p50)",
        "getppid_cpu_throttled",
        "getppid_cpu_none",
        0.5,
        Some("≤ 1.05"),
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
    Ok(())
}

/// Runs the getppid helper once; (wall, CPU) ns per call.
fn syscall_sample(sb: &Sandbox) -> Result<(f64, f64)> {
    let out = Command::new(&sb.helper)
        .args(["bench-helper", "syscalls", &SYSCALLS_N.to_string()])
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

/// One iperf3 run over loopback: received bits per second, and bits per
/// CPU-second of sender and receiver together.
fn iperf() -> Result<(f64, f64)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port()
        .to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let result = (|| -> Result<(f64, f64)> {
        let start = Instant::now();
        while !listening(&port) {
            if let Some(status) = server.try_wait()? {
                bail!("iperf3 -s exited ({status}) before listening");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("iperf3 -s did not listen on port {port} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let secs = IPERF_SECS.to_string();
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", &secs, "-J"])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3 -c")?;
        let report: Value =
            serde_json::from_slice(&out.stdout).context("iperf3 -J printed no JSON")?;
        if let Some(e) = report["error"].as_str() {
            bail!("iperf3: {e}");
        }
        if !out.status.success() {
            bail!("iperf3 -c failed ({})", out.status);
        }
        let end = &report["end"];
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| anyhow!("iperf3's report has no end.sum_received.bits_per_second"))?;
        let cpu = &end["cpu_utilization_percent"];
        let busy = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
            (Some(a), Some(b)) if a + b > 0.0 => (a + b) / 100.0,
            _ => {
                bail!("iperf3's report has no end.cpu_utilization_percent host_total/remote_total")
            }
        };
        Ok((bps, bps / busy))
    })();
    proc::terminate(&mut server, Duration::from_secs(5));
    result
}

/// Whether something listens on TCP `port` (from /proc/net/tcp and tcp6).
fn listening(port: &str) -> bool {
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

// ---------------------------------------------------------------------------
// The sandbox: the agent, its socket, pins and cgroups, all removed at the end.

/// How the bombs' pids.max cap is set.
enum PidsCap {
    /// The pids controller in the cgroup2 tree, enabled for the sandbox parent.
    V2,
    /// The cgroup v1 pids hierarchy (hybrid hosts): a directory of our own.
    V1(PathBuf),
    /// No pids controller: the bombs are uncapped.
    None,
}

struct Agent {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

struct Sandbox {
    kp: PathBuf,
    /// A copy of this binary, for the helpers (target/debug/xtask may be
    /// relinked by another cargo command meanwhile).
    helper: PathBuf,
    tmp: PathBuf,
    mount: PathBuf,
    parent: PathBuf,
    pin_dir: PathBuf,
    pids: PidsCap,
    agent: Option<Agent>,
    nft_table: bool,
    keep_tmp: bool,
}

impl Sandbox {
    fn new(kp: &Path) -> Result<Self> {
        let tag = format!("killpath-bench-{}", std::process::id());
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let mut cgroup2 = None;
        let mut v1_pids = None;
        for l in mounts.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match (f.get(1), f.get(2), f.get(3)) {
                (Some(dir), Some(&"cgroup2"), _) if cgroup2.is_none() => {
                    cgroup2 = Some(PathBuf::from(dir))
                }
                (Some(dir), Some(&"cgroup"), Some(opts))
                    if opts.split(',').any(|o| o == "pids") =>
                {
                    v1_pids = Some(PathBuf::from(dir));
                }
                _ => {}
            }
        }
        let mount = cgroup2.ok_or_else(|| anyhow!("no cgroup2 filesystem is mounted"))?;
        clean_stale(&mount, v1_pids.as_deref());
        let tmp = env::temp_dir().join(&tag);
        let mut sb = Self {
            kp: kp.to_owned(),
            helper: tmp.join("xtask"),
            tmp,
            parent: mount.join(&tag),
            mount,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            pids: PidsCap::None,
            agent: None,
            nft_table: false,
            keep_tmp: false,
        };
        fs::create_dir_all(&sb.tmp).with_context(|| format!("creating {}", sb.tmp.display()))?;
        fs::copy("/proc/self/exe", &sb.helper)
            .with_context(|| format!("copying the xtask executable to {}", sb.helper.display()))?;
        fs::create_dir(&sb.parent)
            .with_context(|| format!("creating cgroup {}", sb.parent.display()))?;
        let root_controllers =
            read_trimmed(&sb.mount.join("cgroup.subtree_control").to_string_lossy());
        if root_controllers.split_whitespace().any(|c| c == "pids")
            && fs::write(sb.parent.join("cgroup.subtree_control"), "+pids").is_ok()
        {
            sb.pids = PidsCap::V2;
        } else if let Some(v1) = v1_pids {
            let dir = v1.join(&tag);
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            sb.pids = PidsCap::V1(dir);
        } else {
            println!("bench: no pids controller: the fork bombs are not capped");
        }
        Ok(sb)
    }

    /// Starts the agent and waits until it answers a ping.
    fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            return Ok(());
        }
        let sock = self.tmp.join("agent.sock");
        let _ = fs::remove_file(&sock);
        let log_path = self.tmp.join("agent.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = Command::new(&self.kp)
            .arg("agent")
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(self.tmp.join("state"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--cgroup-parent")
            .arg(&self.parent)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} agent", self.kp.display()))?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the agent exited ({status}) before answering; last lines of {}:\n{}",
                    log_path.display(),
                    proc::tail(&log_path, 15)
                );
            }
            if sock.exists() {
                if let Ok(stream) = UnixStream::connect(&sock) {
                    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
                    let reader = BufReader::new(stream.try_clone()?);
                    self.agent = Some(Agent {
                        child,
                        reader,
                        writer: stream,
                        next_id: 1,
                    });
                    self.call("ping", json!({}))?;
                    return Ok(());
                }
            }
            if start.elapsed() > AGENT_READY_TIMEOUT {
                proc::terminate(&mut child, Duration::from_secs(5));
                bail!(
                    "the agent did not open {} within {}s",
                    sock.display(),
                    AGENT_READY_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent (SIGTERM) and removes its pins, which detaches its programs.
    fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            proc::terminate(&mut agent.child, Duration::from_secs(10));
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
    }

    fn set_agent(&mut self, running: bool) -> Result<()> {
        if running {
            self.start_agent()
        } else {
            self.stop_agent();
            if self.pin_dir.exists() {
                bail!(
                    "{} is still there after removing it",
                    self.pin_dir.display()
                );
            }
            Ok(())
        }
    }

    /// One request over the socket: the client wall time and the result.
    fn call(&mut self, cmd: &str, args: Value) -> Result<(Duration, Value)> {
        let agent = self
            .agent
            .as_mut()
            .ok_or_else(|| anyhow!("the agent is not running"))?;
        let id = agent.next_id;
        agent.next_id += 1;
        let mut line = json!({"id": id, "cmd": cmd, "args": args}).to_string();
        line.push('\n');
        let mut reply = String::new();
        let t0 = Instant::now();
        agent
            .writer
            .write_all(line.as_bytes())
            .with_context(|| format!("sending {cmd} to the agent"))?;
        agent
            .reader
            .read_line(&mut reply)
            .with_context(|| format!("reading the agent's answer to {cmd}"))?;
        let wall = t0.elapsed();
        let v: Value = serde_json::from_str(&reply)
            .with_context(|| format!("the agent answered {cmd} with {reply:?}"))?;
        if v["id"] != json!(id) {
            bail!("the agent answered id {} to request {id}", v["id"]);
        }
        if v["ok"] != json!(true) {
            bail!(
                "agent: {cmd} {args} failed: {} ({})",
                v["error"]["message"].as_str().unwrap_or("?"),
                v["error"]["code"].as_str().unwrap_or("?")
            );
        }
        Ok((wall, v["result"].clone()))
    }

    /// Kills every task under the cgroup parent, removes the cgroups, stops
    /// the agent, removes its pins, the nft table and the v1 pids cgroups.
    fn clean(&mut self) {
        remove_cgroup_tree(&self.parent);
        self.stop_agent();
        if self.nft_table {
            let _ = nft(&["delete", "table", "inet", NFT_TABLE]);
        }
        if let PidsCap::V1(dir) = &self.pids {
            remove_v1_dir(dir);
        }
        let left: Vec<String> = [&self.parent, &self.pin_dir]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !left.is_empty() {
            eprintln!("bench: could not remove {}", left.join(", "));
        }
        if self.keep_tmp {
            println!(
                "bench: kept {} (agent.log) for inspection",
                self.tmp.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Every directory below `root` (cgroups), `root` first, parents before children.
fn subdirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_owned()];
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned() {
        if let Ok(rd) = fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    dirs
}

/// Kills every task below cgroup `root` (`cgroup.kill`, else pid by pid)
/// and removes the cgroups, deepest first, `root` included.
fn remove_cgroup_tree(root: &Path) {
    if !root.exists() {
        return;
    }
    let dirs = subdirs(root);
    let _ = fs::write(root.join("cgroup.kill"), "1");
    if wait_event(root, "populated", "0", Duration::from_secs(10)).is_err() {
        // No cgroup.kill (before 5.14): each cgroup's tasks by pid.
        for d in &dirs {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
            for pid in fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = wait_event(root, "populated", "0", Duration::from_secs(5));
    }
    for d in dirs.iter().rev() {
        let _ = fs::write(d.join("cgroup.freeze"), "0");
        let _ = fs::remove_dir(d);
    }
}

/// Removes our cgroup v1 pids directory and the cgroups directly in it.
fn remove_v1_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let _ = fs::remove_dir(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Removes what earlier runs left when they were killed before cleaning up
/// (SIGKILL, a crash): their agent, cgroups and tasks, pins, v1 pids cgroups
/// and temporary directory. Only runs whose process is gone are touched.
fn clean_stale(mount: &Path, v1_pids: Option<&Path>) {
    let bpffs = PathBuf::from("/sys/fs/bpf");
    let tmp = env::temp_dir();
    // A failed run keeps its temporary directory (agent.log) on purpose:
    // only cgroups and pins mark a run that did not clean up.
    let mut bases = vec![mount.to_owned(), bpffs.clone()];
    bases.extend(v1_pids.map(Path::to_path_buf));
    let mut stale: Vec<u32> = bases
        .iter()
        .filter_map(|b| fs::read_dir(b).ok())
        .flat_map(|rd| rd.flatten())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("killpath-bench-"))
                .and_then(|p| p.parse::<u32>().ok())
        })
        .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    stale.sort_unstable();
    stale.dedup();
    for pid in stale {
        let tag = format!("killpath-bench-{pid}");
        let pin_dir = bpffs.join(&tag);
        // Its agent, if it outlived it: the process whose command line
        // names this run's pin dir.
        let pin_arg = pin_dir.to_string_lossy().into_owned();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(agent) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == pin_arg.as_bytes()) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(agent, libc::SIGKILL);
                }
            }
        }
        remove_cgroup_tree(&mount.join(&tag));
        let _ = fs::remove_dir_all(&pin_dir);
        if let Some(v1) = v1_pids {
            remove_v1_dir(&v1.join(&tag));
        }
        let _ = fs::remove_dir_all(tmp.join(&tag));
        println!("bench: removed the leftovers of an earlier, interrupted run (pid {pid})");
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP: the run stops at the next check and
/// cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The sandbox's `cgroup.kill`, written from the signal handler so that no
/// fork bomb outlives an interrupted run even for a moment.
static KILL_FILE: OnceLock<CString> = OnceLock::new();

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if let Some(path) = KILL_FILE.get() {
        // SAFETY: open, write and close are async-signal-safe; the path is
        // a NUL-terminated string that lives as long as the process.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }
}

fn install_signal_handlers(kill_file: &Path) -> Result<()> {
    let path =
        CString::new(kill_file.as_os_str().as_bytes()).context("a cgroup path with a NUL byte")?;
    let _ = KILL_FILE.set(path);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zero-initialised sigaction is valid; the handler does
        // only async-signal-safe work.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("sigaction({signal}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Starts `argv` inside cgroup `cg` (it joins before exec).
fn spawn_in_cgroup(cg: &Path, argv: &[&str]) -> Result<Child> {
    Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(cg)
        .args(argv)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} in {}", argv.join(" "), cg.display()))
}

/// Waits until process `pid` runs `comm` (it has exec'd).
fn wait_comm(pid: u32, comm: &str) -> Result<()> {
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

/// Waits (poll(2) on cgroup.events, re-read at least every 10 ms) until
/// its line `key` says `want`.
fn wait_event(cg: &Path, key: &str, want: &str, timeout: Duration) -> Result<()> {
    let path = cg.join("cgroup.events");
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let n = file
            .read_at(&mut buf, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let done = text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(key) && w.next() == Some(want)
        });
        if done {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} did not say `{key} {want}` within {} s",
                path.display(),
                timeout.as_secs()
            );
        }
        let ms = i32::try_from(left.as_millis().min(10)).unwrap_or(10);
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call.
        unsafe {
            libc::poll(&mut pfd, 1, ms);
        }
    }
}

fn count_procs(cg: &Path) -> Result<usize> {
    let path = cg.join("cgroup.procs");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .count())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `items` rotated left by `rep`: each variant takes each position in turn.
fn rotate<T: Copy>(items: &[T], rep: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = rep % v.len();
        v.rotate_left(k);
    }
    v
}

/// The three times every killpath stop reports: client wall, and the
/// agent's time to halt and to empty.
fn push_stop_times(s: &mut Section, wall: Duration, r: &Value) -> Result<()> {
    s.push("kp_wall", "killpath stop: client wall time", Unit::Micros, micros(wall));
    s.push("kp_halt", "killpath stop: time_to_halt_us (agent)", Unit::Micros, num(r, "time_to_halt_us")?);
    s.push("kp_empty", "killpath stop: time_to_empty_us (agent)", Unit::Micros, num(r, "time_to_empty_us")?);
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn count_f64(n: usize) -> f64 {
    n as f64
}

/// A numeric field of an agent result.
fn num(r: &Value, key: &str) -> Result<f64> {
    r[key]
        .as_f64()
        .ok_or_else(|| anyhow!("the agent's result has no number {key:?}: {r}"))
}

// ---------------------------------------------------------------------------
// Helpers run as child processes.

pub fn helper(args: &HelperArgs) -> Result<ExitCode> {
    match &args.op {
        Helper::Reap { command } => reap(command),
        Helper::Syscalls { n } => {
            let cpu0 = thread_cpu_ns()?;
            let t0 = Instant::now();
            for _ in 0..*n {
                // SAFETY: getppid(2) has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
            let wall = t0.elapsed().as_nanos() as f64;
            let cpu = thread_cpu_ns()? - cpu0;
            let calls = (*n).max(1) as f64;
            println!("{:.3} {:.3}", wall / calls, cpu / calls);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) with a valid timespec pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        bail!(
            "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64)
}

fn reap(command: &[String]) -> Result<ExitCode> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    // Outlive a Ctrl-C of the harness: its handler kills the bomb with
    // cgroup.kill, and only then must this process reap it and exit
    // (dying first would hand the dead bomb's tasks to PID 1, which may
    // never reap them).
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN has no memory-safety preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("reap: no command"))?;
    let child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", child.id())?;
    out.flush()?;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: every descendant is gone.
            return Ok(ExitCode::SUCCESS);
        }
    }
}

// ---------------------------------------------------------------------------
// Results.

#[derive(Clone, Copy, PartialEq)]
enum Unit {
    Micros,
    Count,
    NsPerCall,
    BitsPerSecond,
    BitsPerCpuSecond,
    PerSecond,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::Count => "count",
            Unit::NsPerCall => "ns_per_call",
            Unit::BitsPerSecond => "bits_per_second",
            Unit::BitsPerCpuSecond => "bits_per_cpu_second",
            Unit::PerSecond => "per_second",
        }
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Micros => fmt_us(v),
            Unit::Count => format!("{v:.0}"),
            Unit::NsPerCall => format!("{v:.1} ns"),
            Unit::BitsPerSecond => format!("{:.2} Gbit/s", v / 1e9),
            Unit::BitsPerCpuSecond => format!("{:.2} Gbit/CPU-s", v / 1e9),
            Unit::PerSecond => format!("{v:.1}/s"),
        }
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

struct Series {
    id: String,
    label: String,
    unit: Unit,
    samples: Vec<f64>,
    error: Option<String>,
}

#[derive(Clone, Copy)]
struct Summary {
    n: usize,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn summary(&self) -> Option<Summary> {
        let v = self.sorted();
        Some(Summary {
            n: v.len(),
            p50: percentile(&v, 0.5)?,
            p99: percentile(&v, 0.99)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

struct Ratio {
    id: &'static str,
    label: &'static str,
    value: Option<f64>,
    goal: Option<&'static str>,
    why_missing: Option<String>,
}

struct Section {
    id: &'static str,
    title: String,
    description: String,
    series: Vec<Series>,
    ratios: Vec<Ratio>,
    notes: Vec<String>,
    error: Option<String>,
}

impl Section {
    fn new(id: &'static str, title: &str) -> Self {
        Self {
            id,
            title: title.into(),
            description: String::new(),
            series: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    fn series_mut(&mut self, id: &str, label: &str, unit: Unit) -> &mut Series {
        let i = match self.series.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    id: id.into(),
                    label: label.into(),
                    unit,
                    samples: Vec::new(),
                    error: None,
                });
                self.series.len() - 1
            }
        };
        &mut self.series[i]
    }

    fn push(&mut self, id: &str, label: &str, unit: Unit, v: f64) {
        self.series_mut(id, label, unit).samples.push(v);
    }

    fn series_error(&mut self, id: &str, label: &str, unit: Unit, e: String) {
        self.series_mut(id, label, unit).error = Some(e);
    }

    fn stat(&self, id: &str, q: f64) -> Option<f64> {
        self.series
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| percentile(&s.sorted(), q))
    }

    fn ratio(
        &mut self,
        id: &'static str,
        label: &'static str,
        num: &str,
        den: &str,
        q: f64,
        goal: Option<&'static str>,
    ) {
        let (a, b) = (self.stat(num, q), self.stat(den, q));
        let (value, why_missing) = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => (Some(a / b), None),
            _ => {
                let missing: Vec<&str> = [(num, a), (den, b)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                let why = self
                    .series
                    .iter()
                    .filter(|s| missing.contains(&s.id.as_str()))
                    .find_map(|s| s.error.clone())
                    .unwrap_or_else(|| format!("no samples for {}", missing.join(", ")));
                (None, Some(why))
            }
        };
        self.ratios.push(Ratio {
            id,
            label,
            value,
            goal,
            why_missing,
        });
    }
}

fn killpath_survivors(sections: &[Section]) -> u64 {
    let total = sections
        .iter()
        .flat_map(|s| s.series.iter())
        .filter(|s| s.id == "kp_survivors")
        .flat_map(|s| s.samples.iter())
        .map(|v| *v as u64)
        .sum();
    total
}

struct RunInfo {
    date: String,
    command: String,
    quick: bool,
    commit: String,
    dirty: bool,
    kernel: String,
    nproc: usize,
    cpu: String,
    mem_kib: u64,
    load_start: String,
    load_end: String,
    duration: Duration,
}

impl RunInfo {
    fn collect(
        root: &Path,
        command: String,
        load_start: String,
        duration: Duration,
        quick: bool,
    ) -> Self {
        let git = |args: &[&str]| {
            proc::output_ok(Command::new("git").args(args).current_dir(root))
                .map(|s| s.trim().to_owned())
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned());
        let mem_kib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            date: proc::output_ok(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
                .map_or_else(|| "unknown".into(), |d| d.trim().to_owned()),
            command,
            quick,
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            kernel: proc::output_ok(Command::new("uname").arg("-r"))
                .map_or_else(|| "unknown".into(), |k| k.trim().to_owned()),
            nproc: thread::available_parallelism().map_or(0, std::num::NonZero::get),
            cpu,
            mem_kib,
            load_start,
            load_end: read_trimmed("/proc/loadavg"),
            duration,
        }
    }

    fn memory(&self) -> String {
        let gib = self.mem_kib as f64 / (1024.0 * 1024.0);
        format!("{gib:.1} GiB")
    }
}

struct Results {
    info: RunInfo,
    sections: Vec<Section>,
    survivors: u64,
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl Results {
    fn to_json(&self) -> Value {
        let i = &self.info;
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|s| {
                let series: Vec<Value> = s
                    .series
                    .iter()
                    .map(|x| {
                        let summary = x.summary().map(|m| json!({"n": m.n, "p50": round1(m.p50), "p99": round1(m.p99), "min": round1(m.min), "max": round1(m.max)}));
                        json!({
                            "id": x.id, "label": x.label, "unit": x.unit.name(), "summary": summary,
                            "samples": x.samples.iter().map(|v| round1(*v)).collect::<Vec<f64>>(),
                            "error": x.error,
                        })
                    })
                    .collect();
                json!({
                    "id": s.id, "title": s.title, "description": s.description, "error": s.error,
                    "notes": s.notes, "series": series, "ratios": s.ratios.iter().map(ratio_json).collect::<Vec<Value>>(),
                })
            })
            .collect();
        json!({
            "date": i.date,
            "command": i.command,
            "quick": i.quick,
            "git_commit": i.commit,
            "git_uncommitted_changes": i.dirty,
            "kernel": i.kernel,
            "machine": {"nproc": i.nproc, "cpu_model": i.cpu, "memory_total_kib": i.mem_kib, "memory": i.memory()},
            "load_average": {"start": i.load_start, "end": i.load_end},
            "duration_s": i.duration.as_secs(),
            "killpath_stop_survivors": self.survivors,
            "ok": self.survivors == 0 && self.sections.iter().all(|s| s.error.is_none()),
            "sections": sections,
        })
    }

    fn markdown(&self) -> String {
        let i = &self.info;
        let mut md = String::new();
        let _ = writeln!(md, "# killpath benchmark results\n");
        let _ = writeln!(
            md,
            "## How to reproduce\n\nOn a Debian 12 machine, as root, from the repository root:\n\n```sh\n\
             cargo xtask bench          # 5 fork-bomb runs per variant, 100 command-to-effect repetitions, 5 overhead repetitions\n\
             cargo xtask bench --quick  # 2, 30 and 3\n```\n\n\
             It runs `cargo xtask setup`, builds `killpath` in release, starts an agent in a sandbox of its own \
             (socket, state dir, bpffs pin dir `/sys/fs/bpf/killpath-bench-<pid>`, cgroup parent \
             `<cgroup2 mount>/killpath-bench-<pid>`, all removed at the end), runs every benchmark below side by \
             side in one run — variants alternate their order across repetitions, so that noise from a busy \
             machine weighs on all of them and the ratios stay meaningful — and rewrites this file and \
             [`results.json`](results.json) (every raw sample). It talks to the agent over its socket, so the \
             killpath numbers contain no CLI process start. The harness is `xtask/src/bench.rs`. Every number \
             here comes from the run described below; percentiles are nearest-rank, so with few samples p99 is \
             the maximum. Throttle (level 1) does not exist yet and is not measured.\n"
        );
        let _ = writeln!(md, "## This run\n");
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let _ = writeln!(md, "| date | {} |", i.date);
        let _ = writeln!(md, "| command | `{}` |", i.command);
        let _ = writeln!(
            md,
            "| git commit | `{}`{} |",
            i.commit,
            if i.dirty {
                " (with uncommitted changes in the working tree)"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "| kernel | {} |", i.kernel);
        let _ = writeln!(
            md,
            "| machine | {} CPUs, {}, {} RAM |",
            i.nproc,
            i.cpu,
            i.memory()
        );
        let _ = writeln!(
            md,
            "| load average (start → end) | {} → {} |",
            i.load_start, i.load_end
        );
        let _ = writeln!(
            md,
            "| duration | {} s (after the build) |",
            i.duration.as_secs()
        );
        let _ = writeln!(
            md,
            "| killpath stop survivors, all runs | {} |\n",
            self.survivors
        );
        let _ = writeln!(md, "## Ratios\n\nMeasured side by side in this run.\n");
        let _ = writeln!(md, "| ratio | value | design goal |\n| --- | --- | --- |");
        for s in &self.sections {
            for r in &s.ratios {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    r.label,
                    ratio_text(r),
                    r.goal.unwrap_or("–")
                );
            }
        }
        let _ = writeln!(md);
        for s in &self.sections {
            let _ = writeln!(md, "## {}\n", s.title);
            if !s.description.is_empty() {
                let _ = writeln!(md, "{}\n", s.description);
            }
            if let Some(e) = &s.error {
                let _ = writeln!(md, "**This benchmark failed:** {e}\n");
            }
            if !s.series.is_empty() {
                let _ = writeln!(
                    md,
                    "| series | n | p50 | p99 | min | max |\n| --- | --- | --- | --- | --- | --- |"
                );
                for x in &s.series {
                    match (x.summary(), &x.error) {
                        (Some(m), _) => {
                            let u = x.unit;
                            let _ = writeln!(
                                md,
                                "| {} | {} | {} | {} | {} | {} |",
                                x.label,
                                m.n,
                                u.fmt(m.p50),
                                u.fmt(m.p99),
                                u.fmt(m.min),
                                u.fmt(m.max)
                            );
                        }
                        (None, Some(e)) => {
                            let _ = writeln!(
                                md,
                                "| {} | 0 | not measured: {} | | | |",
                                x.label,
                                e.replace('|', "\\|").replace('\n', " ")
                            );
                        }
                        (None, None) => {
                            let _ = writeln!(md, "| {} | 0 | | | | |", x.label);
                        }
                    }
                }
                let _ = writeln!(md);
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {}", n.replace('\n', " "));
            }
            if !s.notes.is_empty() {
                let _ = writeln!(md);
            }
        }
        md
    }

    /// The table printed at the end of the run.
    fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<72} {:>5} {:>12} {:>12} {:>12} {:>12}",
            "series", "n", "p50", "p99", "min", "max"
        );
        for s in &self.sections {
            let _ = writeln!(
                out,
                "-- {}{}",
                s.title,
                if s.error.is_some() { " (FAILED)" } else { "" }
            );
            for x in &s.series {
                if let Some(m) = x.summary() {
                    let u = x.unit;
                    let _ = writeln!(
                        out,
                        "{:<72} {:>5} {:>12} {:>12} {:>12} {:>12}",
                        x.label,
                        m.n,
                        u.fmt(m.p50),
                        u.fmt(m.p99),
                        u.fmt(m.min),
                        u.fmt(m.max)
                    );
                } else if let Some(e) = &x.error {
                    let _ = writeln!(
                        out,
                        "{:<72} not measured: {}",
                        x.label,
                        e.lines().next().unwrap_or_default()
                    );
                }
            }
        }
        let _ = writeln!(out, "\n{:<72} {:>10} {:>8}", "ratio", "value", "goal");
        for s in &self.sections {
            for r in &s.ratios {
                let _ = writeln!(
                    out,
                    "{:<72} {:>10} {:>8}",
                    r.label,
                    ratio_text(r),
                    r.goal.unwrap_or("-")
                );
            }
        }
        let _ = writeln!(
            out,
            "\nkillpath stop survivors, all runs: {}",
            self.survivors
        );
        out
    }
}

fn ratio_text(r: &Ratio) -> String {
    match (r.value, &r.why_missing) {
        (Some(v), _) => format!("{v:.2}×"),
        (None, Some(why)) => format!(
            "not measured ({})",
            why.lines().next().unwrap_or_default().replace('|', "\\|")
        ),
        (None, None) => "not measured".into(),
    }
}

fn ratio_json(r: &Ratio) -> Value {
    json!({"id": r.id, "label": r.label, "value": r.value.map(|v| (v * 1000.0).round() / 1000.0), "design_goal": r.goal, "not_measured": r.why_missing})
}
