//! Crash-safe file replacement: a reader sees the old file or the new
//! one, never a torn mix, and the new one survives a power cut once this
//! returns.
use std::{fs, io::Write, path::Path};

use crate::error::{Error, Result};

/// Writes `bytes` to `path`: temp file, fsync, rename over `path`, fsync
/// the directory (so the rename itself is durable).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(Error::io(format!("writing {}", path.display())))
}
