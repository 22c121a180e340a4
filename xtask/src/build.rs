//! `cargo xtask build`: builds the workspace and its test binaries with
//! bpf-linker on PATH (killpath-user's build script builds the eBPF object).

use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{proc, setup::Env};

/// The eBPF crate builds only for bpfel-unknown-none, through aya-build in
/// killpath-user's build script; it is never built for the host.
pub const EBPF_PACKAGE: &str = "killpath-ebpf";

/// Builds the workspace, then compiles (without running) every test target.
pub fn run(env: &Env, release: bool) -> Result<()> {
    let start = Instant::now();
    for sub in [&["build"][..], &["test", "--no-run"][..]] {
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(["--workspace", "--exclude", EBPF_PACKAGE]);
        if release {
            args.push("--release");
        }
        println!("build: cargo {}", args.join(" "));
        let mut cmd = env.cargo()?;
        cmd.args(&args);
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{}`", proc::describe(&cmd)))?;
        if !status.success() {
            bail!("`cargo {}` failed ({status})", args.join(" "));
        }
    }
    println!("build: done in {}", proc::elapsed(start));
    Ok(())
}
