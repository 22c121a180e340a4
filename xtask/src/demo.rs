//! `cargo xtask demo [--vm]`: starts an agent and runs the default drill on
//! a fresh canary (throttle, degrade, isolate, stop, restart from the
//! checkpoint, data check), printing the report, then verifies the
//! journal. The sequence is a plain list of [`Step`]s (see [`steps`]); the
//! same list runs on the host or, with `--vm`, inside the VM (the xtask
//! binary re-runs itself there with the hidden `--in-guest` flag).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    build,
    proc::{self, shell_quote},
    setup::{self, Env},
    vm,
};

#[derive(clap::Args)]
pub struct Args {
    /// Run the demo inside the BPF-LSM VM instead of on the host.
    #[arg(long)]
    vm: bool,
    /// Run the steps right here, without setup or build (used inside the VM).
    #[arg(long, hide = true)]
    in_guest: bool,
}

/// One step of the demo.
enum Step {
    /// Start a command in the background under `name`; when `ready` is set,
    /// wait (up to `READY_TIMEOUT`) for that path to appear.
    Spawn {
        name: &'static str,
        args: Vec<String>,
        ready: Option<PathBuf>,
    },
    /// Run a command in the foreground; it must succeed.
    Run { args: Vec<String> },
    /// Stop the background process started under `name` (SIGTERM, then SIGKILL).
    Stop { name: &'static str },
}

/// How long a background process may take to become ready.
/// Loading and verifying every program takes ~40 s in the VM (software
/// emulation); a dead agent is noticed at once (see `wait_ready`).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The demo sequence. `kp` is the killpath binary, `tmp` a fresh directory.
fn steps(kp: &Path, tmp: &Path, sandbox: &Sandbox) -> Vec<Step> {
    let kp = kp.to_string_lossy().into_owned();
    let sock = tmp.join("agent.sock").to_string_lossy().into_owned();
    let path = |p: &str| tmp.join(p).to_string_lossy().into_owned();
    let cli = |args: &[&str]| {
        let mut v = vec![kp.clone(), "--socket".into(), sock.clone()];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    vec![
        Step::Spawn {
            name: "agent",
            args: vec![
                kp.clone(),
                "agent".into(),
                "--socket".into(),
                sock.clone(),
                "--state-dir".into(),
                path("state"),
                "--pin-dir".into(),
                sandbox.pin_dir.to_string_lossy().into_owned(),
                "--cgroup-parent".into(),
                sandbox.cgroup_parent.to_string_lossy().into_owned(),
            ],
            ready: Some(tmp.join("agent.sock")),
        },
        Step::Run {
            args: cli(&["probe"]),
        },
        // The main job: a fresh canary (its own local service, records,
        // checkpoints, an exec'd helper, a known syscall rate) driven
        // through throttle, degrade, isolate and stop, each verified from
        // outside and timed, then restarted from its checkpoint and its
        // data checked. The report says what this kernel could not enforce.
        Step::Run {
            args: cli(&["drill", "--canary", "--report", &path("drill-report.json")]),
        },
        Step::Run {
            args: cli(&["drill", "--history"]),
        },
        Step::Run {
            args: cli(&["journal", "--verify"]),
        },
        Step::Stop { name: "agent" },
    ]
}

pub fn run(args: &Args) -> Result<()> {
    let root = setup::workspace_root()?;
    if args.in_guest {
        setup::ensure_bpffs()?;
        return execute(&root);
    }
    let env = setup::run()?;
    build::run(&env, false)?;
    if args.vm {
        run_in_vm(&env)
    } else {
        execute(&env.root)
    }
}

/// Re-runs this xtask binary inside the VM with `demo --in-guest`.
fn run_in_vm(env: &Env) -> Result<()> {
    // A copy of this very binary: target/debug/xtask may be relinked by
    // another cargo command while the VM boots.
    let dir = vm::fresh_results_dir(env, "demo")?;
    let me = dir.join("xtask");
    fs::copy("/proc/self/exe", &me)
        .with_context(|| format!("copying the xtask executable to {}", me.display()))?;
    let exec = format!("{} demo --in-guest", shell_quote(&me.to_string_lossy()));
    let mut cmd = vm::vng_command(env, &exec, &[]);
    println!("demo: {}", proc::describe(&cmd));
    let (status, _) = proc::run_tee(&mut cmd)?;
    if !status.success() {
        bail!("the demo in the VM failed (vng exited with {status})");
    }
    Ok(())
}

/// The demo's own bpffs pin dir and cgroup parent, so that it never
/// touches a real agent's state and leaves nothing behind: at the end every
/// task under the cgroup parent is killed, the cgroups removed, and the pins
/// (hence the demo's programs) removed.
struct Sandbox {
    pin_dir: PathBuf,
    cgroup_parent: PathBuf,
}

impl Sandbox {
    fn new() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let mount = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .next()
            .ok_or_else(|| anyhow!("no cgroup2 filesystem is mounted"))?;
        let tag = format!("killpath-demo-{}", std::process::id());
        Ok(Self { pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag), cgroup_parent: mount.join(tag) })
    }

    fn clean(&self) {
        let mut dirs = vec![self.cgroup_parent.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = fs::read_dir(&dirs[i]) {
                dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            i += 1;
        }
        for d in &dirs {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        thread::sleep(Duration::from_millis(300));
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// Runs the steps with `target/debug/killpath` in a fresh temporary directory;
/// background processes are always cleaned up.
fn execute(root: &Path) -> Result<()> {
    let kp = root.join("target/debug/killpath");
    if !kp.is_file() {
        bail!("{} is missing; run `cargo xtask build`", kp.display());
    }
    let tmp = env::temp_dir().join(format!("killpath-demo-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    println!("demo: working directory {}", tmp.display());
    let mut background: Vec<(&'static str, Child)> = Vec::new();
    let sandbox = Sandbox::new()?;
    let result = steps(&kp, &tmp, &sandbox)
        .into_iter()
        .try_for_each(|step| run_step(step, &mut background));
    // Stop whatever is still running, newest first.
    while let Some((name, mut child)) = background.pop() {
        println!("demo: stopping {name}");
        proc::terminate(&mut child, Duration::from_secs(5));
    }
    sandbox.clean();
    result?;
    println!("demo done");
    Ok(())
}

fn run_step(step: Step, background: &mut Vec<(&'static str, Child)>) -> Result<()> {
    match step {
        Step::Spawn { name, args, ready } => {
            let mut cmd = command(&args)?;
            println!("$ {} &", proc::describe(&cmd));
            let child = cmd
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("could not start {name}: `{}`", proc::describe(&cmd)))?;
            background.push((name, child));
            if let (Some(path), Some((_, child))) = (ready, background.last_mut()) {
                wait_ready(name, child, &path)?;
            }
        }
        Step::Run { args } => {
            let (status, cmd) = run_foreground(&args)?;
            if !status.success() {
                bail!("`{cmd}` failed ({status})");
            }
        }
        Step::Stop { name } => {
            if let Some(i) = background.iter().position(|(n, _)| *n == name) {
                let (_, mut child) = background.remove(i);
                println!("demo: stopping {name}");
                proc::terminate(&mut child, Duration::from_secs(5));
            }
        }
    }
    Ok(())
}

/// Runs a step's command in the foreground, printing it first.
fn run_foreground(args: &[String]) -> Result<(std::process::ExitStatus, String)> {
    let mut cmd = command(args)?;
    let shown = proc::describe(&cmd);
    println!("$ {shown}");
    let status = cmd.stdin(Stdio::null()).status().with_context(|| format!("could not start `{shown}`"))?;
    Ok((status, shown))
}

fn command(args: &[String]) -> Result<Command> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| anyhow!("empty command in the demo steps"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    Ok(cmd)
}

/// Waits until `path` exists; fails early if `child` exits first.
fn wait_ready(name: &str, child: &mut Child, path: &Path) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status}) before {} appeared",
                path.display()
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "{name}: {} did not appear within {}s",
                path.display(),
                READY_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
