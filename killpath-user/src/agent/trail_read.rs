//! `trail NAME` reads (list, summary, verify) without holding the state
//! lock for the file: a trail is up to 64 MiB read and verified, and a
//! stop (or any command) must not wait behind it.
//!
//! Under the lock (behind any stop, see `stop_first`), [`State::trail_prepare`]
//! only checks the request, writes what the kernel counted up to now (the
//! same snapshot the background tick writes every second) and notes the
//! lengths of the trail file and of the main journal: every append runs
//! under the lock, so at that moment both files end at a durable record.
//! The read and the verify then run on those lengths without the lock: a
//! batch appended meanwhile is past them, never half read.
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{trail_anchor, Caller, State};
use crate::{
    error::{Error, Result},
    journal::{self, Problem, VerifyOptions},
    target::level_name,
    trail::{query, store, Request, GROUPS},
};

/// What a trail read needs from the state, taken under the lock.
pub(super) struct Prepared {
    req: Request,
    path: PathBuf,
    /// Bytes of the trail file when the lock was held (None: no file).
    len: Option<u64>,
    recording: bool,
    /// `--level` as the records name it.
    level: Option<String>,
    /// The main journal and its length when the lock was held (anchors).
    journal: PathBuf,
    journal_len: u64,
}

/// Serves a trail read: the lock for [`State::trail_prepare`] only (None:
/// not a read, or the caller may not read; served under the lock).
pub(super) fn serve(state: &std::sync::Mutex<State>, cmd: &crate::client::protocol::Command, caller: Caller) -> Option<Result<Value>> {
    let crate::client::protocol::Command::Trail(req) = cmd else { return None };
    if req.on || req.off {
        return None;
    }
    let prepared = {
        let mut s = super::stop_first::lock(state, cmd);
        // A task of a target may not read trails (`Command::confined`):
        // refused, and journaled, under the lock as before.
        if !matches!(s.caller_target(caller), Ok(None)) {
            return None;
        }
        s.trail_prepare(req)
    };
    Some(prepared.and_then(Prepared::serve))
}

impl State {
    /// Checks a trail read and takes what it needs (see the module doc).
    pub(super) fn trail_prepare(&mut self, req: &Request) -> Result<Prepared> {
        crate::target::validate_name(&req.name)?;
        if let Some(k) = &req.kind {
            if !GROUPS.contains(&k.as_str()) {
                return Err(Error::InvalidRequest(format!("--kind {k:?}: expected one of {}", GROUPS.join(", "))));
            }
        }
        // Records carry the level's name: `--level 3` or `--level stop`
        // select what `isolate` / `stopped` records are.
        let level = req.level.as_deref().map(crate::level::parse).transpose()?.map(|l| level_name(l).to_owned());
        if req.summary && (req.since.is_some() || req.level.is_some() || req.kind.is_some()) {
            return Err(Error::InvalidRequest("trail --summary covers the whole trail, by level: --since, --level and --kind select records to list".into()));
        }
        // What the kernel counted up to now is in the file before it is read.
        self.trail_snapshot(&req.name, None);
        let path = store::path(&self.config.state_dir, &req.name);
        let len = std::fs::metadata(&path).ok().map(|m| m.len());
        if len.is_none() {
            // A released target's trail stays; a name never known has none
            // (a known target may have recorded nothing yet).
            self.registry.get(&req.name)?;
            if req.verify {
                return Err(Error::InvalidRequest(format!("no trail for {}: it never recorded", req.name)));
            }
        }
        let recording = self.registry.get(&req.name).is_ok_and(|t| t.trail);
        let journal = self.journal.path().to_owned();
        Ok(Prepared { req: req.clone(), path, len, recording, level, journal, journal_len: self.journal.size() })
    }
}

impl Prepared {
    /// The read itself: no lock held.
    pub(super) fn serve(self) -> Result<Value> {
        let name = &self.req.name;
        if self.req.verify {
            return self.verify();
        }
        let records = match self.len {
            Some(len) => journal::read_prefix(&self.path, len)?,
            None => Vec::new(),
        };
        if self.req.summary {
            let mut s = query::summary(name, &records);
            s["recording"] = json!(self.recording);
            s["trail"] = json!(self.path);
            return Ok(s);
        }
        let since_us = self.req.since.as_deref().map(|s| query::parse_since(s, super::now_us())).transpose()?;
        let f = query::Filter { since_us, level: self.level.clone(), kind: self.req.kind.clone() };
        Ok(json!({"target": name, "recording": self.recording, "trail": self.path, "records": query::list(&records, &f)}))
    }

    /// The chain, and the trail's anchors in the main journal: the newest
    /// (the file must still reach its seq), and every older one too (the
    /// record at each anchor's seq must still have its hash: a rewrite the
    /// agent went on appending to is anchored again, the older anchors
    /// still catch it).
    fn verify(self) -> Result<Value> {
        let name = &self.req.name;
        let main = journal::read_prefix(&self.journal, self.journal_len)?;
        let mut anchors = trail_anchor::all(&main, name);
        let newest = anchors.pop();
        let opts = VerifyOptions { anchor: newest.as_ref().map(|(_, a)| a.clone()), ..Default::default() };
        let wanted: std::collections::HashMap<u64, (u64, String)> = anchors.iter().map(|(at, a)| (a.seq, (*at, a.hash.clone()))).collect();
        // The oldest older anchor the file no longer agrees with.
        let mut older: Option<Problem> = None;
        let mut report = journal::verify_prefix(&self.path, self.len.unwrap_or(0), &opts, |line, r| {
            if let Some((at, hash)) = wanted.get(&r.seq).filter(|(_, h)| *h != r.hash) {
                older.get_or_insert_with(|| Problem {
                    line,
                    seq: Some(r.seq),
                    kind: "anchor-mismatch".into(),
                    message: format!(
                        "line {line} (seq {}): the main journal's trail-anchor at journal seq {at} says trail seq {} has hash {hash}, the trail has {}: the trail was rewritten (and re-chained) after the anchor was written",
                        r.seq, r.seq, r.hash
                    ),
                });
            }
        })?;
        if let Some((at, a)) = &newest {
            for p in report.problems.iter_mut() {
                let what = match p.kind.as_str() {
                    "anchor-mismatch" => format!(
                        "the main journal's trail-anchor at journal seq {at} says trail seq {} has hash {}, the trail has {}: the trail was rewritten (and re-chained) after the anchor was written",
                        a.seq,
                        a.hash,
                        report.anchor.as_ref().and_then(|c| c.found.as_deref()).unwrap_or("?")
                    ),
                    "anchor-missing" => format!(
                        "the main journal's trail-anchor at journal seq {at} names trail seq {} (hash {}), but the trail ends at seq {}: the trail was truncated after the anchor was written",
                        a.seq, a.hash, report.head.seq
                    ),
                    _ => continue,
                };
                *p = Problem { message: format!("line {} (seq {}): {what}", p.line, a.seq), ..p.clone() };
            }
        }
        if let Some(p) = older {
            report.problems.push(p);
            report.ok = false;
        }
        let mut v = json!(report);
        v["target"] = json!(name);
        v["anchored_by"] = match &newest {
            Some((at, a)) => json!({"journal_seq": at, "anchor": format!("{}:{}", a.seq, a.hash)}),
            None => Value::Null,
        };
        Ok(v)
    }
}
