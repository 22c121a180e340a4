//! The optional journal key (`agent --journal-key FILE`): each record then
//! carries an HMAC-SHA256 of its chained hash, so a forger who rewrites the
//! file and recomputes the chain also needs the key, which lives outside the
//! state dir and is readable by root only.
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest key accepted, in bytes.
const MIN_KEY_LEN: usize = 16;

/// Errors loading a key; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("journal key {}: cannot read it: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("journal key {}: {why}", .path.display())]
    Refused { path: PathBuf, why: String },
}

/// An HMAC key, kept as the keyed MAC state (its bytes never printed).
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Reads a key to verify with (any readable file of at least 16 bytes).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        if bytes.len() < MIN_KEY_LEN {
            let why = format!("{} bytes is too short (at least {MIN_KEY_LEN}; e.g. `head -c 32 /dev/urandom > FILE`)", bytes.len());
            return Err(KeyError::Refused { path: path.to_owned(), why });
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).map_err(|e| KeyError::Refused { path: path.to_owned(), why: e.to_string() })?;
        Ok(Key(mac))
    }

    /// Reads the agent's key, refusing one the host's other users, or
    /// whoever can write the state dir, could read: a regular file owned by
    /// root, no group or other permission bits, outside `state_dir`.
    pub fn load_for_agent(path: &Path, state_dir: &Path) -> Result<Self, KeyError> {
        let refuse = |why: String| KeyError::Refused { path: path.to_owned(), why };
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if meta.uid() != 0 {
            return Err(refuse(format!("owned by uid {}, not root: chown root FILE", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!("mode {:04o} lets group or others read it: chmod 600 FILE", meta.mode() & 0o7777)));
        }
        let canon = std::fs::canonicalize(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        // The state dir may not exist yet: compare with its canonical form
        // when it does, and with the path as given in any case.
        let dirs = [std::fs::canonicalize(state_dir).ok(), Some(state_dir.to_owned())];
        if dirs.iter().flatten().any(|d| canon.starts_with(d) || path.starts_with(d)) {
            return Err(refuse(format!(
                "it is inside the state dir {}: whoever can rewrite the journal could read it there; keep it elsewhere",
                state_dir.display()
            )));
        }
        Self::read(path)
    }

    /// Hex HMAC-SHA256 of a record's hash (its 64 hex characters).
    pub fn sign(&self, hash: &str) -> String {
        hex::encode(self.mac(hash).finalize().into_bytes())
    }

    /// Whether `hmac` (hex) is this key's HMAC of `hash`, compared in constant time.
    pub fn verifies(&self, hash: &str, hmac: &str) -> bool {
        hex::decode(hmac).is_ok_and(|tag| self.mac(hash).verify_slice(&tag).is_ok())
    }

    fn mac(&self, hash: &str) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(hash.as_bytes());
        m
    }
}
