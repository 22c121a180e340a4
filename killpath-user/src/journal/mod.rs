//! The action journal: an append-only file of hash-chained JSON lines.
//!
//! Each line is one [`Record`]. Its `hash` is the hex SHA-256 of the compact JSON of the
//! record without `hash` (the *body*); the written line is that body with its final `}`
//! replaced by `,"hash":"<hex>"}` and a trailing newline. Every body carries the previous
//! record's hash, so editing a byte, removing, inserting or reordering lines is detected by
//! [`verify_file`] from the file alone. [`Journal::append`] writes a line with a single
//! `write(2)` and `fdatasync`s before returning, so callers write the intent before acting
//! and acknowledge only after the result record is durable.
//!
//! - [`record`]: what a line holds; [`chain`]: verification;
//!   [`import`]: the fallback journal; here: the open, locked, appending file.
mod chain;
mod import;
mod record;
#[cfg(test)]
mod tests;

use chain::*;
pub use chain::{Problem, VerifyReport};
pub use import::import_fallback;
use record::*;
pub use record::{Actor, Entry, Phase, Record};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// `prev_hash` of the first record.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// What precedes the hash at the end of every line.
const HASH_KEY: &str = ",\"hash\":\"";
/// Length of `,"hash":"<64 hex>"}`.
const SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// Errors of the journal; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: cannot {op}: {source}", .path.display())]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("journal {} is locked by another process", .path.display())]
    Locked { path: PathBuf },
    /// The file failed verification; the message quotes the first problem.
    #[error("journal {} failed verification: {} ({} problem(s))", .path.display(),
        .problems.first().map_or("", |p| p.message.as_str()), .problems.len())]
    Corrupt { path: PathBuf, problems: Vec<Problem> },
    #[error("journal {}: an earlier write or sync failed; reopen it to re-verify", .path.display())]
    Poisoned { path: PathBuf },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { path: path.to_owned(), op, source }
}

/// What [`Journal::open`] found and repaired.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Bytes of a torn final line that were removed (0 if none).
    pub truncated_bytes: u64,
    /// Intents with no result pointing at them: the agent died mid-action.
    pub dangling_intents: Vec<Record>,
}

/// Opens `path` read+append and takes an exclusive flock, making sure the locked file is
/// still the one at `path` (an importer may have renamed it meanwhile). `None` only if
/// `create` is false and the file does not exist.
fn lock_path(path: &Path, create: bool) -> Result<Option<Flock<File>>, JournalError> {
    for _ in 0..8 {
        let opened = OpenOptions::new().read(true).append(true).create(create).mode(0o600).open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, "open")(e)),
        };
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
            Errno::EWOULDBLOCK => JournalError::Locked { path: path.to_owned() },
            errno => io_err(path, "lock")(errno.into()),
        })?;
        let held = file.metadata().map_err(io_err(path, "stat"))?;
        match fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path, "stat")(e)),
        }
        debug!(path = %path.display(), "journal file replaced while locking it; retrying");
    }
    Err(io_err(path, "lock")(io::Error::other("the file keeps being replaced")))
}

/// Makes a directory entry change (create, rename) in `path`'s parent durable.
fn sync_parent(path: &Path) -> Result<(), JournalError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "sync directory"))
}

/// An open journal holding an exclusive flock on its file.
#[derive(Debug)]
pub struct Journal {
    file: Flock<File>,
    path: PathBuf,
    next_seq: u64,
    last_hash: String,
    /// File length after the last durable append.
    len: u64,
    /// Set when a write or sync failed: the file state is unknown until reopened.
    poisoned: bool,
}

impl Journal {
    /// Opens or creates `path` (parent dirs 0700, file 0600), takes an exclusive flock
    /// ([`JournalError::Locked`] if another process holds it) and verifies the whole chain.
    /// A torn final line (crash mid-write, never acknowledged) is truncated and reported;
    /// any other problem is [`JournalError::Corrupt`] — a tampered journal is never repaired.
    pub fn open(path: &Path) -> Result<(Journal, Recovery), JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir, "create directory"))?;
        }
        let file = lock_path(path, true)?.ok_or_else(|| io_err(path, "open")(io::ErrorKind::NotFound.into()))?;
        let (mut intents, mut last) = (BTreeMap::new(), None);
        let scan = scan(&file, path, |_, _, record| {
            let Some(r) = record else { return };
            last = Some((r.seq, r.hash.clone()));
            match r.entry.phase {
                Phase::Intent => {
                    intents.insert(r.seq, r);
                }
                Phase::Result => {
                    if let Some(seq) = r.entry.intent_seq {
                        intents.remove(&seq);
                    }
                }
                Phase::Event => {}
            }
        })?;
        scan.fatal(path)?;
        if scan.torn_bytes > 0 {
            warn!(path = %path.display(), bytes = scan.torn_bytes, "truncating torn final journal line");
            file.set_len(scan.good_len).map_err(io_err(path, "truncate"))?;
            file.sync_all().map_err(io_err(path, "sync"))?;
        }
        if scan.good_len == 0 {
            sync_parent(path)?;
        }
        let dangling_intents: Vec<Record> = intents.into_values().collect();
        for r in &dangling_intents {
            warn!(path = %path.display(), seq = r.seq, action = %r.entry.action, "intent without result: interrupted action");
        }
        let (last_seq, last_hash) = last.unwrap_or_else(|| (0, ZERO_HASH.to_owned()));
        let journal = Journal { file, path: path.to_owned(), next_seq: last_seq + 1, last_hash, len: scan.good_len, poisoned: false };
        Ok((journal, Recovery { truncated_bytes: scan.torn_bytes, dangling_intents }))
    }

    /// Appends one record with a single `write(2)` and `fdatasync`s: durable on return.
    /// After any write or sync failure the journal refuses further appends until reopened.
    pub fn append(&mut self, entry: Entry) -> Result<Record, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned { path: self.path.clone() });
        }
        let time_unix_us = now_us();
        let body = Body { seq: self.next_seq, time_unix_us, time: rfc3339(time_unix_us), prev_hash: self.last_hash.clone(), entry };
        let encoded = serde_json::to_vec(&body).map_err(io::Error::from);
        let mut line = encoded.map_err(io_err(&self.path, "encode record"))?;
        let hash = hex::encode(Sha256::digest(&line));
        line.pop(); // the body's closing '}'
        line.extend_from_slice(HASH_KEY.as_bytes());
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}\n");
        if let Err(e) = self.write_durably(&line) {
            self.poisoned = true;
            // Best effort: drop any partial line so a later reopen sees a clean tail.
            if let Err(undo) = self.file.set_len(self.len) {
                warn!(path = %self.path.display(), error = %undo, "cannot undo failed journal write");
            }
            return Err(e);
        }
        self.next_seq += 1;
        self.last_hash.clone_from(&hash);
        self.len += line.len() as u64;
        Ok(body.seal(hash))
    }

    fn write_durably(&self, line: &[u8]) -> Result<(), JournalError> {
        let written = loop {
            match (&*self.file).write(line) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(io_err(&self.path, "write"))?,
            }
        };
        if written != line.len() {
            let short = format!("short write: {written} of {} bytes", line.len());
            return Err(io_err(&self.path, "write")(io::Error::other(short)));
        }
        self.file.sync_data().map_err(io_err(&self.path, "fdatasync"))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seq of the last record (0 if the journal is empty).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
}

/// Opens `path` with [`Journal::open`], appends `entry` durably and closes it.
pub fn append_to_file(path: &Path, entry: Entry) -> Result<Record, JournalError> {
    let (mut journal, _) = Journal::open(path)?;
    journal.append(entry)
}

/// Verifies any journal file offline without modifying it or taking its lock. `Err` only
/// for I/O. A line being appended at that very moment can show up as a torn tail, so audit
/// a copy or a quiescent file.
pub fn verify_file(path: &Path) -> Result<VerifyReport, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let scan = scan(&file, path, |_, _, _| {})?;
    Ok(VerifyReport { path: path.to_owned(), records: scan.records, ok: scan.problems.is_empty(), problems: scan.problems })
}

/// Reads the records with `seq > after_seq`, verifying the whole chain: any problem is an
/// error naming its line. An incomplete final line (a write in progress) is not yet a
/// record and is left out.
pub fn read_records(path: &Path, after_seq: u64) -> Result<Vec<Record>, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut records = Vec::new();
    let scan = scan(&file, path, |_, _, r| records.extend(r.filter(|r| r.seq > after_seq)))?;
    scan.fatal(path)?;
    Ok(records)
}
