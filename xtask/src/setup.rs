//! `cargo xtask setup`: installs, once and cached, everything the build and the
//! tests need. Each step checks first and is skipped when already present,
//! prints one line, and on failure says which step failed and what to do.
//! Long outputs go to `$CACHE/logs/<step>.log`.

use std::{
    env,
    ffi::OsString,
    fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::proc::{self, output_ok, run_logged};

/// bpf-linker release built by setup (see shared/notes/platform.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM feature of bpf-linker matching the nightly toolchain's LLVM.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

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
    // The guest runs the host's udevd to create /dev/virtio-ports/virtme.*;
    // without them vng falls back to the serial console, prints nothing
    // without -v and exits 255 whatever the command returned.
    "udev",
];

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

fn vmlinuz(cache: &Path, version: &str) -> PathBuf {
    cache
        .join("vm/root/boot")
        .join(format!("vmlinuz-{version}"))
}

/// Runs every setup step and returns what the other commands need.
pub fn run() -> Result<Env> {
    let start = Instant::now();
    let root = workspace_root()?;
    let cache = cache_dir()?;
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache directory {}", cache.display()))?;
    let logs = cache.join("logs");
    let mut apt = Apt {
        updated: false,
        log: logs.join("apt.log"),
    };

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
        "the recipe is `bpf_linker` in xtask/src/setup.rs (needs crates.io and the nightly toolchain's libLLVM); \
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

fn nightly(log: &Path) -> Result<Outcome<()>> {
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

fn rust_src(log: &Path) -> Result<Outcome<()>> {
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
fn bpf_linker(cache: &Path, log: &Path) -> Result<Outcome<()>> {
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

/// apt state shared by the steps that use it: `apt-get update` runs at most once.
struct Apt {
    updated: bool,
    log: PathBuf,
}

impl Apt {
    fn update(&mut self) -> Result<()> {
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

fn apt_packages(apt: &mut Apt) -> Result<Outcome<()>> {
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

fn virtme_ng(log: &Path) -> Result<Outcome<PathBuf>> {
    if let Some(vng) = find_vng() {
        return Ok(Outcome::present(vng.clone()).note(vng.display().to_string()));
    }
    let pip = |extra: &[&str]| {
        run_logged(
            Command::new("python3")
                .args(["-m", "pip", "install", "--disable-pip-version-check"])
                .args(extra)
                .arg("virtme-ng"),
            log,
        )
    };
    if let Err(e) = pip(&[]) {
        // Debian's own python3 refuses pip installs outside a venv (PEP 668).
        if fs::read_to_string(log)
            .unwrap_or_default()
            .contains("externally-managed-environment")
        {
            pip(&["--break-system-packages"])?;
        } else {
            return Err(e);
        }
    }
    let vng = find_vng().ok_or_else(|| {
        anyhow!("pip installed virtme-ng but no working `vng` was found on PATH or in Python's scripts directory")
    })?;
    Ok(Outcome::installed(vng.clone()).note(vng.display().to_string()))
}

/// Debian's generic 6.1 kernel, extracted (not installed) into
/// `$CACHE/vm/root`, with its modules visible at `/lib/modules/<version>`.
fn vm_kernel(cache: &Path, apt: &mut Apt) -> Result<Outcome<String>> {
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

/// Mounts bpffs at /sys/fs/bpf unless it is mounted; returns whether it mounted.
pub fn ensure_bpffs() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
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
