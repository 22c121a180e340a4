//! The action journal: an append-only file of hash-chained JSON lines.
//!
//! Each line is one [`Record`]. Its `hash` is the hex SHA-256 of the compact JSON of the
//! record without `hash` (the *body*); the written line is that body with its final `}`
//! replaced by `,"hash":"<hex>"}` and a trailing newline. Every body carries the previous
//! record's hash, so editing a byte, removing, inserting or reordering lines is detected by
//! [`verify_file`] from the file alone. [`Journal::append`] writes a line with a single
//! `write(2)` and `fdatasync`s before returning, so callers write the intent before acting
//! and acknowledge only after the result record is durable.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

/// `prev_hash` of the first record.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// What precedes the hash at the end of every line.
const HASH_KEY: &str = ",\"hash\":\"";
/// Length of `,"hash":"<64 hex>"}`.
const SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// Who caused a record: a peer on the control socket, or a named internal source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Actor {
    /// A drill (`killpath drill`), run by the process with these peer
    /// credentials. First: untagged decoding tries variants in order, and
    /// a drill record also has `uid` and `pid`.
    Drill { drill: u64, uid: u32, pid: i32 },
    /// A process identified by its peer credentials.
    Caller { uid: u32, pid: i32 },
    /// A named source such as `"cli-fallback"`.
    Source { source: String },
}

/// Where a record sits relative to the action it describes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written (and durable) before the action is attempted.
    Intent,
    /// Written after the action; `intent_seq` names its intent.
    Result,
    /// Something that is not an action of its own.
    Event,
}

/// What a caller appends; the journal adds seq, time, prev_hash, hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    pub actor: Actor,
    pub phase: Phase,
    /// `"stop"`, `"run"`, `"adopt"`, `"release"`, `"refused"`, `"recovered"`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_level: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_level: Option<u32>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: Value,
    /// `"ok"`, `"error: ..."`, `"interrupted"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_effect_us: Option<u64>,
    /// On a [`Phase::Result`]: the seq of its intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub high_priority: bool,
}

impl Entry {
    /// An entry with only actor, phase and action set.
    pub fn new(actor: Actor, phase: Phase, action: &str) -> Self {
        Entry {
            actor,
            phase,
            action: action.to_owned(),
            target: None,
            from_level: None,
            to_level: None,
            params: Value::Null,
            outcome: None,
            time_to_effect_us: None,
            intent_seq: None,
            high_priority: false,
        }
    }
}

/// One journal line. `serde_json::to_string(&record)` is exactly the line without `\n`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    /// 1, 2, 3 ... without gaps.
    pub seq: u64,
    pub time_unix_us: u64,
    /// RFC 3339 UTC with microseconds.
    pub time: String,
    /// Hex SHA-256 of the previous record's body; 64 `0`s for the first record.
    pub prev_hash: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// Hex SHA-256 of this record's body; always the last field of the line.
    pub hash: String,
}

/// A record without its hash: the exact bytes that are hashed.
#[derive(Serialize, Deserialize)]
struct Body {
    seq: u64,
    time_unix_us: u64,
    time: String,
    prev_hash: String,
    #[serde(flatten)]
    entry: Entry,
}

impl Body {
    fn seal(self, hash: String) -> Record {
        let Body { seq, time_unix_us, time, prev_hash, entry } = self;
        Record { seq, time_unix_us, time, prev_hash, entry, hash }
    }
}

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

/// Result of [`verify_file`].
#[derive(Serialize, Clone, Debug)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// Complete lines read (a torn tail is not counted).
    pub records: u64,
    pub ok: bool,
    pub problems: Vec<Problem>,
}

/// One verification finding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: u64,
    pub seq: Option<u64>,
    /// `"hash-mismatch"`, `"seq-gap"`, `"chain-break"`, `"malformed"` or `"torn-tail"`.
    pub kind: String,
    /// Human-readable, starting with `line N (seq S):`.
    pub message: String,
}

impl Problem {
    fn new(line: u64, seq: Option<u64>, kind: &str, what: &str) -> Self {
        let message = match seq {
            Some(s) => format!("line {line} (seq {s}): {what}"),
            None => format!("line {line}: {what}"),
        };
        Problem { line, seq, kind: kind.to_owned(), message }
    }
}

/// Splits a line (without `\n`) into the hashed body and the claimed hash.
fn split_line(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let (head, tail) = raw.split_at(raw.len().checked_sub(SUFFIX_LEN)?);
    let hex = tail.strip_prefix(HASH_KEY.as_bytes())?.strip_suffix(b"\"}")?;
    if !head.starts_with(b"{") || !hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut body = head.to_vec();
    body.push(b'}');
    Some((body, String::from_utf8_lossy(hex).into_owned()))
}

/// What the next line must link to.
enum Link {
    Start,
    After(u64, String),
    /// The previous line was unreadable: do not report its successor as well.
    Unknown,
}

/// Checks one complete line against the chain so far; returns the record if it parsed.
fn check_line(link: &mut Link, line: u64, raw: &[u8], problems: &mut Vec<Problem>) -> Option<Record> {
    let Some((body, hash)) = split_line(raw) else {
        *link = Link::Unknown;
        problems.push(Problem::new(line, None, "malformed", "not a journal record (no trailing hash field)"));
        return None;
    };
    let parsed = serde_json::from_slice::<Body>(&body);
    let seq = parsed.as_ref().ok().map(|b| b.seq);
    if hex::encode(Sha256::digest(&body)) != hash {
        let what = "content does not match its hash: the record was edited";
        problems.push(Problem::new(line, seq, "hash-mismatch", what));
    }
    let body = match parsed {
        Ok(body) => body,
        Err(e) => {
            *link = Link::Unknown;
            problems.push(Problem::new(line, None, "malformed", &format!("invalid record JSON: {e}")));
            return None;
        }
    };
    let expected = match &*link {
        Link::Start => Some((1, ZERO_HASH)),
        Link::After(s, h) => Some((s.saturating_add(1), h.as_str())),
        Link::Unknown => None,
    };
    if let Some((want_seq, want_prev)) = expected {
        if body.seq != want_seq {
            let what = format!("expected seq {want_seq}: a record is missing, duplicated or out of order");
            problems.push(Problem::new(line, seq, "seq-gap", &what));
        }
        if body.prev_hash != want_prev {
            let what = "prev_hash is not the previous line's hash: a record was removed, inserted or reordered";
            problems.push(Problem::new(line, seq, "chain-break", what));
        }
    }
    *link = Link::After(body.seq, hash.clone());
    Some(body.seal(hash))
}

/// Outcome of reading a whole journal file.
struct Scan {
    records: u64,
    problems: Vec<Problem>,
    /// Bytes up to and including the last complete line.
    good_len: u64,
    torn_bytes: u64,
}

impl Scan {
    /// Every problem except a torn tail is fatal for a writer or reader.
    fn fatal(&self, path: &Path) -> Result<(), JournalError> {
        let problems: Vec<Problem> = self.problems.iter().filter(|p| p.kind != "torn-tail").cloned().collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(JournalError::Corrupt { path: path.to_owned(), problems }),
        }
    }
}

/// Verifies every line of `file`, calling `each(line_no, raw_line, parsed)` per line
/// (a torn tail is passed with `None`).
fn scan(file: &File, path: &Path, mut each: impl FnMut(u64, &[u8], Option<Record>)) -> Result<Scan, JournalError> {
    let mut reader = BufReader::new(file);
    let mut out = Scan { records: 0, problems: Vec::new(), good_len: 0, torn_bytes: 0 };
    let (mut link, mut buf, mut line) = (Link::Start, Vec::new(), 0u64);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path, "read"))?;
        if n == 0 {
            return Ok(out);
        }
        line += 1;
        if let Some(raw) = buf.strip_suffix(b"\n") {
            let record = check_line(&mut link, line, raw, &mut out.problems);
            out.records += 1;
            out.good_len += n as u64;
            each(line, raw, record);
        } else {
            out.torn_bytes = n as u64;
            let what = format!("final line is incomplete ({n} bytes, no newline): its write was interrupted and never acknowledged");
            out.problems.push(Problem::new(line, None, "torn-tail", &what));
            each(line, &buf, None);
        }
    }
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

fn now_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC with microseconds, e.g. `2024-05-01T12:00:00.000001Z`.
fn rfc3339(us: u64) -> String {
    let (secs, days) = (us / 1_000_000 % 86_400, us / 1_000_000 / 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, s, frac) = (secs / 3600, secs % 3600 / 60, secs % 60, us % 1_000_000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:06}Z")
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

/// `(fallback_line, fallback_line_sha256)` of every fallback line already imported into `journal`.
fn imported_keys(journal: &Journal) -> Result<HashSet<(u64, String)>, JournalError> {
    let mut keys = HashSet::new();
    for r in read_records(journal.path(), 0)? {
        let p = &r.entry.params;
        if let (true, Some(line), Some(sha)) = (r.entry.action == "fallback-imported", p["fallback_line"].as_u64(), p["fallback_line_sha256"].as_str()) {
            keys.insert((line, sha.to_owned()));
        }
    }
    Ok(keys)
}

/// Imports every line of the fallback journal at `fallback` into `journal` as a
/// `"fallback-imported"` event (params: `fallback_record`, `fallback_line`,
/// `fallback_line_sha256`, and `fallback_verify` if the file failed verification — records
/// are never dropped; an unparseable line goes in `fallback_raw_line`), then renames the file
/// to `<fallback>.imported-<unix_us>`. Lines imported before a crash are not imported twice.
/// Returns how many were imported; `Ok(0)` if there is no fallback file.
pub fn import_fallback(journal: &mut Journal, fallback: &Path) -> Result<usize, JournalError> {
    let Some(file) = lock_path(fallback, false)? else {
        return Ok(0);
    };
    let mut lines = Vec::new();
    let scan = scan(&file, fallback, |line, raw, record| lines.push((line, raw.to_vec(), record)))?;
    let verify = if scan.problems.is_empty() {
        None
    } else {
        warn!(path = %fallback.display(), problems = scan.problems.len(), "fallback journal failed verification; importing anyway");
        let encoded = serde_json::to_value(&scan.problems).map_err(io::Error::from);
        Some(encoded.map_err(io_err(fallback, "encode problems"))?)
    };
    let done = imported_keys(journal)?;
    let mut count = 0;
    for (line, raw, record) in lines {
        let sha = hex::encode(Sha256::digest(&raw));
        if done.contains(&(line, sha.clone())) {
            continue;
        }
        let mut params = serde_json::Map::new();
        match serde_json::from_slice::<Value>(&raw) {
            Ok(original) => params.insert("fallback_record".into(), original),
            Err(_) => params.insert("fallback_raw_line".into(), String::from_utf8_lossy(&raw).into_owned().into()),
        };
        params.insert("fallback_line".into(), line.into());
        params.insert("fallback_line_sha256".into(), sha.into());
        if let Some(v) = &verify {
            params.insert("fallback_verify".into(), v.clone());
        }
        let mut entry = match record {
            Some(r) => {
                let mut e = Entry::new(r.entry.actor, Phase::Event, "fallback-imported");
                (e.target, e.outcome, e.time_to_effect_us) = (r.entry.target, r.entry.outcome, r.entry.time_to_effect_us);
                e
            }
            None => Entry::new(Actor::Source { source: "fallback-unparseable".into() }, Phase::Event, "fallback-imported"),
        };
        entry.params = Value::Object(params);
        journal.append(entry)?;
        count += 1;
    }
    let mut dest = fallback.as_os_str().to_owned();
    dest.push(format!(".imported-{}", now_us()));
    fs::rename(fallback, &dest).map_err(io_err(fallback, "rename"))?;
    sync_parent(fallback)?;
    info!(path = %fallback.display(), imported = count, renamed_to = %Path::new(&dest).display(), "imported fallback journal");
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(phase: Phase, action: &str) -> Entry {
        let mut e = Entry::new(Actor::Caller { uid: 0, pid: 42 }, phase, action);
        e.target = Some(format!("workload-{action}"));
        e
    }

    /// A journal (in a not yet existing subdirectory) with 4 events targeting workload-1..4.
    fn four() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/journal.jsonl");
        let (mut journal, recovery) = Journal::open(&path).unwrap();
        assert_eq!(recovery.truncated_bytes, 0);
        for i in 1..=4 {
            journal.append(entry(Phase::Event, &i.to_string())).unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    fn kinds(path: &Path) -> Vec<(u64, String)> {
        let problems = verify_file(path).unwrap().problems;
        problems.into_iter().map(|p| (p.line, p.kind)).collect()
    }

    fn kind(line: u64, kind: &str) -> (u64, String) {
        (line, kind.to_owned())
    }

    #[test]
    fn append_and_verify_ok() {
        let (_dir, path) = four();
        let report = verify_file(&path).unwrap();
        assert!(report.ok && report.records == 4, "{report:?}");
        let all = read_records(&path, 0).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!((all[0].prev_hash.as_str(), &all[2].prev_hash), (ZERO_HASH, &all[1].hash));
        assert_eq!(read_records(&path, 2).unwrap(), all[2..]);
        assert_eq!(lines(&path)[3], serde_json::to_string(&all[3]).unwrap());
        assert!(lines(&path)[3].ends_with(&format!(",\"hash\":\"{}\"}}", all[3].hash)));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn edited_byte_is_a_hash_mismatch() {
        let (_dir, path) = four();
        let mut l = lines(&path);
        l[1] = l[1].replace("workload-2", "workload-X");
        write_lines(&path, &l);
        assert_eq!(kinds(&path), [kind(2, "hash-mismatch")]);
        let message = &verify_file(&path).unwrap().problems[0].message;
        assert!(message.starts_with("line 2 (seq 2): content does not match its hash"));
        assert!(matches!(Journal::open(&path), Err(JournalError::Corrupt { .. })));
        assert!(read_records(&path, 0).unwrap_err().to_string().contains("line 2 (seq 2)"));
        // Whatever byte sits in the middle of line 2, flipping it is caught on line 2.
        let mut bytes = fs::read(&path).unwrap();
        let mid = l[0].len() + 1 + l[1].len() / 2;
        bytes[mid] ^= 0x01;
        fs::write(&path, bytes).unwrap();
        assert!(kinds(&path).iter().all(|(line, _)| *line == 2));
    }

    #[test]
    fn removed_line_breaks_the_chain() {
        let (_dir, path) = four();
        let mut l = lines(&path);
        l.remove(1);
        write_lines(&path, &l);
        assert_eq!(kinds(&path), [kind(2, "seq-gap"), kind(2, "chain-break")]);
    }

    #[test]
    fn swapped_lines_are_detected() {
        let (_dir, path) = four();
        let mut l = lines(&path);
        l.swap(1, 2);
        write_lines(&path, &l);
        let found = kinds(&path);
        assert!(found.contains(&kind(2, "chain-break")) && found.contains(&kind(3, "seq-gap")));
        assert!(!verify_file(&path).unwrap().ok);
    }

    #[test]
    fn malformed_line_is_named() {
        let (_dir, path) = four();
        let mut l = lines(&path);
        l.insert(2, "hello".into());
        write_lines(&path, &l);
        assert_eq!(kinds(&path), [kind(3, "malformed")]);
        assert!(read_records(&path, 0).unwrap_err().to_string().contains("line 3:"));
    }

    #[test]
    fn torn_tail_is_truncated_on_open() {
        let (_dir, path) = four();
        let torn = b"{\"seq\":5,\"time_unix";
        OpenOptions::new().append(true).open(&path).unwrap().write_all(torn).unwrap();
        assert_eq!(kinds(&path), [kind(5, "torn-tail")]);
        assert_eq!(verify_file(&path).unwrap().records, 4);
        assert_eq!(read_records(&path, 0).unwrap().len(), 4);
        let (mut journal, recovery) = Journal::open(&path).unwrap();
        assert_eq!(recovery.truncated_bytes, torn.len() as u64);
        assert_eq!(journal.append(entry(Phase::Event, "5")).unwrap().seq, 5);
        assert!(verify_file(&path).unwrap().ok);
    }

    #[test]
    fn dangling_intents_are_reported() {
        let (_dir, path) = four();
        let (mut journal, _) = Journal::open(&path).unwrap();
        let stop = journal.append(entry(Phase::Intent, "stop")).unwrap();
        let mut result = entry(Phase::Result, "stop");
        (result.intent_seq, result.outcome) = (Some(stop.seq), Some("ok".into()));
        journal.append(result).unwrap();
        let run = journal.append(entry(Phase::Intent, "run")).unwrap();
        drop(journal);
        let (_, recovery) = Journal::open(&path).unwrap();
        assert_eq!(recovery.dangling_intents, [run]);
    }

    #[test]
    fn reopen_continues_seq_and_chain() {
        let (_dir, path) = four();
        let last = read_records(&path, 3).unwrap().remove(0);
        let (mut journal, _) = Journal::open(&path).unwrap();
        assert_eq!((journal.last_seq(), journal.path()), (4, path.as_path()));
        let next = journal.append(entry(Phase::Event, "5")).unwrap();
        assert_eq!((next.seq, next.prev_hash), (5, last.hash));
        assert!(verify_file(&path).unwrap().ok);
    }

    #[test]
    fn second_open_is_locked() {
        let (_dir, path) = four();
        let held = Journal::open(&path).unwrap();
        assert!(matches!(Journal::open(&path), Err(JournalError::Locked { .. })));
        let appended = append_to_file(&path, entry(Phase::Event, "x"));
        assert!(matches!(appended, Err(JournalError::Locked { .. })));
        drop(held);
        assert_eq!(append_to_file(&path, entry(Phase::Event, "x")).unwrap().seq, 5);
    }

    #[test]
    fn import_fallback_moves_records_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let (main, fallback) = (dir.path().join("journal"), dir.path().join("fallback"));
        let mut e = Entry::new(Actor::Source { source: "cli-fallback".into() }, Phase::Result, "stop");
        (e.target, e.outcome, e.time_to_effect_us) = (Some("w1".into()), Some("ok".into()), Some(7));
        let first = append_to_file(&fallback, e.clone()).unwrap();
        append_to_file(&fallback, e).unwrap();
        let original = fs::read_to_string(&fallback).unwrap();
        let (mut journal, _) = Journal::open(&main).unwrap();
        assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 2);
        assert!(!fallback.exists());
        let renamed = fs::read_dir(dir.path()).unwrap().filter(|f| {
            let name = f.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("fallback.imported-")
        });
        assert_eq!(renamed.count(), 1);
        let got = read_records(&main, 0).unwrap();
        let imported = &got[0].entry;
        assert_eq!((imported.actor.clone(), imported.phase), (first.entry.actor.clone(), Phase::Event));
        assert_eq!((imported.action.as_str(), imported.target.as_deref()), ("fallback-imported", Some("w1")));
        assert_eq!((imported.outcome.as_deref(), imported.time_to_effect_us), (Some("ok"), Some(7)));
        assert_eq!(imported.params["fallback_record"], serde_json::to_value(&first).unwrap());
        assert!(imported.params.get("fallback_verify").is_none());
        // A crash before the rename: importing the same file again duplicates nothing.
        fs::write(&fallback, &original).unwrap();
        assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 0);
        // A tampered fallback is still imported, with the problems attached.
        fs::write(&fallback, original.replace("w1", "w2")).unwrap();
        assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 2);
        let last = read_records(&main, 3).unwrap().remove(0);
        assert_eq!(last.entry.params["fallback_verify"][0]["kind"], "hash-mismatch");
        assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 0);
        assert!(verify_file(&main).unwrap().ok);
    }

    /// Child half of `record_survives_crash`: appends, then exits without dropping anything.
    #[test]
    fn crash_child() {
        if let Some(path) = std::env::var_os("KILLPATH_JOURNAL_CRASH_PATH") {
            let (mut journal, _) = Journal::open(Path::new(&path)).unwrap();
            journal.append(entry(Phase::Intent, "crash")).unwrap();
            std::process::exit(0);
        }
    }

    #[test]
    fn record_survives_crash() {
        let (_dir, path) = four();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--test-threads=1"])
            .env("KILLPATH_JOURNAL_CRASH_PATH", &path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let (_, recovery) = Journal::open(&path).unwrap();
        assert_eq!(recovery.dangling_intents.len(), 1);
        assert_eq!(recovery.dangling_intents[0].entry.action, "crash");
        assert!(verify_file(&path).unwrap().ok);
    }

    #[test]
    fn rfc3339_utc_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
    }
}
