//! The trail's anchor: a recording target's trail head (`SEQ:HASH`, see
//! `journal::Head::anchor`) written into the main journal as a
//! `trail-anchor` record, so a trail file rewritten with a recomputed
//! chain (which verifies on its own) is caught: the record at the anchor's
//! seq no longer has the anchor's hash, or the file no longer reaches it.
//! The main journal is itself anchored outside the host (`agent::anchor`).
//!
//! Written at trail on/off, at each level change (the stop too) and at
//! release, and otherwise with the periodic snapshot at most every
//! [`ANCHOR_EVERY`] per target, and only when the head moved: the main
//! journal gets a handful of records a minute per recording target at most.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::warn;

use super::State;
use crate::{
    journal::{Actor, Anchor, Entry, Head, Phase, Record},
    trail::store,
};

/// The main journal's action of a trail anchor.
pub const ACTION: &str = "trail-anchor";

/// At most one periodic anchor per target this often.
pub const ANCHOR_EVERY: Duration = Duration::from_secs(10);

/// The last anchor written per target, and when.
#[derive(Default)]
pub struct Anchors {
    last: HashMap<String, (Head, Instant)>,
}

/// The anchors of `name`'s trail among the main journal's `records`,
/// oldest first: (the anchor record's seq in the main journal, the anchor).
pub fn all(records: &[Record], name: &str) -> Vec<(u64, Anchor)> {
    records
        .iter()
        .filter(|r| r.entry.action == ACTION && r.entry.target.as_deref() == Some(name))
        .filter_map(|r| Some((r.seq, Anchor::parse(r.entry.params["anchor"].as_str()?).ok()?)))
        .collect()
}

impl State {
    /// Writes `name`'s trail head into the main journal if it moved since
    /// the last anchor and, unless `force`, [`ANCHOR_EVERY`] has passed.
    pub(super) fn trail_anchor(&mut self, name: &str, force: bool) {
        let Some(head) = self.trail.files.get(name).map(store::TrailFile::head) else { return };
        if head.seq == 0 {
            return;
        }
        if let Some((last, at)) = self.trail.anchors.last.get(name) {
            if *last == head || (!force && at.elapsed() < ANCHOR_EVERY) {
                return;
            }
        }
        let mut e = Entry::new(Actor::Source { source: "agent".into() }, Phase::Event, ACTION);
        e.target = Some(name.to_owned());
        e.params = json!({"anchor": head.anchor(), "trail": store::path(&self.config.state_dir, name)});
        match self.journal.append(e) {
            Ok(_) => {
                self.trail.anchors.last.insert(name.to_owned(), (head, Instant::now()));
            }
            Err(err) => warn!(target = name, "anchoring the trail in the journal: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{self, Journal, VerifyOptions};

    fn entry(action: &str, target: &str, params: serde_json::Value) -> Entry {
        let mut e = Entry::new(Actor::Source { source: "agent".into() }, Phase::Event, action);
        e.target = Some(target.into());
        e.params = params;
        e
    }

    #[test]
    fn anchors_of_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = Journal::open(&dir.path().join("j")).expect("journal");
        let h = "a".repeat(64);
        j.append(entry(ACTION, "web", json!({"anchor": format!("3:{h}")}))).expect("append");
        j.append(entry(ACTION, "db", json!({"anchor": format!("9:{h}")}))).expect("append");
        j.append(entry(ACTION, "web", json!({"anchor": format!("5:{h}")}))).expect("append");
        j.append(entry("stop", "web", json!({"anchor": format!("7:{h}")}))).expect("append");
        let records = journal::read_records(&dir.path().join("j"), 0).expect("read");
        let web: Vec<(u64, u64)> = all(&records, "web").iter().map(|(at, a)| (*at, a.seq)).collect();
        assert_eq!(web, [(1, 3), (3, 5)]);
        assert!(all(&records, "cache").is_empty());
    }

    /// A batch being written past the length a reader took is not read:
    /// no torn tail, and the anchor is checked on what is there.
    #[test]
    fn prefix_ignores_what_follows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        let (mut j, _) = Journal::open(&path).expect("journal");
        let recs = j.append_batch((0..3).map(|i| entry("exec", "web", json!({"i": i}))).collect()).expect("append");
        let len = j.size();
        drop(j);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        std::io::Write::write_all(&mut f, b"{\"seq\":4,\"half").expect("write");
        assert!(!journal::verify_file(&path).expect("verify").ok, "the whole file has a torn tail");
        let anchor = journal::Anchor::parse(&format!("2:{}", recs[1].hash)).expect("anchor");
        let r = journal::verify_prefix(&path, len, &VerifyOptions { anchor: Some(anchor), ..Default::default() }, |_, _| {}).expect("verify");
        assert!(r.ok && r.records == 3, "{r:#?}");
        assert_eq!(journal::read_prefix(&path, len).expect("read").len(), 3);
        let far = journal::Anchor::parse(&format!("4:{}", recs[1].hash)).expect("anchor");
        let r = journal::verify_prefix(&path, len, &VerifyOptions { anchor: Some(far), ..Default::default() }, |_, _| {}).expect("verify");
        assert_eq!(r.problems.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>(), ["anchor-missing"]);
    }
}
