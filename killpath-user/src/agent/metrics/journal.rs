//! `killpath_journal_verify_ok`: the journal verified at most once per
//! [`PERIOD`] (a verification reads the whole file; scrapes come every
//! few seconds), outside the state lock.

use std::{
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::sample::Verified;
use crate::journal::{self, VerifyOptions};

/// How long a verification stands before a scrape runs the next one.
const PERIOD: Duration = Duration::from_secs(30);

/// The last verification and when it ran.
#[derive(Default)]
pub(super) struct VerifyCache(Mutex<Option<(Instant, Verified)>>);

impl VerifyCache {
    /// The cached verification, or a new one if it is older than [`PERIOD`].
    /// The file is read without the state lock, so a read can race an
    /// append (the zeros the journal keeps ahead of its end read before the
    /// new line lands): a failed verification counts only when the one
    /// right after it fails too. A real problem (a record changed, removed
    /// or re-chained: `verify_file_with` checks the head the agent wrote)
    /// fails every time.
    pub(super) fn get(&self, path: &Path, opts: &VerifyOptions) -> Option<Verified> {
        let mut cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, v)) = cached.as_ref().filter(|(at, _)| at.elapsed() < PERIOD) {
            return Some(v.clone());
        }
        let ok = |o: &VerifyOptions| journal::verify_file_with(path, o).map(|r| r.ok);
        let ok = match ok(opts) {
            Ok(true) => true,
            _ => ok(opts).unwrap_or(false),
        };
        if !ok {
            tracing::warn!(journal = %path.display(), "metrics: the journal does not verify (killpath_journal_verify_ok 0); `killpath journal verify` says why");
        }
        let v = Verified { ok, at_unix_s: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) };
        *cached = Some((Instant::now(), v.clone()));
        Some(v)
    }
}
