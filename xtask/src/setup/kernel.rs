//! Setup step for the BPF-LSM VM's kernel: Debian's generic kernel
//! package, downloaded and extracted into the cache, its modules linked
//! where the guest (which shares the host's root fs) looks for them.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{packages::Apt, Outcome};
use crate::proc::{output_ok, run_logged};

pub(super) fn vmlinuz(cache: &Path, version: &str) -> PathBuf {
    cache
        .join("vm/root/boot")
        .join(format!("vmlinuz-{version}"))
}

/// Debian's generic 6.1 kernel, extracted (not installed) into
/// `$CACHE/vm/root`, with its modules visible at `/lib/modules/<version>`.
pub(super) fn vm_kernel(cache: &Path, apt: &mut Apt) -> Result<Outcome<String>> {
    let vm = cache.join("vm");
    let version_file = vm.join("version");
    let cached = fs::read_to_string(&version_file)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && vmlinuz(cache, v).is_file());
    let (version, mut installed) = match cached {
        Some(version) => (version, false),
        None => (download_kernel(cache, apt)?, true),
    };
    installed |= link_modules(&vm, &version, &apt.log)?;
    let outcome = if installed {
        Outcome::installed(version.clone())
    } else {
        Outcome::present(version.clone())
    };
    Ok(outcome.note(version))
}

/// The `linux-image-6.1.0-N-amd64` package that `linux-image-amd64` depends on.
fn kernel_package(apt: &mut Apt) -> Result<String> {
    let find = || {
        output_ok(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).and_then(
            |out| {
                out.lines()
                    .filter_map(|l| l.trim().strip_prefix("Depends:"))
                    .map(str::trim)
                    .find(|p| {
                        p.starts_with("linux-image-")
                            && p.ends_with("-amd64")
                            && !p.contains("cloud")
                    })
                    .map(str::to_owned)
            },
        )
    };
    if let Some(package) = find() {
        return Ok(package);
    }
    apt.update()?;
    find().ok_or_else(|| {
        anyhow!("`apt-cache depends linux-image-amd64` names no linux-image-*-amd64 package")
    })
}

fn download_kernel(cache: &Path, apt: &mut Apt) -> Result<String> {
    let vm = &cache.join("vm");
    let package = kernel_package(apt)?;
    let version = package
        .strip_prefix("linux-image-")
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("unexpected kernel package name {package}"))?;
    fs::create_dir_all(vm).with_context(|| format!("creating {}", vm.display()))?;
    let log = vm.join("download.log");
    let debs = |vm: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(vm)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with(&format!("{package}_"))
                        && n.to_string_lossy().ends_with(".deb")
                })
            })
            .collect();
        v.sort();
        v
    };
    if debs(vm).is_empty() {
        run_logged(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(vm),
            &log,
        )?;
    }
    let deb = debs(vm).pop().ok_or_else(|| {
        anyhow!(
            "`apt-get download {package}` left no .deb in {}",
            vm.display()
        )
    })?;
    let root = vm.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    run_logged(Command::new("dpkg").arg("-x").arg(&deb).arg(&root), &log)?;
    let image = vmlinuz(cache, &version);
    if !image.is_file() {
        bail!("{} does not contain {}", deb.display(), image.display());
    }
    fs::write(vm.join("version"), format!("{version}\n"))
        .context("recording the kernel version")?;
    Ok(version)
}

/// Makes the kernel's modules visible at `/lib/modules/<version>` (the guest
/// shares the host's root fs) and indexes them. Returns whether it did anything.
fn link_modules(vm: &Path, version: &str, log: &Path) -> Result<bool> {
    let host_dir = Path::new("/lib/modules").join(version);
    let ours = vm.join("root/lib/modules").join(version);
    let mut changed = false;
    if host_dir.symlink_metadata().is_err() {
        if !ours.is_dir() {
            bail!(
                "{} is missing; delete {} and run setup again",
                ours.display(),
                vm.display()
            );
        }
        fs::create_dir_all("/lib/modules").context("creating /lib/modules (needs root)")?;
        symlink(&ours, &host_dir)
            .with_context(|| format!("linking {} -> {}", host_dir.display(), ours.display()))?;
        changed = true;
    }
    if changed || !host_dir.join("modules.dep").is_file() {
        run_logged(Command::new("depmod").args(["-a", version]), log)?;
        changed = true;
    }
    Ok(changed)
}
