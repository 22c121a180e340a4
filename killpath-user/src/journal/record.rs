//! What a journal line holds: who, what, which target, from/to level,
//! outcome, and the sealed, hash-chained record.
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Hex SHA-256 of this record's body; the last field of the line, or
    /// just before `hmac`.
    pub hash: String,
    /// Hex HMAC-SHA256 of `hash` (its 64 hex characters) under the agent's
    /// `--journal-key`; absent when the agent runs without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
}

/// A record without its hash: the exact bytes that are hashed.
#[derive(Serialize, Deserialize)]
pub(super) struct Body {
    pub(super) seq: u64,
    pub(super) time_unix_us: u64,
    pub(super) time: String,
    pub(super) prev_hash: String,
    #[serde(flatten)]
    pub(super) entry: Entry,
}

impl Body {
    pub(super) fn seal(self, hash: String) -> Record {
        let Body { seq, time_unix_us, time, prev_hash, entry } = self;
        Record { seq, time_unix_us, time, prev_hash, entry, hash, hmac: None }
    }
}

pub(super) fn now_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC with microseconds, e.g. `2024-05-01T12:00:00.000001Z`.
pub(super) fn rfc3339(us: u64) -> String {
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
