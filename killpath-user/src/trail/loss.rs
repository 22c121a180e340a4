//! What a trail says it lost, per target: the kernel's count for this
//! target (ring full, flows or file-writes map full, from
//! `KP_TRAIL_LOST_BY_TARGET`), records left out at the file's size bound,
//! and records the agent could not write. Written as `lost` records with
//! cumulative counts, and carried across what resets the sources: an agent
//! restart (the file-full and write-failed counts are read back from the
//! file's last `lost` record), `trail --off`, a release or a re-created
//! cgroup (the kernel's entries are folded into `kernel_earlier`, then
//! removed from the map).
use std::collections::BTreeMap;
use std::path::Path;

use killpath_common::trail::{LOST_COUNT, LOST_FILES, LOST_FLOWS};
use serde_json::{json, Value};

use super::kind_name;
use crate::journal::Record;

/// Counts by name ("exec", "flows-map-full", ...).
pub type Counts = BTreeMap<String, u64>;

/// The kernel's loss counts as read now.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    /// The target's cgroup id.
    pub cgroup_id: u64,
    /// This target's counts in `KP_TRAIL_LOST_BY_TARGET`.
    pub live: Counts,
    /// `KP_TRAIL_LOST`: loss no target could be charged with (the
    /// per-target map was full); every trail shows it, labelled host-wide.
    pub host_wide: Counts,
}

/// A trail's loss counts held by the agent.
#[derive(Clone, Debug, Default)]
pub struct Loss {
    /// The file's last `lost` record was added (first open in this agent's life).
    pub loaded: bool,
    /// Records left out at the size bound, by action.
    pub file_full: Counts,
    /// Kernel loss of earlier recording periods of this trail (before a
    /// `trail --off`, a release, a re-created cgroup), no longer in the
    /// kernel map; included in `kernel_ring_full`.
    pub kernel_earlier: Counts,
    /// Records the agent could not write to the file (it would not open,
    /// an append failed).
    pub write_failed: u64,
    /// The first write failure of this agent's life was journaled.
    pub failure_journaled: bool,
}

/// The non-zero counts of a `LOST_COUNT`-long list by name.
pub fn named(counts: &[u64]) -> Counts {
    let mut m = Counts::new();
    for (i, n) in (0..LOST_COUNT).zip(counts) {
        if *n > 0 {
            let name = match i {
                LOST_FLOWS => "flows-map-full",
                LOST_FILES => "file-writes-map-full",
                k => kind_name(k),
            };
            m.insert(name.to_owned(), *n);
        }
    }
    m
}

fn add(to: &mut Counts, from: &Counts) {
    for (k, n) in from {
        *to.entry(k.clone()).or_default() += n;
    }
}

fn counts(v: &Value) -> Counts {
    v.as_object().into_iter().flatten().filter_map(|(k, n)| Some((k.clone(), n.as_u64()?))).collect()
}

/// The parameters of the last `lost` record of the trail file at `path`
/// (read from the end: a few lines before the last of a 64 MiB file).
pub fn last_recorded(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    bytes
        .split(|b| *b == b'\n')
        .rev()
        .filter(|l| l.windows(15).any(|w| w == b"\"action\":\"lost\""))
        .find_map(|l| serde_json::from_slice::<Record>(l).ok().filter(|r| r.entry.action == "lost"))
        .map(|r| r.entry.params)
}

impl Loss {
    /// Adds what the file's last `lost` record counted (`last`) to what
    /// this agent counted before it opened the file, once. Its kernel part
    /// carries on as `kernel_earlier` when it was counted for another
    /// cgroup (the kernel's entries of that one are gone); for the same
    /// cgroup the kernel map still holds them.
    pub fn load(&mut self, last: Option<&Value>, cgroup_id: u64) {
        if std::mem::replace(&mut self.loaded, true) {
            return;
        }
        let Some(last) = last else { return };
        add(&mut self.file_full, &counts(&last["trail_file_full"]));
        self.write_failed += last["write_failed"].as_u64().unwrap_or(0);
        let same = last["cgroup_id"].as_u64() == Some(cgroup_id);
        add(&mut self.kernel_earlier, &counts(if same { &last["kernel_earlier"] } else { &last["kernel_ring_full"] }));
    }

    /// Moves `live` (the kernel entries about to be removed) into `kernel_earlier`.
    pub fn fold(&mut self, live: &Counts) {
        add(&mut self.kernel_earlier, live);
    }

    /// Takes back a [`Loss::fold`] that could not be written.
    pub fn unfold(&mut self, live: &Counts) {
        for (k, n) in live {
            if let Some(v) = self.kernel_earlier.get_mut(k) {
                *v = v.saturating_sub(*n);
            }
        }
        self.kernel_earlier.retain(|_, n| *n > 0);
    }

    /// Whether anything was lost.
    pub fn any(&self, k: &Kernel) -> bool {
        !(self.kernel_earlier.is_empty() && k.live.is_empty() && k.host_wide.is_empty() && self.file_full.is_empty() && self.write_failed == 0)
    }

    /// The parameters of a `lost` record (and of status): cumulative counts.
    pub fn record(&self, k: &Kernel) -> Value {
        let mut kernel = self.kernel_earlier.clone();
        add(&mut kernel, &k.live);
        let mut v = json!({
            "kernel_ring_full": kernel,
            "trail_file_full": self.file_full,
            "write_failed": self.write_failed,
            "cgroup_id": k.cgroup_id,
        });
        if !self.kernel_earlier.is_empty() {
            v["kernel_earlier"] = json!(self.kernel_earlier);
        }
        if !k.host_wide.is_empty() {
            v["kernel_host_wide"] = json!(k.host_wide);
            v["kernel_host_wide_note"] = json!("lost by some target on this host, not attributed: the per-target loss map was full");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    }

    #[test]
    fn a_restart_continues_the_counts() {
        let before = Loss { loaded: true, file_full: c(&[("exec", 5)]), kernel_earlier: c(&[("exec", 2)]), write_failed: 1, failure_journaled: false };
        let k = Kernel { cgroup_id: 7, live: c(&[("exec", 3)]), host_wide: Counts::new() };
        let last = before.record(&k);
        assert_eq!(last["kernel_ring_full"]["exec"], 5);
        // Restarted agent, same cgroup: the kernel still holds its 3.
        let mut after = Loss { write_failed: 4, ..Loss::default() };
        after.load(Some(&last), 7);
        assert_eq!(after.file_full, c(&[("exec", 5)]));
        assert_eq!(after.write_failed, 5);
        assert_eq!(after.record(&k)["kernel_ring_full"]["exec"], 5);
        // Loaded once only.
        after.load(Some(&last), 7);
        assert_eq!(after.write_failed, 5);
        // A re-created cgroup: the old one's counts are earlier ones.
        let mut other = Loss::default();
        other.load(Some(&last), 8);
        let k8 = Kernel { cgroup_id: 8, live: c(&[("signal", 1)]), host_wide: Counts::new() };
        let r = other.record(&k8);
        assert_eq!(r["kernel_ring_full"], json!({"exec": 5, "signal": 1}));
    }

    #[test]
    fn host_wide_loss_is_labelled() {
        let k = Kernel { cgroup_id: 7, live: Counts::new(), host_wide: c(&[("exec", 1)]) };
        let l = Loss::default();
        assert!(l.any(&k));
        let r = l.record(&k);
        assert_eq!(r["kernel_ring_full"], json!({}));
        assert_eq!(r["kernel_host_wide"]["exec"], 1);
    }

    #[test]
    fn names() {
        let mut v = vec![0; LOST_COUNT as usize];
        v[0] = 2;
        v[LOST_FLOWS as usize] = 1;
        assert_eq!(named(&v), c(&[("exec", 2), ("flows-map-full", 1)]));
    }
}
