//! Importing what the CLI journaled while the agent was away (the no-agent
//! stop fallback): each record once, then the file is renamed aside.
use std::collections::HashSet;
use std::fs::{self};
use std::io::{self};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::*;

/// `(fallback_line, fallback_line_sha256)` of every fallback line already imported into `journal`.
pub(super) fn imported_keys(journal: &Journal) -> Result<HashSet<(u64, String)>, JournalError> {
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
