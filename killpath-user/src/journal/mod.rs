//! The action journal: an append-only file of hash-chained JSON lines.
//!
//! Each line is one [`Record`]. Its `hash` is the hex SHA-256 of the compact JSON of the
//! record without `hash` (the *body*); the written line is that body with its final `}`
//! replaced by `,"hash":"<hex>"}` and a trailing newline. Every body carries the previous
//! record's hash, so editing a byte, removing, inserting or reordering lines is detected by
//! [`verify_file`] from the file alone. [`Journal::append`] writes a line with a single
//! `pwrite(2)` at the end of the last line and `fdatasync`s before returning, so callers
//! write the intent before acting and acknowledge only after the result record is durable.
//!
//! The agent keeps written zeros ahead of the last line ([`Journal::reserve`]): a record
//! then lands in blocks the file already has, and `fdatasync` flushes the data alone, no
//! size or extent change (fallocate would not do: ext4 commits the conversion of an
//! unwritten extent too). The journal ends at the first NUL byte; every reader stops there,
//! and a torn write among the zeros is a torn tail like one at the end of the file.
//!
//! With a key (`agent --journal-key`), `,"hmac":"<hex>"` follows the hash:
//! HMAC-SHA256 of the hash's 64 hex characters. The head (last seq and hash)
//! goes out with every record (see [`Observer`]) so it can be kept where the
//! host cannot write, and checked later as an [`Anchor`]. Before each append
//! the journal checks that the file still ends with the line it last wrote.
//!
//! - [`record`]: what a line holds; [`chain`]: verification;
//!   [`anchor`]: heads and anchors; [`key`]: the HMAC key;
//!   [`import`]: the fallback journal; [`rewrite`]: a file changed under the
//!   agent; here: the open, locked, appending file.
mod anchor;
mod chain;
mod import;
mod key;
mod record;
mod rewrite;
#[cfg(test)]
mod tests;

pub use anchor::{Anchor, AnchorCheck, Head};
use chain::*;
pub use chain::{Problem, VerifyOptions, VerifyReport};
pub use import::import_fallback;
pub use key::{Key, KeyError};
use record::*;
pub use record::{Actor, Entry, Phase, Record};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
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
/// What precedes the HMAC, after the hash's closing quote.
const HMAC_KEY: &str = ",\"hmac\":\"";
/// Length of `,"hmac":"<64 hex>"}`.
const HMAC_SUFFIX_LEN: usize = HMAC_KEY.len() + 64 + 2;

/// Called after every durable append with the record and the new head
/// (the agent publishes both on its events stream).
pub type Observer = Box<dyn FnMut(&Record, &Head) + Send>;

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
    /// A write or sync failed (this append's or an earlier one): the file
    /// state is unknown, nothing more is appended until it is reopened.
    /// `cause` is the first failure.
    #[error("journal {} is poisoned: {cause}; nothing more is appended until it is reopened (restart the agent to re-verify it)", .path.display())]
    Poisoned { path: PathBuf, cause: String },
}

/// What poisoned a journal, for every later refusal: the failed operation
/// and the kernel's error, without the path (the refusal names it).
fn poison_cause(e: &JournalError) -> String {
    match e {
        JournalError::Io { op, source, .. } => format!("{op} failed: {source}"),
        other => other.to_string(),
    }
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
    /// With a key: records whose HMAC does not verify, or that lost theirs.
    pub hmac_problems: Vec<Problem>,
}

/// Opens `path` read+append and takes an exclusive flock, making sure the locked file is
/// still the one at `path` (an importer may have renamed it meanwhile). `None` only if
/// `create` is false and the file does not exist.
fn lock_path(path: &Path, create: bool) -> Result<Option<Flock<File>>, JournalError> {
    for _ in 0..8 {
        // Not O_APPEND: lines are written at the logical end, ahead of which
        // the file may hold zeros (see `Journal::reserve`).
        let opened = OpenOptions::new().read(true).write(true).create(create).mode(0o600).open(path);
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
pub struct Journal {
    file: Flock<File>,
    path: PathBuf,
    next_seq: u64,
    last_hash: String,
    /// Logical length: the end of the last durable line.
    len: u64,
    /// Physical length: `len` plus the zeros kept ahead of it.
    end: u64,
    /// How many zeros to keep ahead of the tail (0: none, the file ends at its last line).
    reserve: u64,
    /// The last complete line (with its newline), as this journal wrote or
    /// read it: the file must still end with it at the next append.
    last_line: Vec<u8>,
    /// Set when a write or sync failed (what failed): the file state is
    /// unknown until reopened.
    poisoned: Option<String>,
    key: Option<Key>,
    observer: Option<Observer>,
    /// What the last append's write and sync took (see [`AppendTiming`]).
    timing: AppendTiming,
}

/// Where the last [`Journal::append`] spent its time, in microseconds:
/// encoding and `pwrite`, and `fdatasync` (for a time-to-effect breakdown).
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendTiming {
    pub write_us: u64,
    pub sync_us: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).field("head", &self.head()).field("hmac", &self.key.is_some()).finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens or creates `path` (parent dirs 0700, file 0600), takes an exclusive flock
    /// ([`JournalError::Locked`] if another process holds it) and verifies the whole chain.
    /// A torn final line (crash mid-write, never acknowledged) is truncated and reported;
    /// any other problem is [`JournalError::Corrupt`] — a tampered journal is never repaired.
    pub fn open(path: &Path) -> Result<(Journal, Recovery), JournalError> {
        Self::open_with(path, None)
    }

    /// [`Journal::open`] with an HMAC key: every record appended carries an
    /// HMAC; records already there are checked ([`Recovery::hmac_problems`]).
    pub fn open_with(path: &Path, key: Option<Key>) -> Result<(Journal, Recovery), JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir, "create directory"))?;
        }
        let file = lock_path(path, true)?.ok_or_else(|| io_err(path, "open")(io::ErrorKind::NotFound.into()))?;
        let (mut intents, mut last, mut last_line) = (BTreeMap::new(), None, Vec::new());
        let mut hmacs = HmacCheck::new(key.as_ref());
        let scan = scan(&file, path, |line, raw, record| {
            let Some(r) = record else { return };
            last = Some((r.seq, r.hash.clone()));
            last_line = [raw, b"\n"].concat();
            hmacs.see(line, &r);
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
        let (_, hmac_problems) = hmacs.finish(false);
        for p in &hmac_problems {
            warn!(path = %path.display(), "journal HMAC: {}", p.message);
        }
        let end = file.metadata().map_err(io_err(path, "stat"))?.len();
        let journal = Journal {
            file,
            path: path.to_owned(),
            next_seq: last_seq + 1,
            last_hash,
            len: scan.good_len,
            end,
            reserve: 0,
            last_line,
            poisoned: None,
            key,
            observer: None,
            timing: AppendTiming::default(),
        };
        Ok((journal, Recovery { truncated_bytes: scan.torn_bytes, dangling_intents, hmac_problems }))
    }

    /// Sets the function called after every durable append.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Where the last append spent its time.
    pub fn last_timing(&self) -> AppendTiming {
        self.timing
    }

    /// The last record written: what an anchor holds.
    pub fn head(&self) -> Head {
        Head { seq: self.next_seq - 1, hash: self.last_hash.clone() }
    }

    /// Whether records carry an HMAC.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The key records are signed with, for verification.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// Appends one record with a single `write(2)` and `fdatasync`s: durable on return.
    /// After any write or sync failure the journal refuses further appends until reopened.
    /// If the file no longer ends with the line this journal last wrote (rewritten,
    /// truncated, replaced), a `journal-rewritten` record saying so goes first.
    pub fn append(&mut self, entry: Entry) -> Result<Record, JournalError> {
        self.before_append()?;
        let rec = self.write_record(entry)?;
        self.notify(&rec);
        Ok(rec)
    }

    /// What every append checks first: a poisoned journal refuses; a file
    /// that no longer ends with the last line written gets its
    /// `journal-rewritten` record before anything else.
    fn before_append(&mut self) -> Result<(), JournalError> {
        if let Some(cause) = &self.poisoned {
            return Err(JournalError::Poisoned { path: self.path.clone(), cause: cause.clone() });
        }
        if let Some(found) = self.check_tail()? {
            let note = self.resync(found)?;
            let rec = self.write_record(note)?;
            self.notify(&rec);
        }
        Ok(())
    }

    fn notify(&mut self, rec: &Record) {
        let head = self.head();
        if let Some(observe) = self.observer.as_mut() {
            observe(rec, &head);
        }
    }

    fn write_record(&mut self, entry: Entry) -> Result<Record, JournalError> {
        let started = std::time::Instant::now();
        let (line, record) = self.encode(self.next_seq, &self.last_hash, entry)?;
        self.write_lines(&line, (1, line.len(), &record.hash), started)?;
        Ok(record)
    }

    /// The line (with its newline) and the sealed record of `entry` at
    /// `seq` after `prev_hash`.
    fn encode(&self, seq: u64, prev_hash: &str, entry: Entry) -> Result<(Vec<u8>, Record), JournalError> {
        let time_unix_us = now_us();
        let body = Body { seq, time_unix_us, time: rfc3339(time_unix_us), prev_hash: prev_hash.to_owned(), entry };
        let encoded = serde_json::to_vec(&body).map_err(io::Error::from);
        let mut line = encoded.map_err(io_err(&self.path, "encode record"))?;
        let hash = hex::encode(Sha256::digest(&line));
        line.pop(); // the body's closing '}'
        line.extend_from_slice(HASH_KEY.as_bytes());
        line.extend_from_slice(hash.as_bytes());
        line.push(b'"');
        let hmac = self.key.as_ref().map(|k| k.sign(&hash));
        if let Some(mac) = &hmac {
            line.extend_from_slice(HMAC_KEY.as_bytes());
            line.extend_from_slice(mac.as_bytes());
            line.push(b'"');
        }
        line.extend_from_slice(b"}\n");
        let mut record = body.seal(hash);
        record.hmac = hmac;
        Ok((line, record))
    }

    /// Writes `lines` (`count` whole records, the last `last_len` bytes
    /// being the last one, whose hash is `hash`) durably and moves the head
    /// past them; poisons on failure.
    fn write_lines(&mut self, lines: &[u8], (count, last_len, hash): (u64, usize, &str), started: std::time::Instant) -> Result<(), JournalError> {
        if let Err(e) = self.write_durably(lines, started) {
            // Best effort: drop any partial line so a later reopen sees a clean tail.
            if let Err(undo) = self.file.set_len(self.len) {
                warn!(path = %self.path.display(), error = %undo, "cannot undo failed journal write");
            }
            // Said as poisoned from this very failure on: the caller (a
            // stop) can tell it apart from a refusal it could retry.
            let cause = poison_cause(&e);
            self.poisoned = Some(cause.clone());
            return Err(JournalError::Poisoned { path: self.path.clone(), cause });
        }
        self.next_seq += count;
        hash.clone_into(&mut self.last_hash);
        self.len += lines.len() as u64;
        self.last_line = lines[lines.len().saturating_sub(last_len)..].to_vec();
        Ok(())
    }

    /// Appends `entries` as consecutive records with one `write(2)` and
    /// one `fdatasync` (the activity trail's batches: a record each, one
    /// flush). Durable on return, like [`Journal::append`].
    pub fn append_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<Record>, JournalError> {
        self.before_append()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let (mut seq, mut prev) = (self.next_seq, self.last_hash.clone());
        let (mut lines, mut records, mut last_len) = (Vec::new(), Vec::with_capacity(entries.len()), 0);
        for e in entries {
            let (line, rec) = self.encode(seq, &prev, e)?;
            seq += 1;
            prev.clone_from(&rec.hash);
            last_len = line.len();
            lines.extend_from_slice(&line);
            records.push(rec);
        }
        let last_hash = records.last().map(|r| r.hash.clone()).unwrap_or_default();
        self.write_lines(&lines, (records.len() as u64, last_len, &last_hash), started)?;
        for r in &records {
            self.notify(r);
        }
        Ok(records)
    }

    /// Bytes of records in the file (the zeros ahead of them not counted).
    pub fn size(&self) -> u64 {
        self.len
    }

    fn write_durably(&mut self, line: &[u8], started: std::time::Instant) -> Result<(), JournalError> {
        let written = loop {
            match self.file.write_at(line, self.len) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(io_err(&self.path, "write"))?,
            }
        };
        if written != line.len() {
            let short = format!("short write: {written} of {} bytes", line.len());
            return Err(io_err(&self.path, "write")(io::Error::other(short)));
        }
        // Inside the reserve this flushes the data blocks alone; past it,
        // the new size too.
        self.end = self.end.max(self.len + line.len() as u64);
        let syncing = std::time::Instant::now();
        let synced = self.file.sync_data().map_err(io_err(&self.path, "fdatasync"));
        self.timing = AppendTiming { write_us: (syncing - started).as_micros() as u64, sync_us: syncing.elapsed().as_micros() as u64 };
        synced
    }

    /// Keeps at least `bytes / 2` (and tops up to `bytes`) of written zeros
    /// ahead of the last line, now and at every [`Journal::top_up`]. An
    /// append that does not fit just extends the file (slower: the size is
    /// flushed too). The zeros are written and `fdatasync`ed before any
    /// record goes over them.
    pub fn reserve(&mut self, bytes: u64) -> Result<(), JournalError> {
        self.reserve = bytes;
        self.top_up().map(|_| ())
    }

    /// Writes zeros ahead of the tail when fewer than half the reserve are
    /// left; returns whether it did. A failed `fdatasync` of the zeros
    /// poisons the journal like a failed append (a failed write of them,
    /// e.g. a full disk, does not: nothing was handed to the disk). Meant for an idle moment (the agent's
    /// periodic checks): a command never waits for it, unless the reserve
    /// was used up in between.
    pub fn top_up(&mut self) -> Result<bool, JournalError> {
        if !self.top_up_due() {
            return Ok(false);
        }
        const CHUNK: usize = 64 * 1024;
        let zeros = vec![0u8; CHUNK];
        let target = self.len + self.reserve;
        let mut at = self.end;
        let written = loop {
            if at >= target {
                if let Err(e) = self.file.sync_data() {
                    // The kernel reports a writeback error once, and may
                    // have dropped the dirty pages: the zeros, or blocks
                    // the next record lands in, may not be on disk, and a
                    // later fdatasync can succeed without them. Nothing
                    // more is acknowledged until a reopen re-verifies.
                    let e = io_err(&self.path, "fdatasync zeros")(e);
                    self.poisoned = Some(poison_cause(&e));
                    break Err(e);
                }
                break Ok(());
            }
            let n = usize::try_from(target - at).map_or(CHUNK, |left| left.min(CHUNK));
            if let Err(e) = self.file.write_all_at(&zeros[..n], at) {
                break Err(io_err(&self.path, "write zeros")(e));
            }
            at += n as u64;
        };
        if let Err(e) = written {
            // Zeros written but not synced are still zeros (a record's
            // fdatasync over them flushes them with it): only the length
            // must be known, or the next append would see a changed file.
            self.end = self.file.metadata().map_or(at.max(self.end), |m| m.len());
            return Err(e);
        }
        debug!(path = %self.path.display(), from = self.end, to = target, "journal: zeros written ahead of the tail");
        self.end = target;
        Ok(true)
    }

    /// Whether the next [`Journal::top_up`] writes zeros: fewer than half
    /// the reserve left ahead of the tail (never when poisoned).
    pub fn top_up_due(&self) -> bool {
        self.poisoned.is_none() && self.reserve > 0 && self.end.saturating_sub(self.len) < self.reserve / 2
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
    verify_file_with(path, &VerifyOptions::default())
}

/// [`verify_file`], also checking an anchor, HMACs under a key, and the head
/// an agent remembers writing (see [`VerifyOptions`]).
pub fn verify_file_with(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut check = Verifier::new(opts);
    let scan = scan(&file, path, |line, _, record| {
        if let Some(r) = record {
            check.see(line, &r);
        }
    })?;
    Ok(check.finish(path, scan))
}

/// [`verify_file_with`] over the first `len` bytes of the file only: what
/// a writer published as durable (the activity trail read without the
/// agent's lock: a batch being appended past `len` is not read, so it
/// cannot show up as a torn tail); `each` sees every record read, with its
/// line number.
pub fn verify_prefix(path: &Path, len: u64, opts: &VerifyOptions, mut each: impl FnMut(u64, &Record)) -> Result<VerifyReport, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut check = Verifier::new(opts);
    let scan = scan_reader(io::Read::take(&file, len), path, |line, _, record| {
        if let Some(r) = record {
            check.see(line, &r);
            each(line, &r);
        }
    })?;
    Ok(check.finish(path, scan))
}

/// [`read_records`] (all of them) over the first `len` bytes of the file
/// only (see [`verify_prefix`]).
pub fn read_prefix(path: &Path, len: u64) -> Result<Vec<Record>, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut records = Vec::new();
    let scan = scan_reader(io::Read::take(&file, len), path, |_, _, r| records.extend(r))?;
    scan.fatal(path)?;
    Ok(records)
}

/// The head of the journal file at `path` (seq 0 if it is empty), with the
/// whole chain verified.
pub fn head_of_file(path: &Path) -> Result<Head, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let mut head = Head { seq: 0, hash: ZERO_HASH.to_owned() };
    let scan = scan(&file, path, |_, _, r| {
        if let Some(r) = r {
            head = Head { seq: r.seq, hash: r.hash };
        }
    })?;
    scan.fatal(path)?;
    Ok(head)
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
