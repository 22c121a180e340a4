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
    pub(super) fn new(line: u64, seq: Option<u64>, kind: &str, what: &str) -> Self {
        let message = match seq {
            Some(s) => format!("line {line} (seq {s}): {what}"),
            None => format!("line {line}: {what}"),
        };
        Problem { line, seq, kind: kind.to_owned(), message }
    }
}

/// Splits a line (without `\n`) into the hashed body and the claimed hash.
pub(super) fn split_line(raw: &[u8]) -> Option<(Vec<u8>, String)> {
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
pub(super) enum Link {
    Start,
    After(u64, String),
    /// The previous line was unreadable: do not report its successor as well.
    Unknown,
}

/// Checks one complete line against the chain so far; returns the record if it parsed.
pub(super) fn check_line(link: &mut Link, line: u64, raw: &[u8], problems: &mut Vec<Problem>) -> Option<Record> {
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
pub(super) struct Scan {
    pub(super) records: u64,
    pub(super) problems: Vec<Problem>,
    /// Bytes up to and including the last complete line.
    pub(super) good_len: u64,
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

/// Verifies every line of `file`, calling `each(line_no, raw_line, parsed)` per line
/// (a torn tail is passed with `None`).
pub(super) fn scan(file: &File, path: &Path, mut each: impl FnMut(u64, &[u8], Option<Record>)) -> Result<Scan, JournalError> {
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
