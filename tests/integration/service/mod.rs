//! Issue 15, "Running it as a service": the systemd unit (`systemd-analyze
//! verify`, its capability set tried for real), readiness through
//! `sd_notify`, the Kubernetes DaemonSet (schema-validated offline), shell
//! completions and manual pages. Each test runs the real tool; a missing
//! tool skips, which fails under KILLPATH_TEST_STRICT=1 (`cargo xtask
//! setup` installs them all).
mod completions;
mod kubernetes;
mod notify;
mod unit;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::harness::skip;

/// A file of the repository (deploy/...).
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Whether `tool` runs (`tool ARG` starts); otherwise skips.
fn have(tool: &str, arg: &str) -> bool {
    match Command::new(tool).arg(arg).output() {
        Ok(_) => true,
        Err(e) => skip(&format!("{tool} is not installed ({e}); `cargo xtask setup` installs it")),
    }
}

/// Runs a command to completion, its stdin closed.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout and stderr of a finished command, for assertion messages.
fn text(out: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
