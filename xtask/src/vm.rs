//! The BPF-LSM VM: Debian's generic 6.1 kernel booted by virtme-ng under
//! software emulation (KVM hangs at boot on the CI machines), sharing the
//! host's root filesystem read-only so host-built binaries run unchanged.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::{
    proc::{self, output_ok, shell_quote},
    setup::Env,
};

/// How long one VM run may take before vng and qemu are killed. A boot takes
/// ~8 s and a short test run 20-25 s under software emulation.
pub const TIMEOUT: Duration = Duration::from_mins(40);

/// A `vng` command that boots the VM kernel and runs `exec` (a shell command
/// line) in the guest; each of `rwdirs` is writable from the guest.
pub fn vng_command(env: &Env, exec: &str, rwdirs: &[&Path]) -> Command {
    let help = output_ok(Command::new(&env.vng).arg("--help")).unwrap_or_default();
    let mut cmd = Command::new(&env.vng);
    cmd.arg("--disable-kvm").arg("--run").arg(env.vmlinuz());
    if help.contains("--memory") {
        cmd.args(["--memory", "2G"]);
    }
    if help.contains("--cpus") {
        cmd.args(["--cpus", "2"]);
    }
    if help.contains("--cwd") {
        cmd.arg("--cwd").arg(&env.root);
    }
    // The guest kernel's messages in the console log, and a backtrace of
    // every CPU at a soft lockup: what a guest that stops making progress
    // leaves behind (its own test log then stops too).
    if help.contains("--verbose") {
        cmd.arg("--verbose");
    }
    if help.contains("--append") {
        cmd.args(["--append", "softlockup_all_cpu_backtrace=1"]);
    }
    for dir in rwdirs {
        cmd.arg("--rwdir").arg(dir);
    }
    cmd.arg("--exec").arg(exec).current_dir(&env.root);
    cmd
}

/// How many earlier results directories of each kind are kept.
const KEEP_RESULTS: usize = 10;

/// A fresh directory `target/vm-results/<label>-<timestamp>` for one VM run;
/// older ones beyond the last [`KEEP_RESULTS`] are removed.
pub fn fresh_results_dir(env: &Env, label: &str) -> Result<PathBuf> {
    let parent = env.root.join("target/vm-results");
    prune(&parent, label);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let dir = parent.join(format!("{label}-{stamp}"));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes all but the newest `KEEP_RESULTS` `<label>-<timestamp>` directories.
fn prune(parent: &Path, label: &str) {
    let prefix = format!("{label}-");
    let mut old: Vec<(u128, PathBuf)> = fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let stamp = p
                .file_name()?
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((stamp, p))
        })
        .collect();
    old.sort();
    let excess = old.len().saturating_sub(KEEP_RESULTS);
    for (_, dir) in old.into_iter().take(excess) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// `cargo xtask vm -- <command...>`: boots the VM, runs the command with the
/// terminal attached, and exits with vng's exit code.
pub fn run_command(env: &Env, command: &[String]) -> Result<ExitCode> {
    let line = command
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = vng_command(env, &line, &[]);
    println!("vm: {}", proc::describe(&cmd));
    let start = Instant::now();
    let (status, output) = proc::run_tee(&mut cmd)?;
    if !output.is_empty() && !output.ends_with('\n') {
        println!();
    }
    println!(
        "vm: vng exited with {status} after {}",
        proc::elapsed(start)
    );
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1);
    Ok(ExitCode::from(code))
}
