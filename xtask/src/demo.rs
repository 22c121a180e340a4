//! `cargo xtask demo [--vm]`: starts an agent, runs a canary workload under
//! it, stops the canary and verifies the journal. The sequence is a plain
//! list of [`Step`]s (see [`steps`]) so it can grow into a full drill; the same
//! list runs on the host or, with `--vm`, inside the VM (the xtask binary
//! re-runs itself there with the hidden `--in-guest` flag).

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
    /// Run a command whose non-zero exit is an expected, explained outcome
    /// (e.g. `isolate --verify` reporting channels this kernel cannot cut).
    RunMayFail { args: Vec<String>, why: &'static str },
    /// Print files matching `prefix*` in `dir`.
    Show { dir: PathBuf, prefix: &'static str },
    /// Let the workload run for a while.
    Sleep(Duration),
    /// Stop the background process started under `name` (SIGTERM, then SIGKILL).
    Stop { name: &'static str },
}

/// Port of the demo's local HTTP service.
const SERVICE_PORT: u16 = 18437;

/// How long a background process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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
        // A local service outside every target: the canary's network call.
        Step::Spawn {
            name: "service",
            args: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                SERVICE_PORT.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--directory".into(),
                tmp.to_string_lossy().into_owned(),
            ],
            ready: None,
        },
        Step::Run {
            args: cli(&["probe"]),
        },
        // `run` execs the command in place, so this process becomes the canary.
        Step::Spawn {
            name: "canary",
            args: cli(&[
                "run",
                "canary",
                "--",
                &kp,
                "canary",
                "--dir",
                &path("canary"),
                "--service",
                &format!("127.0.0.1:{SERVICE_PORT}"),
            ]),
            ready: None,
        },
        Step::Sleep(Duration::from_secs(2)),
        Step::Run {
            args: cli(&["status"]),
        },
        Step::Show {
            dir: tmp.join("canary"),
            prefix: "net-",
        },
        // Level 2: what this kernel can revoke, then degrade the canary.
        Step::Run {
            args: cli(&["capabilities"]),
        },
        Step::RunMayFail {
            args: cli(&[
                "degrade",
                "canary",
                "--revoke",
                "fs.write,exec",
                "--allow-write",
                &path("canary"),
                "--reason",
                "demo",
            ]),
            why: "fs.write and exec need BPF LSM; without it the request is refused whole and nothing changes (`cargo xtask demo --vm` has it)",
        },
        // Enforceable everywhere (cgroup hooks): the canary's calls to its
        // service are refused, counted, sampled and alerted.
        Step::Run {
            args: cli(&["degrade", "canary", "--revoke", "net.connect", "--reason", "demo"]),
        },
        Step::Sleep(Duration::from_secs(1)),
        Step::Show {
            dir: tmp.join("canary"),
            prefix: "net-",
        },
        Step::Run {
            args: cli(&["status"]),
        },
        Step::Run {
            args: cli(&["journal"]),
        },
        Step::RunMayFail {
            args: cli(&["isolate", "canary", "--verify", "--reason", "demo"]),
            why: "on a kernel without BPF LSM, unix and packet sockets stay OPEN and verify says so (exit 1)",
        },
        Step::Sleep(Duration::from_secs(1)),
        Step::Show {
            dir: tmp.join("canary"),
            prefix: "net-",
        },
        Step::Run {
            args: cli(&["status"]),
        },
        Step::Run {
            args: cli(&["stop", "canary", "--reason", "demo"]),
        },
        Step::Run {
            args: cli(&["journal", "--verify"]),
        },
        Step::Run {
            args: cli(&["journal"]),
        },
        Step::Stop { name: "canary" },
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
        Step::RunMayFail { args, why } => {
            let (status, _) = run_foreground(&args)?;
            if !status.success() {
                println!("demo: exit {status}: {why}");
            }
        }
        Step::Show { dir, prefix } => {
            let mut files: Vec<PathBuf> = fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
                .collect();
            files.sort();
            for f in files {
                let text = fs::read_to_string(&f).unwrap_or_default();
                println!("{}: {}", f.display(), text.trim());
            }
        }
        Step::Sleep(d) => {
            println!("$ sleep {}", d.as_secs_f32());
            thread::sleep(d);
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
