//! Where killpath's programs, links and maps live under bpffs, and the
//! pin generations that let an upgrade take over without a gap.
//!
//! Fail-static: maps and links are pinned, so killing the agent leaves
//! every program attached and every target's state in place.
use std::{
    fs,
    path::{Path, PathBuf},
};

use tracing::info;

use super::object::OBJECT;
use crate::error::{Error, Result};

/// Default bpffs directory for killpath's pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/killpath";

/// Subdirectories of a generation: pinned maps, links of host-wide hooks,
/// loaded programs, per-target cgroup links, per-netdev TC links.
pub const SUBDIRS: [&str; 5] = ["maps", "links", "progs", "targets", "netdevs"];

/// Mounts bpffs at /sys/fs/bpf unless some bpffs already covers `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if super::mounts::of_type("bpf")?.iter().any(|m| dir.starts_with(&m.dir)) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Err(Error::Kernel(format!("{} is not on a bpffs mount", dir.display())));
    }
    fs::create_dir_all(root).map_err(Error::io("creating /sys/fs/bpf"))?;
    // bpffs is not mounted on the build hosts (see platform notes); pins need it.
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| Error::Kernel(format!("mounting bpffs at /sys/fs/bpf: {e}")))?;
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Pin of a map in a generation.
pub fn map_pin(gen: &Path, name: &str) -> PathBuf {
    gen.join("maps").join(name)
}

/// Pin of a host-wide hook's link in a generation.
pub fn link_pin(gen: &Path, prog: &str) -> PathBuf {
    gen.join("links").join(prog)
}

/// Pin of a loaded (not necessarily attached) program in a generation.
pub fn prog_pin(gen: &Path, name: &str) -> PathBuf {
    gen.join("progs").join(name)
}

/// Directory of one target's cgroup links in a generation.
pub fn target_dir(gen: &Path, cgroup_id: u64) -> PathBuf {
    gen.join("targets").join(cgroup_id.to_string())
}

/// Pins live in one directory per build of the eBPF object and size of
/// its marks map: `<pin-dir>/gen-<sha256 of the object and the size, 16
/// hex>`. A restart of the same build under the same kernel limits reuses
/// its generation; a new build (whose maps or programs may differ in
/// layout), or a marks map that must grow (`marks_capacity`: a pinned map
/// keeps the size it was created with), gets a new generation, takes over
/// the old one's target states and marks, attaches its own programs, and
/// only then retires the old generation, so enforcement never lapses.
pub fn generation_dir(pin_dir: &Path) -> PathBuf {
    use super::marks_capacity::{capacity_for, TaskLimit};
    generation_for(pin_dir, capacity_for(TaskLimit::read()))
}

/// [`generation_dir`] for a marks map of `marks` entries.
pub fn generation_for(pin_dir: &Path, marks: u32) -> PathBuf {
    use sha2::Digest as _;
    let hash = sha2::Sha256::new().chain_update(OBJECT).chain_update(marks.to_le_bytes()).finalize();
    pin_dir.join(format!("gen-{}", &hex::encode(hash)[..16]))
}

/// Every generation under `pin_dir` (the current build's first, if present),
/// plus `pin_dir` itself if it holds a pre-generation layout.
pub fn generations(pin_dir: &Path) -> Vec<PathBuf> {
    let current = generation_dir(pin_dir);
    let mut out: Vec<PathBuf> = current.exists().then(|| current.clone()).into_iter().collect();
    if let Ok(rd) = fs::read_dir(pin_dir) {
        let mut others: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p != &current && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gen-"))).collect();
        others.sort();
        out.extend(others);
    }
    if pin_dir.join("maps").exists() {
        out.push(pin_dir.to_owned());
    }
    out
}

/// Creates a generation's subdirectories.
pub fn create_generation(gen: &Path) -> Result<()> {
    for sub in SUBDIRS {
        fs::create_dir_all(gen.join(sub)).map_err(Error::io(format!("creating {}", gen.join(sub).display())))?;
    }
    Ok(())
}

/// Removes an old generation's pins (its programs detach as the last
/// references go). For the legacy layout only killpath's subdirectories go.
pub fn retire(dir: &Path, pin_dir: &Path) -> Result<()> {
    if dir == pin_dir {
        for sub in SUBDIRS {
            let d = dir.join(sub);
            if d.exists() {
                fs::remove_dir_all(&d).map_err(Error::io(format!("removing {}", d.display())))?;
            }
        }
        Ok(())
    } else {
        fs::remove_dir_all(dir).map_err(Error::io(format!("removing {}", dir.display())))
    }
}

/// Removes every pin under `pin_dir`: detaches the programs and frees the
/// maps once no process holds them. Used by `agent --unpin` and tests.
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).map_err(Error::io(format!("removing {}", pin_dir.display())))?;
    }
    Ok(())
}
