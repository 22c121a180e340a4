//! One trail file per target: `trails/NAME.jsonl` in the state dir, an
//! append-only file of hash-chained records written by the journal's own
//! code (`journal::Journal::append_batch`, one write and one fdatasync per
//! batch), so `trail --verify` checks it exactly like `journal --verify`.
//!
//! Bounded by size: once the file holds `max_bytes`, further events and
//! snapshots are not written but counted per kind, and a `lost` record
//! (always written: a handful per minute at most) says how many of each
//! were left out — loss is never silent.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::loss::{self, Kernel, Loss};
use crate::{
    error::Result,
    journal::{Actor, Entry, Journal, Phase},
};

/// Folder of the trail files in the state dir.
pub const TRAILS_DIR: &str = "trails";
/// Default bound on one trail file.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Actions always written, even past the size bound: markers the summary
/// needs (level changes, on/off, loss counts), a few per command.
const MARKERS: &[&str] = &["level", "trail-on", "trail-off", "lost"];

/// The trail file of target `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(TRAILS_DIR).join(format!("{name}.jsonl"))
}

/// A record of the trail: written by the agent from what the kernel saw.
pub fn entry(name: &str, action: &str, level: Option<u32>, params: Value) -> Entry {
    let mut e = Entry::new(Actor::Source { source: "kernel".into() }, Phase::Event, action);
    e.target = Some(name.to_owned());
    e.to_level = level;
    e.params = params;
    e
}

/// An open trail file.
pub struct TrailFile {
    journal: Journal,
    max_bytes: u64,
    /// What the last `lost` record said (nothing new: no record); read
    /// back from the file at open.
    reported: Value,
}

impl TrailFile {
    /// Opens (creates) and verifies the trail file at `path`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self> {
        let (journal, _) = Journal::open(path)?;
        let reported = loss::last_recorded(path).unwrap_or(Value::Null);
        Ok(Self { journal, max_bytes, reported })
    }

    /// The parameters of the file's last `lost` record (Null: none).
    pub fn last_lost(&self) -> &Value {
        &self.reported
    }

    /// Appends what fits under the bound (markers always), counting the
    /// rest in `loss`; then, when `report` (the periodic snapshot, a level
    /// change: a few records a minute however hard the flood), a `lost`
    /// record if the counts (`loss` and the kernel's, `kernel`) changed
    /// since the last one.
    pub fn append(&mut self, name: &str, entries: Vec<Entry>, loss: &mut Loss, kernel: &Kernel, report: bool) -> Result<()> {
        let mut size = self.journal.size();
        let mut keep = Vec::with_capacity(entries.len());
        for e in entries {
            let est = e.params.to_string().len() as u64 + 300;
            if MARKERS.contains(&e.action.as_str()) || size + est <= self.max_bytes {
                size += est;
                keep.push(e);
            } else {
                *loss.file_full.entry(e.action.clone()).or_default() += 1;
            }
        }
        if report && loss.any(kernel) {
            let lost = loss.record(kernel);
            if lost != self.reported {
                let mut e = entry(name, "lost", None, lost.clone());
                e.outcome = Some("events were not recorded: counted here by kind".into());
                keep.push(e);
                self.reported = lost;
            }
        }
        self.journal.append_batch(keep)?;
        Ok(())
    }

    /// Bytes of records in the file.
    pub fn size(&self) -> u64 {
        self.journal.size()
    }

    /// The last record's seq and hash (what the main journal anchors).
    pub fn head(&self) -> crate::journal::Head {
        self.journal.head()
    }
}
