//! `cargo xtask demo [--vm]`: starts an agent and runs the default drill on
//! a fresh canary (throttle, degrade, isolate, stop, restart from the
//! checkpoint, data check), printing the report, then verifies the
//! journal. The sequence is a plain list of [`Step`]s (see [`steps`]); the
//! same list runs on the host or, with `--vm`, inside the VM (the xtask
//! binary re-runs itself there with the hidden `--in-guest` flag).
//!
//! The agent runs in a [`Sandbox`] of its own (socket, state dir, bpffs pin
//! dir, cgroup parent), so that the demo never touches a real agent's state
//! and leaves nothing behind: at the end every task under the cgroup parent
//! is killed, the cgroups removed, and the pins (hence the demo's programs)
//! removed. The sandbox's directory is kept: it holds the drill report.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use killpath_sandbox::Sandbox;

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
    /// Start the agent in the demo's sandbox and wait until it answers.
    StartAgent,
    /// Run a command in the foreground; it must succeed.
    Run { args: Vec<String> },
    /// Stop the agent (SIGTERM, then SIGKILL).
    StopAgent,
}

/// The sandbox's tag prefix: `killpath-demo-<pid>`, also the name of its
/// directory in the temp dir.
const PREFIX: &str = "killpath-demo";
/// How long the agent may take to answer.
/// Loading and verifying every program takes ~40 s in the VM (software
/// emulation); a dead agent is noticed at once.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the agent gets to exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The demo sequence. `kp` is the killpath binary.
fn steps(kp: &Path, sandbox: &Sandbox) -> Vec<Step> {
    let kp = kp.to_string_lossy().into_owned();
    let sock = sandbox.socket().to_string_lossy().into_owned();
    let path = |p: &str| sandbox.dir().join(p).to_string_lossy().into_owned();
    let cli = |args: &[&str]| {
        let mut v = vec![kp.clone(), "--socket".into(), sock.clone()];
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    };
    vec![
        Step::StartAgent,
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
        Step::StopAgent,
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

/// Runs the steps with `target/debug/killpath` in a fresh sandbox; the
/// agent is always stopped and the sandbox torn down.
fn execute(root: &Path) -> Result<()> {
    let kp = root.join("target/debug/killpath");
    if !kp.is_file() {
        bail!("{} is missing; run `cargo xtask build`", kp.display());
    }
    for pid in killpath_sandbox::remove_stale(PREFIX) {
        println!("demo: removed the leftovers of an earlier, interrupted run (pid {pid})");
    }
    let mut sandbox = Sandbox::new(PREFIX)?;
    sandbox.keep_dir(true);
    println!("demo: working directory {}", sandbox.dir().display());
    let result = steps(&kp, &sandbox)
        .into_iter()
        .try_for_each(|step| run_step(step, &kp, &mut sandbox));
    stop_agent(&mut sandbox);
    sandbox.teardown();
    result?;
    println!("demo done");
    Ok(())
}

fn run_step(step: Step, kp: &Path, sandbox: &mut Sandbox) -> Result<()> {
    match step {
        Step::StartAgent => {
            let mut cmd = sandbox.agent_command(kp);
            println!("$ {} &", proc::describe(&cmd));
            cmd.stdin(Stdio::null());
            sandbox
                .start_agent(cmd, READY_TIMEOUT)
                .context("could not start the agent")?;
        }
        Step::Run { args } => {
            let (status, cmd) = run_foreground(&args)?;
            if !status.success() {
                bail!("`{cmd}` failed ({status})");
            }
        }
        Step::StopAgent => stop_agent(sandbox),
    }
    Ok(())
}

/// Stops the agent if it runs.
fn stop_agent(sandbox: &mut Sandbox) {
    if sandbox.agent_running() {
        println!("demo: stopping agent");
        sandbox.stop_agent(STOP_GRACE);
    }
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
