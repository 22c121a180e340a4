//! Builds the eBPF object (killpath-ebpf) with aya-build and embeds it in the
//! `killpath` binary. Built here rather than by xtask so that a plain
//! `cargo build`/`cargo test` always embeds an up-to-date object; a machine
//! without the toolchain gets a hard error saying what to run, never an empty
//! object that would fail at run time.
use std::{env, path::PathBuf, process::Command};

fn tools_hint() -> &'static str {
    "run `cargo xtask setup` (installs bpf-linker and the nightly rust-src component)"
}

fn cache_dir() -> Option<PathBuf> {
    env::var_os("KILLPATH_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/killpath")))
}

fn main() {
    println!("cargo:rerun-if-env-changed=KILLPATH_CACHE");
    println!("cargo:rerun-if-env-changed=PATH");
    // xtask setup installs bpf-linker into the cache; find it there too so a
    // plain `cargo build` works after setup without editing PATH.
    if let Some(bin) = cache_dir().map(|c| c.join("bpf-linker/bin")) {
        if bin.join("bpf-linker").exists() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![bin];
            paths.extend(env::split_paths(&path));
            if let Ok(joined) = env::join_paths(paths) {
                // SAFETY: build scripts are single-threaded at this point.
                unsafe { env::set_var("PATH", joined) };
            }
        }
    }
    let linker_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success());
    if !linker_ok {
        panic!("killpath: bpf-linker not found (needed to build the eBPF programs): {}", tools_hint());
    }
    let src_ok = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src")));
    if !src_ok {
        panic!("killpath: the nightly rust-src component is missing (needed for -Z build-std=core): {}", tools_hint());
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../killpath-ebpf");
    let root = root.to_str().expect("utf-8 path");
    let pkg = aya_build::Package { name: "killpath-ebpf", root_dir: root, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        panic!("killpath: building the eBPF programs failed: {e:#}\nIf the toolchain is missing, {}", tools_hint());
    }
}
