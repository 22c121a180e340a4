//! The file part of the activity trail (issue 16): the BPF LSM programs of
//! `killpath-ebpf/src/trail/files.rs` (create, write, truncate, rename,
//! unlink with the path; per-file write counters), attached only where a
//! BPF LSM hook really runs, and what `probe`, `status` and `trail` say
//! about them. Without BPF LSM nothing about files is recorded, and every
//! report says so instead of showing an empty list as if nothing happened.
use std::path::Path;

use aya::{
    maps::{Array, MapData},
    Btf, Ebpf,
};
use killpath_common::trail_files::{self, FileOffsets};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    error::Result,
    kernel::{
        btf::offset,
        object::{self, typed},
    },
};

/// Whether file events are recorded here, as `probe` and `status` report it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilesStatus {
    pub recorded: bool,
    pub detail: String,
}

/// The report for `recorded = why.is_none()`.
pub fn status(why: Option<&str>) -> FilesStatus {
    match why {
        None => FilesStatus {
            recorded: true,
            detail: "file create/write/truncate/rename/unlink recorded with their paths (BPF LSM), writes counted per file".into(),
        },
        Some(w) => FilesStatus { recorded: false, detail: format!("file activity NOT recorded ({w}): the trail has no file events on this host") },
    }
}

/// The offsets the path walk follows to cross mount points.
pub fn resolve_offsets() -> std::result::Result<FileOffsets, String> {
    let btf = crate::kernel::btf::vmlinux()?;
    Ok(FileOffsets {
        valid: 1,
        path_mnt: offset(btf, "path", "mnt")?,
        vfsmount_mnt_root: offset(btf, "vfsmount", "mnt_root")?,
        mount_mnt: offset(btf, "mount", "mnt")?,
        mount_parent: offset(btf, "mount", "mnt_parent")?,
        mount_mountpoint: offset(btf, "mount", "mnt_mountpoint")?,
    })
}

/// The file hooks of a running agent.
pub struct FileHooks {
    /// Kept open while the programs load (see the enforcer) and after.
    _offsets: Option<Array<MapData, FileOffsets>>,
    /// Why file events are not recorded here (None: they are).
    pub error: Option<String>,
}

impl FileHooks {
    /// Fills the offsets and attaches the file programs (the caller then
    /// sets `TrailConfig.files` from `error`), unless `lsm_error` (BPF LSM does not run here)
    /// or the kernel's BTF says they cannot work. Failures are reported, not
    /// fatal: the rest of the trail and every level work without them.
    pub fn attach(ebpf: &mut Ebpf, gen: &Path, loaded: &mut Vec<&'static str>, lsm_error: Option<&str>, fs_error: Option<&str>) -> Result<Self> {
        let mut offsets: Array<MapData, FileOffsets> = typed(ebpf, trail_files::OFFSETS)?;
        let error = match (lsm_error, fs_error) {
            (Some(e), _) => Some(format!("BPF LSM: {e}")),
            (None, Some(e)) => Some(format!("kernel BTF: {e}")),
            (None, None) => Self::attach_programs(ebpf, gen, loaded, &mut offsets).err(),
        };
        if let Some(e) = &error {
            warn!("trail: file activity not recorded: {e}");
        }
        Ok(Self { _offsets: Some(offsets), error })
    }

    fn attach_programs(
        ebpf: &mut Ebpf,
        gen: &Path,
        loaded: &mut Vec<&'static str>,
        offsets: &mut Array<MapData, FileOffsets>,
    ) -> std::result::Result<(), String> {
        let fo = resolve_offsets().map_err(|e| format!("kernel BTF: {e}"))?;
        offsets.set(0, fo, 0).map_err(|e| format!("updating {}: {e}", trail_files::OFFSETS))?;
        let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
        for (name, hook) in trail_files::PROGRAMS {
            if object::attach_lsm(ebpf, &btf, gen, name, hook).map_err(|e| e.to_string())? {
                loaded.push(name);
                info!(hook, "trail file hook attached and pinned");
            }
        }
        // Hooks newer kernels have (file_truncate: ftruncate(2) from 6.2;
        // 6.1 reports it at path_truncate, attached above).
        for (name, hook) in trail_files::OPTIONAL {
            match object::attach_lsm(ebpf, &btf, gen, name, hook) {
                Ok(true) => loaded.push(name),
                Ok(false) => {}
                Err(e) => info!(hook, "trail file hook not on this kernel: {e}"),
            }
        }
        Ok(())
    }
}
