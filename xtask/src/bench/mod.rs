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
//!
//! One file per benchmark ([`fork_bomb`], [`isolate`], [`stop_single`],
//! [`stop_flood`], [`confined_flood`], [`throttle`], [`overhead`], [`overhead_vm`], [`exposure`], [`lease`], [`tripwire_cost`], [`trail_net`], [`trail_cost`], [`scale`]); [`section`] and [`report`] hold the results
//! and their rendering, [`sandbox`] the agent's sandbox, [`helper`] the
//! child processes.

use std::{
    env, fs,
    process::ExitCode,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{proc, setup};
use common::read_trimmed;

mod common;
mod confined_flood;
mod exposure;
mod fork_bomb;
mod helper;
mod iperf;
mod isolate;
mod lease;
mod overhead;
mod overhead_vm;
mod report;
mod sandbox;
mod scale;
mod section;
mod metrics;
mod stop_flood;
mod stop_single;
mod throttle;
mod time_to_effect;
mod trail_cost;
mod trail_net;
mod tripwire_cost;

pub use helper::{helper, HelperArgs};
use report::{killpath_survivors, Results, RunInfo};
use sandbox::Sandbox;
use section::Section;

#[derive(clap::Args)]
pub struct Args {
    /// Fewer repetitions: 2 fork-bomb runs per variant (instead of 5), 30
    /// command-to-effect repetitions (instead of 100), 3 overhead repetitions
    /// (instead of 5).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (hard_stop_fork_bomb, isolate, stop_single,
    /// stop_flood, confined_flood, metrics, throttle, overhead, overhead_vm, lease, exposure, tripwire_cost, trail_net, trail_cost, scale, time_to_effect); repeatable. Default: all. The
    /// results then go to bench/RESULTS-only.md and results-only.json, so
    /// the full run's files stay as they are.
    #[arg(long)]
    only: Vec<String>,
}

/// Repetitions of each benchmark.
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
    sb.kill_on_interrupt()?;
    println!(
        "bench: sandbox {} (cgroup {}, pins {})",
        sb.tmp().display(),
        sb.parent().display(),
        sb.pin_dir().display()
    );
    let mut sections = Vec::new();
    match sb.start_agent() {
        Ok(()) => {
            type Bench = fn(&mut Sandbox, &Params, &mut Section) -> Result<()>;
            let all: &[(&'static str, Bench)] = &[
                ("hard_stop_fork_bomb", fork_bomb::hard_stop_fork_bomb),
                ("isolate", isolate::isolate),
                ("stop_single", stop_single::stop_single),
                ("stop_flood", stop_flood::stop_flood),
                ("metrics", metrics::metrics),
                ("confined_flood", confined_flood::confined_flood),
                ("throttle", throttle::throttle),
                ("overhead", overhead::overhead),
                ("lease", lease::lease),
                ("exposure", exposure::exposure),
                ("tripwire_cost", tripwire_cost::tripwire_cost),
                ("trail_net", trail_net::trail_net),
                ("scale", scale::scale),
                ("time_to_effect", time_to_effect::time_to_effect),
                ("trail_cost", trail_cost::trail_cost),
            ];
            for &(id, f) in all {
                if args.only.is_empty() || args.only.iter().any(|o| o == id) {
                    sections.push(run_section(id, |s| f(&mut sb, &params, s)));
                }
            }
        }
        Err(e) => {
            let mut s = Section::new("agent", "Agent start");
            s.error = Some(format!("{e:#}"));
            sections.push(s);
        }
    }
    // In the VM (a boot of its own), last, with the host's agent stopped:
    // the emulated CPUs share this machine's.
    if args.only.is_empty() || args.only.iter().any(|o| o == "overhead_vm") {
        let _ = sb.set_agent(false);
        sections.push(run_section("overhead_vm", |s| overhead_vm::overhead_vm(&env, &kp, &params, s)));
    }
    let keep = sections.iter().any(|s| s.error.is_some());
    sb.keep_tmp(keep);
    drop(sb);
    if killpath_sandbox::interrupt::interrupted() {
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
    let partial = !args.only.is_empty();
    let json_path = dir.join(if partial { "results-only.json" } else { "results.json" });
    let md_path = dir.join(if partial { "RESULTS-only.md" } else { "RESULTS.md" });
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
fn run_section(id: &'static str, f: impl FnOnce(&mut Section) -> Result<()>) -> Section {
    let mut section = Section::new(id, "");
    let start = Instant::now();
    let load = read_trimmed("/proc/loadavg");
    println!("bench: {id} ...");
    if let Err(e) = f(&mut section) {
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
