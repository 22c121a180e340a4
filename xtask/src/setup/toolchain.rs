//! Setup steps for the Rust side: the nightly toolchain, its `rust-src`
//! component, and bpf-linker built against nightly's own libLLVM.

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::Outcome;
use crate::proc::{output_ok, run_logged};

/// bpf-linker release built by setup (see shared/notes/platform.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM feature of bpf-linker matching the nightly toolchain's LLVM.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub(super) fn nightly(log: &Path) -> Result<Outcome<()>> {
    let list = output_ok(Command::new("rustup").args(["toolchain", "list"])).ok_or_else(|| {
        anyhow!("`rustup toolchain list` failed; is rustup installed and on PATH?")
    })?;
    if list
        .lines()
        .any(|l| l.starts_with("nightly-") || l.starts_with("nightly "))
    {
        return Ok(Outcome::present(()));
    }
    run_logged(
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
        log,
    )
    .context("installing the nightly toolchain failed (offline? only crates.io, PyPI and Debian may be reachable)")?;
    Ok(Outcome::installed(()))
}

pub(super) fn rust_src(log: &Path) -> Result<Outcome<()>> {
    let installed = || {
        output_ok(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))
        .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
    };
    if installed() {
        return Ok(Outcome::present(()));
    }
    run_logged(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        log,
    )?;
    if !installed() {
        bail!("`rustup component add` succeeded but rust-src is still not listed as installed");
    }
    Ok(Outcome::installed(()))
}

/// bpf-linker at `$CACHE/bpf-linker/bin/bpf-linker`, built against the
/// nightly toolchain's own libLLVM so that its LLVM matches rustc's bitcode.
pub(super) fn bpf_linker(cache: &Path, log: &Path) -> Result<Outcome<()>> {
    let tools = cache.join("bpf-linker");
    let exe = tools.join("bin/bpf-linker");
    let works = || output_ok(Command::new(&exe).arg("--version")).map(|v| v.trim().to_owned());
    if let Some(version) = works() {
        return Ok(Outcome::present(()).note(version));
    }
    let sysroot = output_ok(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .ok_or_else(|| anyhow!("`rustc +nightly --print sysroot` failed"))?;
    let lib_dir = sysroot.join("lib");
    let mut libs: Vec<PathBuf> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .collect();
    libs.sort();
    let lib = libs.first().ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.* in {}; the nightly toolchain looks incomplete",
            lib_dir.display()
        )
    })?;
    let lib_name = lib
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", lib.display()))?;
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    // The name the linker's build wants, and the name the binary's rpath loads.
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(lib_name)] {
        force_symlink(lib, &link)?;
    }
    let mut rustflags = OsString::from("-L ");
    rustflags.push(&prefix_lib);
    run_logged(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(BPF_LINKER_LLVM_FEATURE)
            .arg("--root")
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", rustflags),
        log,
    )?;
    let version =
        works().ok_or_else(|| anyhow!("{} was installed but `--version` fails", exe.display()))?;
    Ok(Outcome::installed(()).note(version))
}

/// Replaces whatever is at `link` with a symlink to `target`.
fn force_symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}
