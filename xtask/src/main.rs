//! Developer and CI tasks for killpath (`cargo xtask <command>`).
//!
//! Every command first runs `setup`, which installs (once, cached)
//! everything the build and the tests need: the nightly `rust-src`
//! component, bpf-linker built against nightly's own LLVM, Debian packages,
//! virtme-ng and a Debian kernel for the BPF-LSM VM.

mod bench;
mod build;
mod demo;
mod proc;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer and CI tasks for killpath.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install (once, cached) the toolchain pieces, packages, VM tools and VM kernel.
    Setup,
    /// Run setup, then build the workspace and its tests (embeds the eBPF object).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run setup and build, then the unit, host-integration and VM test tiers.
    Test(test::Args),
    /// Boot the BPF-LSM VM and run a command inside it (debugging aid).
    Vm {
        /// The command to run in the guest, e.g. `cargo xtask vm -- uname -r`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Run setup and build, then a short agent/canary demonstration.
    Demo(demo::Args),
    /// Run setup and a release build, then the benchmarks; writes bench/RESULTS.md and bench/results.json.
    Bench(bench::Args),
    /// Child processes of `bench` (a subreaper for fork bombs, a syscall loop).
    #[command(hide = true)]
    BenchHelper(bench::HelperArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|_| ExitCode::SUCCESS),
        Command::Build { release } => setup::run()
            .and_then(|env| build::run(&env, release))
            .map(|()| ExitCode::SUCCESS),
        Command::Test(args) => test::run(&args),
        Command::Vm { command } => setup::run().and_then(|env| vm::run_command(&env, &command)),
        Command::Demo(args) => demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&args),
        Command::BenchHelper(args) => bench::helper(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
