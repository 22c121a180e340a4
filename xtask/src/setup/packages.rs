//! Setup steps for the host's packages: Debian packages through apt, and
//! virtme-ng (the VM runner) through pip.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, Context as _, Result};

use super::Outcome;
use crate::proc::{output_ok, run_logged};

/// Debian packages the build, the VM and the tests need.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "stress-ng",
    "iperf3",
    "curl",
    "dnsutils",
    "netcat-openbsd",
    "bpftool",
    "iproute2",
    "procps",
    "util-linux",
    "iputils-ping",
    "python3-pip",
    // `cargo xtask bench`: the nftables alternative to isolate.
    "nftables",
    // tests/integration/service: `systemd-analyze verify` of the unit,
    // the completion scripts' syntax (zsh -n, fish --no-execute), `man -l`
    // of the pages, `setpriv` (util-linux) for the unit's capabilities.
    "systemd",
    "zsh",
    "fish",
    "man-db",
    // The metrics tests: `promtool check metrics|rules`, `promtool test
    // rules` and a real Prometheus server scraping the agent.
    "prometheus",
    // The guest runs the host's udevd to create /dev/virtio-ports/virtme.*;
    // without them vng falls back to the serial console, prints nothing
    // without -v and exits 255 whatever the command returned.
    "udev",
    // tests/integration/names: a real container adopted by its id.
    "runc",
];

/// apt state shared by the steps that use it: `apt-get update` runs at most once.
pub(super) struct Apt {
    updated: bool,
    pub(super) log: PathBuf,
}

impl Apt {
    /// A fresh state writing apt's output to `log`.
    pub(super) fn new(log: PathBuf) -> Self {
        Self { updated: false, log }
    }

    pub(super) fn update(&mut self) -> Result<()> {
        if !self.updated {
            run_logged(Command::new("apt-get").arg("update"), &self.log)?;
            self.updated = true;
        }
        Ok(())
    }
}

fn dpkg_installed(package: &str) -> bool {
    output_ok(Command::new("dpkg").args(["-s", package])).is_some_and(|out| {
        out.lines()
            .any(|l| l.trim() == "Status: install ok installed")
    })
}

pub(super) fn apt_packages(apt: &mut Apt) -> Result<Outcome<()>> {
    let pip_works = output_ok(Command::new("python3").args(["-m", "pip", "--version"])).is_some();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !(*p == "python3-pip" && pip_works))
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::present(()));
    }
    apt.update()?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &apt.log,
    )
    .with_context(|| format!("could not install: {}", missing.join(" ")))?;
    Ok(Outcome::installed(()).note(missing.join(" ")))
}

/// Finds a working `vng`: on PATH, else in Python's scripts directory.
fn find_vng() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = which::which("vng").into_iter().collect();
    if let Some(dir) = output_ok(Command::new("python3").args([
        "-c",
        "import sysconfig;print(sysconfig.get_path('scripts'))",
    ])) {
        candidates.push(PathBuf::from(dir.trim()).join("vng"));
    }
    // pip's --user installs land here when not running as root.
    if let Some(home) = env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin/vng"));
    }
    candidates
        .into_iter()
        .find(|c| output_ok(Command::new(c).arg("--version")).is_some())
}

pub(super) fn virtme_ng(log: &Path) -> Result<Outcome<PathBuf>> {
    if let Some(vng) = find_vng() {
        return Ok(Outcome::present(vng.clone()).note(vng.display().to_string()));
    }
    pip_install(&["virtme-ng"], log)?;
    let vng = find_vng().ok_or_else(|| {
        anyhow!("pip installed virtme-ng but no working `vng` was found on PATH or in Python's scripts directory")
    })?;
    Ok(Outcome::installed(vng.clone()).note(vng.display().to_string()))
}

/// Python packages the tests run (module name, pip package):
/// tests/integration/service validates the DaemonSet with kubernetes-validate.
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes_validate", "kubernetes-validate")];

pub(super) fn pip_packages(log: &Path) -> Result<Outcome<()>> {
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .filter(|(module, _)| {
            output_ok(Command::new("python3").args(["-c", &format!("import {module}")])).is_none()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::present(()));
    }
    pip_install(&missing, log)?;
    Ok(Outcome::installed(()).note(missing.join(" ")))
}

/// `pip install PACKAGES`, again with `--break-system-packages` where
/// Debian's own python3 refuses installs outside a venv (PEP 668).
fn pip_install(packages: &[&str], log: &Path) -> Result<()> {
    let pip = |extra: &[&str]| {
        run_logged(
            Command::new("python3")
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .args(extra)
                .args(packages),
            log,
        )
    };
    if let Err(e) = pip(&[]) {
        if fs::read_to_string(log)
            .unwrap_or_default()
            .contains("externally-managed-environment")
        {
            pip(&["--break-system-packages"])?;
        } else {
            return Err(e);
        }
    }
    Ok(())
}
