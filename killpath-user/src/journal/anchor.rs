//! The head of the chain (the last record's seq and hash) and anchors: a
//! head kept somewhere the host cannot write (an events subscriber, the
//! alert hook's receiver, a metrics scraper), checked later against the
//! file. Recomputing the chain after a rewrite makes the file verify on its
//! own, but every record from the first rewritten one on gets a new hash, so
//! the record at an anchor's seq no longer has the anchor's hash.
use std::fmt;

use serde::{Deserialize, Serialize};

/// The last record of a journal: `seq` 0 and 64 `0`s for an empty one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// The head as an anchor string, `SEQ:HASH`.
    pub fn anchor(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// A head held elsewhere, given as `SEQ:HASH`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

/// What an anchor check found (in [`super::VerifyReport`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AnchorCheck {
    pub seq: u64,
    /// The hash the anchor holds.
    pub expected: String,
    /// The hash of the record with that seq in the file (None: no such record).
    pub found: Option<String>,
    pub ok: bool,
}

impl Anchor {
    /// Parses `SEQ:HASH` (seq a positive integer, hash 64 hex digits).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad anchor {s:?}: {why}; expected SEQ:HASH as printed by `killpath journal --head` (e.g. 42:<64 hex digits>)");
        let (seq, hash) = s.trim().split_once(':').ok_or_else(|| bad("no ':' between seq and hash"))?;
        let seq: u64 = seq.parse().map_err(|_| bad(&format!("seq {seq:?} is not a positive integer")))?;
        if seq == 0 {
            return Err(bad("seq 0 names no record (records start at 1)"));
        }
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(&format!("the hash has {} characters, not 64 hex digits", hash.len())));
        }
        Ok(Anchor { seq, hash })
    }

    /// Checks the record with this seq (its hash, if the file has it).
    pub(super) fn check(&self, found: Option<&str>, last_seq: u64, line: Option<u64>) -> (AnchorCheck, Option<super::Problem>) {
        let check = AnchorCheck { seq: self.seq, expected: self.hash.clone(), found: found.map(str::to_owned), ok: found == Some(self.hash.as_str()) };
        let problem = match found {
            Some(h) if h == self.hash => None,
            Some(h) => Some(super::Problem::new(
                line.unwrap_or(0),
                Some(self.seq),
                "anchor-mismatch",
                &format!(
                    "the anchor says seq {} has hash {}, the journal has {h}: the journal was rewritten (and re-chained) after the anchor was taken",
                    self.seq, self.hash
                ),
            )),
            None => Some(super::Problem::new(
                last_seq + 1,
                Some(self.seq),
                "anchor-missing",
                &format!("the anchor names seq {} (hash {}) but the journal ends at seq {last_seq}: records the anchor saw were removed", self.seq, self.hash),
            )),
        };
        (check, problem)
    }
}
