//! `cargo xtask setup`: installs, once and cached, everything the build and the
//! tests need. Each step checks first and is skipped when already present,
//! prints one line, and on failure says which step failed and what to do.
//! Long outputs go to `$CACHE/logs/<step>.log`.
//!
//! The steps live by concern: [`toolchain`] (nightly, rust-src,
//! bpf-linker), [`packages`] (apt, virtme-ng), [`kernel`] (the VM kernel).

mod kernel;
mod packages;
mod toolchain;

use std::{
    env,
    ffi::OsString,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::proc;
use kernel::{vm_kernel, vmlinuz};
use packages::{apt_packages, pip_packages, virtme_ng, Apt};
use toolchain::{bpf_linker, nightly, rust_src};

/// What setup found or installed; every other command works from this.
pub struct Env {
    /// The workspace root.
    pub root: PathBuf,
    /// `$KILLPATH_CACHE`, else `$HOME/.cache/killpath`.
    pub cache: PathBuf,
    /// Full path of the `vng` executable (virtme-ng).
    pub vng: PathBuf,
    /// Release of the VM kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
}

impl Env {
    /// Directory holding the `bpf-linker` executable.
    pub fn linker_bin_dir(&self) -> PathBuf {
        self.cache.join("bpf-linker/bin")
    }

    /// The VM kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        vmlinuz(&self.cache, &self.kernel_version)
    }

    /// `$PATH` with the bpf-linker directory in front.
    pub fn path_with_linker(&self) -> Result<OsString> {
        let mut dirs = vec![self.linker_bin_dir()];
        dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        env::join_paths(dirs).context("joining PATH")
    }

    /// A `cargo` command run from the workspace root, with bpf-linker on PATH
    /// and the cache location passed on to build scripts.
    pub fn cargo(&self) -> Result<Command> {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root)
            .env("PATH", self.path_with_linker()?)
            .env("KILLPATH_CACHE", &self.cache);
        Ok(cmd)
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask's manifest directory has no parent"))
}

/// `$KILLPATH_CACHE`, else `$HOME/.cache/killpath`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("KILLPATH_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/killpath"))
        .ok_or_else(|| {
            anyhow!(
                "neither KILLPATH_CACHE nor HOME is set; set KILLPATH_CACHE to a cache directory"
            )
        })
}

/// Runs every setup step and returns what the other commands need.
pub fn run() -> Result<Env> {
    let start = Instant::now();
    let root = workspace_root()?;
    let cache = cache_dir()?;
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache directory {}", cache.display()))?;
    let logs = cache.join("logs");
    let mut apt = Apt::new(logs.join("apt.log"));

    step(
        "nightly toolchain",
        "install it by hand with `rustup toolchain install nightly --profile minimal` \
         (this needs the Rust distribution server; an offline machine needs it pre-installed)",
        || nightly(&logs.join("nightly.log")),
    )?;
    step(
        "rust-src",
        "run `rustup component add rust-src --toolchain nightly` by hand (needs the Rust distribution server)",
        || rust_src(&logs.join("rust-src.log")),
    )?;
    step(
        "bpf-linker",
        "the recipe is `bpf_linker` in xtask/src/setup/toolchain.rs (needs crates.io and the nightly toolchain's libLLVM); \
         the full log is logs/bpf-linker.log in the cache; delete the cache's bpf-linker directory to start over",
        || bpf_linker(&cache, &logs.join("bpf-linker.log")),
    )?;
    step(
        "apt packages",
        "run as root with access to Debian's package servers, or install the listed packages by hand",
        || apt_packages(&mut apt),
    )?;
    let vng = step(
        "virtme-ng",
        "install it by hand with `python3 -m pip install virtme-ng` and make sure `vng` is on PATH",
        || virtme_ng(&logs.join("pip.log")),
    )?;
    step(
        "python packages",
        "install them by hand with `python3 -m pip install kubernetes-validate`",
        || pip_packages(&logs.join("pip-tests.log")),
    )?;
    let kernel_version = step(
        "vm kernel",
        "needs root, Debian's package servers (`apt-get download`) and kmod (`depmod`); \
         delete the vm directory in the cache to start over",
        || vm_kernel(&cache, &mut apt),
    )?;
    step(
        "bpffs",
        "run `mount -t bpf bpf /sys/fs/bpf` as root",
        || {
            ensure_bpffs().map(|mounted| {
                if mounted {
                    Outcome::installed(()).note("mounted")
                } else {
                    Outcome::present(())
                }
            })
        },
    )?;
    println!("setup: done in {}", proc::elapsed(start));
    Ok(Env {
        root,
        cache,
        vng,
        kernel_version,
    })
}

/// The result of one step: its value, whether it had to install anything,
/// and a short note for the progress line.
struct Outcome<T> {
    value: T,
    installed: bool,
    note: String,
}

impl<T> Outcome<T> {
    fn present(value: T) -> Self {
        Self {
            value,
            installed: false,
            note: String::new(),
        }
    }

    fn installed(value: T) -> Self {
        Self {
            value,
            installed: true,
            note: String::new(),
        }
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// Runs one step and prints its line: `setup: NAME ... present` or
/// `setup: NAME ... installed in 20s`.
fn step<T>(name: &str, fix: &str, f: impl FnOnce() -> Result<Outcome<T>>) -> Result<T> {
    print!("setup: {name} ... ");
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    match f() {
        Ok(outcome) => {
            let note = if outcome.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", outcome.note)
            };
            if outcome.installed {
                println!("installed in {}{note}", proc::elapsed(start));
            } else {
                println!("present{note}");
            }
            Ok(outcome.value)
        }
        Err(e) => {
            println!("FAILED after {}", proc::elapsed(start));
            Err(e.context(format!("setup step `{name}` failed. To fix: {fix}. Cause")))
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted; returns whether it mounted.
pub fn ensure_bpffs() -> Result<bool> {
    let mounts = killpath_sandbox::mounts::read()?;
    if killpath_sandbox::mounts::is_mounted(&mounts, Path::new(killpath_sandbox::BPFFS), "bpf") {
        return Ok(false);
    }
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .context("could not run `mount`")?;
    if !out.status.success() {
        bail!(
            "`mount -t bpf bpf /sys/fs/bpf` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}
