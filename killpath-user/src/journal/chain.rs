//! Verifying the hash chain: each line's hash over its body, sequence
//! numbers without gaps, each body naming the previous hash, torn tails.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;

/// Result of [`verify_file`].
#[derive(Serialize, Clone, Debug)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// Complete lines read (a torn tail is not counted).
    pub records: u64,
    pub ok: bool,
    pub problems: Vec<Problem>,
    /// The last record read (seq 0 for an empty file).
    pub head: Head,
    /// What was found of HMACs: `"no HMAC"`, `"HMAC on N of M records, not
    /// checked (no --key)"` or `"HMAC checked: ..."`.
    pub hmac: String,
    /// The anchor checked, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<AnchorCheck>,
}

/// What [`verify_file_with`] checks besides the chain.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// A head held elsewhere: the record with its seq must have its hash.
    pub anchor: Option<Anchor>,
    /// Check every record's HMAC under this key.
    pub key: Option<Key>,
    /// The head the running agent remembers writing (online verify): the
    /// file must still hold that record, with that hash.
    pub written: Option<Head>,
}

/// HMACs seen so far, and what is wrong with them under a key.
pub(super) struct HmacCheck<'k> {
    key: Option<&'k Key>,
    records: u64,
    signed: u64,
    first_signed: Option<u64>,
    problems: Vec<Problem>,
}

impl<'k> HmacCheck<'k> {
    pub(super) fn new(key: Option<&'k Key>) -> Self {
        HmacCheck { key, records: 0, signed: 0, first_signed: None, problems: Vec::new() }
    }

    pub(super) fn see(&mut self, line: u64, r: &Record) {
        self.records += 1;
        match (&r.hmac, self.key) {
            (Some(mac), key) => {
                self.signed += 1;
                self.first_signed.get_or_insert(r.seq);
                if key.is_some_and(|k| !k.verifies(&r.hash, mac)) {
                    let what = "HMAC does not match the key: the record was written or re-chained without the key";
                    self.problems.push(Problem::new(line, Some(r.seq), "hmac-mismatch", what));
                }
            }
            (None, Some(_)) if self.first_signed.is_some() => {
                let what = "no HMAC although earlier records carry one: the HMAC was stripped, or the record written without the key";
                self.problems.push(Problem::new(line, Some(r.seq), "hmac-missing", what));
            }
            (None, _) => {}
        }
    }

    /// The summary line and the problems. `strict`: with a key, a journal
    /// with no HMAC at all is a problem (verification); not when an agent
    /// starts using a key on an older journal.
    pub(super) fn finish(mut self, strict: bool) -> (String, Vec<Problem>) {
        let summary = match (self.key, self.signed) {
            (None, 0) => "no HMAC".to_owned(),
            (None, n) => format!("HMAC on {n} of {} records, not checked (no --key)", self.records),
            (Some(_), 0) => "no HMAC: no record carries one".to_owned(),
            (Some(_), n) => {
                let before = self.first_signed.map_or(0, |s| s.saturating_sub(1));
                let bad = self.problems.len();
                let covered = if before > 0 {
                    format!("; the {before} record(s) before seq {} carry none and are covered through the chain", before + 1)
                } else {
                    String::new()
                };
                format!("HMAC checked on {n} of {} records, {bad} failed{covered}", self.records)
            }
        };
        if strict && self.key.is_some() && self.signed == 0 && self.records > 0 {
            let what = "no record carries an HMAC, but a key was given: the journal was not written with a key, or its HMACs were stripped";
            self.problems.push(Problem::new(1, None, "hmac-absent", what));
        }
        (summary, self.problems)
    }
}

/// Everything [`verify_file_with`] checks per record besides the chain.
pub(super) struct Verifier<'o> {
    opts: &'o VerifyOptions,
    hmacs: HmacCheck<'o>,
    head: Head,
    /// (line, hash) of the records at the anchor's and the written head's seq.
    at_anchor: Option<(u64, String)>,
    at_written: Option<(u64, String)>,
}

impl<'o> Verifier<'o> {
    pub(super) fn new(opts: &'o VerifyOptions) -> Self {
        let head = Head { seq: 0, hash: ZERO_HASH.to_owned() };
        Verifier { opts, hmacs: HmacCheck::new(opts.key.as_ref()), head, at_anchor: None, at_written: None }
    }

    pub(super) fn see(&mut self, line: u64, r: &Record) {
        self.hmacs.see(line, r);
        if self.opts.anchor.as_ref().is_some_and(|a| a.seq == r.seq) {
            self.at_anchor = Some((line, r.hash.clone()));
        }
        if self.opts.written.as_ref().is_some_and(|w| w.seq == r.seq) {
            self.at_written = Some((line, r.hash.clone()));
        }
        self.head = Head { seq: r.seq, hash: r.hash.clone() };
    }

    pub(super) fn finish(self, path: &Path, scan: Scan) -> VerifyReport {
        let mut problems = scan.problems;
        let (hmac, hmac_problems) = self.hmacs.finish(true);
        problems.extend(hmac_problems);
        let anchor = self.opts.anchor.as_ref().map(|a| {
            let (check, problem) = a.check(self.at_anchor.as_ref().map(|(_, h)| h.as_str()), self.head.seq, self.at_anchor.as_ref().map(|(l, _)| *l));
            problems.extend(problem);
            check
        });
        if let Some(w) = &self.opts.written {
            match &self.at_written {
                Some((_, h)) if *h == w.hash => {}
                Some((line, h)) => problems.push(Problem::new(
                    *line,
                    Some(w.seq),
                    "rewritten",
                    &format!("this agent wrote seq {} with hash {}, the file has {h}: the journal was rewritten under the agent", w.seq, w.hash),
                )),
                None if w.seq == 0 => {}
                None => problems.push(Problem::new(
                    scan.records + 1,
                    Some(w.seq),
                    "truncated",
                    &format!(
                        "the journal ends at seq {} but this agent wrote up to seq {} (hash {}): the last record(s) were removed",
                        self.head.seq, w.seq, w.hash
                    ),
                )),
            }
        }
        VerifyReport { path: path.to_owned(), records: scan.records, ok: problems.is_empty(), problems, head: self.head, hmac, anchor }
    }
}

/// One verification finding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: u64,
    pub seq: Option<u64>,
    /// `"hash-mismatch"`, `"seq-gap"`, `"chain-break"`, `"malformed"`, `"torn-tail"`;
    /// `"anchor-mismatch"`, `"anchor-missing"`; `"hmac-mismatch"`, `"hmac-missing"`,
    /// `"hmac-absent"`; online, `"rewritten"` and `"truncated"`.
    pub kind: String,
    /// Human-readable, starting with `line N (seq S):`.
    pub message: String,
}

impl Problem {
    pub(super) fn new(line: u64, seq: Option<u64>, kind: &str, what: &str) -> Self {
        let message = match seq {
            Some(s) => format!("line {line} (seq {s}): {what}"),
            None => format!("line {line}: {what}"),
        };
        Problem { line, seq, kind: kind.to_owned(), message }
    }
}

/// Splits a line (without `\n`) into the hashed body, the claimed hash and
/// the HMAC, if the line carries one (`,"hmac":"<64 hex>"` after the hash).
pub(super) fn split_line(raw: &[u8]) -> Option<(Vec<u8>, String, Option<String>)> {
    let (raw, hmac) = match strip_hmac(raw) {
        Some((rest, hmac)) => (rest, Some(hmac)),
        None => (raw.to_vec(), None),
    };
    let (head, tail) = raw.split_at(raw.len().checked_sub(SUFFIX_LEN)?);
    let hex = tail.strip_prefix(HASH_KEY.as_bytes())?.strip_suffix(b"\"}")?;
    if !head.starts_with(b"{") || !is_hex64(hex) {
        return None;
    }
    let mut body = head.to_vec();
    body.push(b'}');
    Some((body, String::from_utf8_lossy(hex).into_owned(), hmac))
}

fn is_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// `{..,"hash":"H","hmac":"M"}` -> (`{..,"hash":"H"}`, M).
fn strip_hmac(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let (head, tail) = raw.split_at(raw.len().checked_sub(HMAC_SUFFIX_LEN)?);
    let hex = tail.strip_prefix(HMAC_KEY.as_bytes())?.strip_suffix(b"\"}")?;
    if !is_hex64(hex) {
        return None;
    }
    let mut rest = head.to_vec();
    rest.push(b'}');
    Some((rest, String::from_utf8_lossy(hex).into_owned()))
}

/// What the next line must link to.
pub(super) enum Link {
    Start,
    After(u64, String),
    /// The previous line was unreadable: do not report its successor as well.
    Unknown,
}

/// Checks one complete line against the chain so far; returns the record if it parsed.
pub(super) fn check_line(link: &mut Link, line: u64, raw: &[u8], problems: &mut Vec<Problem>) -> Option<Record> {
    let Some((body, hash, hmac)) = split_line(raw) else {
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
    let mut record = body.seal(hash);
    record.hmac = hmac;
    Some(record)
}

/// Outcome of reading a whole journal file.
pub(super) struct Scan {
    pub(super) records: u64,
    pub(super) problems: Vec<Problem>,
    /// Bytes up to and including the last complete line: the logical end.
    pub(super) good_len: u64,
    /// Non-NUL bytes after the logical end that one interrupted write can
    /// leave (a torn final line); the file is cut back to `good_len`.
    pub(super) torn_bytes: u64,
}

impl Scan {
    /// Every problem except a torn tail is fatal for a writer or reader.
    pub(super) fn fatal(&self, path: &Path) -> Result<(), JournalError> {
        let problems: Vec<Problem> = self.problems.iter().filter(|p| p.kind != "torn-tail").cloned().collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(JournalError::Corrupt { path: path.to_owned(), problems }),
        }
    }
}

/// Verifies every line of `file` from its current offset, calling
/// `each(line_no, raw_line, parsed)` per line (a torn tail is passed with
/// `None`).
///
/// The journal ends at the first line holding a NUL byte: the agent keeps
/// written zeros ahead of its tail (see [`Journal::reserve`]), and JSON
/// never contains a NUL. What follows must be NULs, or what one
/// interrupted write can leave — at most one line, ending at its only
/// newline if it has one (a torn tail); more is a problem.
pub(super) fn scan(file: &File, path: &Path, each: impl FnMut(u64, &[u8], Option<Record>)) -> Result<Scan, JournalError> {
    scan_reader(file, path, each)
}

/// [`scan`] over any reader (a file's first bytes: `journal::verify_prefix`).
pub(super) fn scan_reader(file: impl std::io::Read, path: &Path, mut each: impl FnMut(u64, &[u8], Option<Record>)) -> Result<Scan, JournalError> {
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
        if buf.contains(&0) {
            return padding(&mut reader, path, line, buf, out, each);
        }
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

/// The rest of the file from the logical end (`first` is the line holding
/// the first NUL): NULs, a torn tail among them, or data that no write of
/// the agent can have left there.
fn padding(
    reader: &mut impl BufRead,
    path: &Path,
    line: u64,
    first: Vec<u8>,
    mut out: Scan,
    mut each: impl FnMut(u64, &[u8], Option<Record>),
) -> Result<Scan, JournalError> {
    // Bytes up to the last non-NUL byte, NULs between them kept (bounded by
    // what was written there); the trailing NULs are only counted.
    let mut data = Vec::new();
    let mut zeros = 0usize;
    let mut take = |chunk: &[u8], data: &mut Vec<u8>| {
        for run in chunk.split_inclusive(|&b| b != 0) {
            match run.last() {
                Some(&0) => zeros += run.len(),
                Some(_) => {
                    data.resize(data.len() + zeros, 0);
                    zeros = 0;
                    data.extend_from_slice(run);
                }
                None => {}
            }
        }
    };
    take(&first, &mut data);
    loop {
        let chunk = reader.fill_buf().map_err(io_err(path, "read"))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        take(chunk, &mut data);
        reader.consume(n);
    }
    if data.is_empty() {
        return Ok(out);
    }
    let text: Vec<u8> = data.iter().copied().filter(|&b| b != 0).collect();
    let newlines = text.iter().filter(|&&b| b == b'\n').count();
    if newlines == 0 || (newlines == 1 && text.last() == Some(&b'\n')) {
        out.torn_bytes = text.len() as u64;
        let what = format!(
            "final line is incomplete ({} bytes before the zeros kept ahead of the tail): its write was interrupted and never acknowledged",
            text.len()
        );
        out.problems.push(Problem::new(line, None, "torn-tail", &what));
        each(line, &text, None);
    } else {
        let what = format!(
            "{} bytes ({newlines} lines) after the end of the journal (the zeros kept ahead of its tail): more than one interrupted write leaves",
            text.len()
        );
        out.problems.push(Problem::new(line, None, "after-end", &what));
    }
    Ok(out)
}
