//! What the agent counts as it serves, since it started (Prometheus
//! counters reset with the process, which `rate()` handles): socket
//! requests by command and outcome, and each level change's time to
//! effect. Everything else a scrape reports is read at scrape time.
//!
//! Process-wide, so the socket server and the journaled transaction each
//! add one call and no field of `State`; no lock here is held for more
//! than an increment, and never with the state lock taken after it.

use std::{
    collections::BTreeSet,
    sync::{Mutex, OnceLock, PoisonError},
};

use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};

use crate::{client::protocol::Response, target::level_name};

pub(super) type Labels = Vec<(&'static str, String)>;

/// Time-to-effect buckets, seconds: 50 µs to 2.5 s (a map update is tens
/// of µs; a stop waits for the cgroup to empty).
const EFFECT_BUCKETS: [f64; 14] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5];

fn new_effect_histogram() -> Histogram {
    Histogram::new(EFFECT_BUCKETS)
}

pub(super) struct Recorded {
    /// {command, outcome}: outcome is `ok` or the error's socket code.
    pub requests: Family<Labels, Counter>,
    /// {command}: requests refused for who sent them.
    pub refused: Family<Labels, Counter>,
    /// {target, level}: receipt of the command to the kernel enforcing it.
    pub effect: Family<Labels, Histogram, fn() -> Histogram>,
    /// The (target, level) pairs `effect` holds, to drop a released target's.
    effect_keys: Mutex<BTreeSet<(String, &'static str)>>,
    /// {target}: stops that left a survivor (0 from the target's first stop).
    pub stops_with_survivors: Family<Labels, Counter>,
    /// The targets `stops_with_survivors` holds.
    stop_keys: Mutex<BTreeSet<String>>,
}

pub(super) fn recorded() -> &'static Recorded {
    static R: OnceLock<Recorded> = OnceLock::new();
    R.get_or_init(|| Recorded {
        requests: Family::default(),
        refused: Family::default(),
        effect: Family::new_with_constructor(new_effect_histogram as fn() -> Histogram),
        effect_keys: Mutex::default(),
        stops_with_survivors: Family::default(),
        stop_keys: Mutex::default(),
    })
}

/// Counts one answered socket request (`command`: its wire name, or
/// `invalid` for a line that did not parse).
pub(in crate::agent) fn count_request(command: &str, response: &Response) {
    let outcome = response.error.as_ref().map_or_else(|| "ok".to_owned(), |e| e.code.clone());
    if outcome == "forbidden" {
        recorded().refused.get_or_create(&vec![("command", command.to_owned())]).inc();
    }
    recorded().requests.get_or_create(&vec![("command", command.to_owned()), ("outcome", outcome)]).inc();
}

/// Records a level change's time to effect (from the transaction's result).
pub(in crate::agent) fn observe_effect(target: &str, level: Option<u32>, time_to_effect_us: Option<u64>) {
    if let (Some(level), Some(us)) = (level, time_to_effect_us) {
        let r = recorded();
        let level = level_name(level);
        r.effect_keys.lock().unwrap_or_else(PoisonError::into_inner).insert((target.to_owned(), level));
        r.effect.get_or_create(&effect_labels(target, level)).observe(us as f64 / 1e6);
    }
}

/// Counts a completed stop, and whether it left survivors (the counter
/// exists from a target's first stop, so `increase()` sees the first one).
pub(in crate::agent) fn observe_stop(target: &str, survivors: u64) {
    let r = recorded();
    r.stop_keys.lock().unwrap_or_else(PoisonError::into_inner).insert(target.to_owned());
    let c = r.stops_with_survivors.get_or_create(&vec![("target", target.to_owned())]);
    if survivors > 0 {
        c.inc();
    }
}

fn effect_labels(target: &str, level: &str) -> Labels {
    vec![("target", target.to_owned()), ("level", level.to_owned())]
}

/// Drops the time-to-effect histograms of targets no longer in the
/// registry (released), so a scrape lists only the targets it has.
pub(super) fn forget_targets_except(present: &BTreeSet<&str>) {
    let r = recorded();
    let mut keys = r.effect_keys.lock().unwrap_or_else(PoisonError::into_inner);
    keys.retain(|(target, level)| {
        let keep = present.contains(target.as_str());
        if !keep {
            r.effect.remove(&effect_labels(target, level));
        }
        keep
    });
    drop(keys);
    let mut stops = r.stop_keys.lock().unwrap_or_else(PoisonError::into_inner);
    stops.retain(|target| {
        let keep = present.contains(target.as_str());
        if !keep {
            r.stops_with_survivors.remove(&vec![("target", target.clone())]);
        }
        keep
    });
}
