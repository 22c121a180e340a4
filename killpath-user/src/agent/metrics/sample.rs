//! What one scrape reports, read in two parts like `status` (see
//! `agent/status.rs`): under the state lock, only copies of what the agent
//! holds and one walk of each kernel map ([`Sample::take`]); then, without
//! the lock, what the kernel's files say (tasks, attached links, the
//! journal's verification: [`Sample::finish`]). Nothing here asks the
//! workload anything: every value is the kernel's or the agent's.

use std::path::PathBuf;

use killpath_common::{cap, counter, protect, ThrottleCounts};

use super::super::State;
use crate::{journal, kernel::cgroup::Cgroup, throttle::class_name};

/// One target's numbers.
pub(super) struct TargetSample {
    pub name: String,
    cgroup: PathBuf,
    cgroup_id: u64,
    /// The level the kernel enforces (its `KP_TARGETS` entry), the
    /// registry's when the kernel has no entry.
    pub level: u32,
    /// Revoked capability bits, from the kernel entry as well.
    pub revoked: u32,
    /// Ceilings per class (per second); `tasks` for the pids limit.
    pub ceilings: Vec<(&'static str, u64)>,
    /// Per throttle bucket: class, counts summed over CPUs.
    pub buckets: Vec<(&'static str, ThrottleCounts)>,
    /// Refusals per capability index (`cap`), exact kernel counts.
    pub denials: Vec<(u32, u64)>,
    /// Self-protection refusals, by protection name.
    pub protections: Vec<(&'static str, u64)>,
    /// Moves out of the target the kernel saw (membership), if tracked.
    pub escapes: Option<u64>,
    /// Tasks the stop guard killed in the target (None: pins predate it).
    pub guard_kills: Option<u64>,
    /// Survivors of the last stop, if the target was stopped.
    pub last_stop_survivors: Option<u64>,
    /// Pending approvals naming this target.
    pub pending: u64,
    /// Tripwire firings on this target: rule, crossing to effect in force
    /// (µs; None when nothing was put in force: audit, pending, failed).
    pub tripwires: Vec<(String, Option<f64>)>,
    /// Live tasks in the cgroup (filled without the lock).
    pub tasks: Option<u64>,
}

/// The journal's verification, as last computed.
#[derive(Clone)]
pub(super) struct Verified {
    pub ok: bool,
    pub at_unix_s: f64,
}

/// Agent-wide numbers.
pub(super) struct Sample {
    pub targets: Vec<TargetSample>,
    pub guard_kills: u64,
    /// Host-wide isolation counters: (name, count).
    pub isolation: Vec<(&'static str, u64)>,
    pub marks_lost: Option<u64>,
    pub lsm: bool,
    pub journal_records: u64,
    verify: journal::VerifyOptions,
    journal_path: PathBuf,
    pin_dir: PathBuf,
    /// `gen-<hash>` of the running build's pins.
    pub generation: String,
    pub generations: u64,
    pub programs_attached: u64,
    pub target_links: u64,
    pub verified: Option<Verified>,
    cgroup_mount: PathBuf,
}

impl Sample {
    /// The part read under the state lock: copies and map walks, no file I/O.
    pub(super) fn take(s: &State) -> Self {
        // One walk of the per-target counters map, as `status` does.
        let counts = super::super::status::counters(s);
        let m = &s.enforcer.maps;
        let targets = s
            .registry
            .targets
            .values()
            .map(|t| {
                let id = t.cgroup_id;
                let kernel = m.get(id);
                let classes = m.throttle_classes(id);
                let mut ceilings: Vec<(&'static str, u64)> = Vec::new();
                for &class in &classes {
                    if let Some(v) = t.throttle.of_class(class) {
                        ceilings.push((class_name(class), v));
                    }
                }
                if let Some(n) = t.throttle.tasks {
                    ceilings.push(("tasks", n));
                }
                TargetSample {
                    name: t.name.clone(),
                    cgroup: t.cgroup.clone(),
                    cgroup_id: id,
                    level: kernel.map_or(t.level, |k| k.level),
                    revoked: kernel.map_or(t.revoked, |k| k.revoked),
                    ceilings,
                    buckets: classes.into_iter().map(|c| (class_name(c), m.throttle_counts(id, c))).collect(),
                    denials: (0..cap::COUNT).map(|i| (i, counts.get(&(id, i, 0)).copied().unwrap_or(0))).collect(),
                    protections: protect::NAMES
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (*n, counts.get(&(id, protect::FIRST + i as u32, 0)).copied().unwrap_or(0)))
                        .collect(),
                    escapes: m.members.as_ref().map(|mm| mm.escapes(id)),
                    guard_kills: m.guard_kills_of(id),
                    last_stop_survivors: t.last_stop.as_ref().map(|r| r.survivors as u64),
                    pending: s.pending_summary(&t.name)["count"].as_u64().unwrap_or(0),
                    tripwires: s.tripwires.rules.values().filter_map(|r| r.fired.get(&t.name)).map(|f| (f.rule.clone(), f.exposure_window_us)).collect(),
                    tasks: None,
                }
            })
            .collect();
        Sample {
            targets,
            guard_kills: m.guard_kills(),
            isolation: vec![
                ("packets_dropped", m.counter(counter::ISOLATE_SKB_DROPS)),
                ("tc_packets_dropped", m.counter(counter::ISOLATE_TC_DROPS)),
                ("connects_refused", m.counter(counter::ISOLATE_ADDR_DENIALS)),
                ("raw_sockets_refused", m.counter(counter::ISOLATE_SOCK_DENIALS)),
                ("devices_refused", m.counter(counter::ISOLATE_DEVICE_DENIALS)),
                ("xdp_setups_refused", m.counter(counter::ISOLATE_SOCKOPT_DENIALS)),
                ("lsm_denials", m.counter(counter::ISOLATE_LSM_DENIALS)),
            ],
            marks_lost: m.members.as_ref().map(|mm| mm.lost()),
            lsm: s.enforcer.lsm_error.is_none(),
            journal_records: s.journal.head().seq,
            verify: journal::VerifyOptions { anchor: None, key: s.journal.key().cloned(), written: Some(s.journal.head()) },
            journal_path: s.journal.path().to_owned(),
            generation: String::new(),
            generations: 0,
            programs_attached: 0,
            target_links: 0,
            pin_dir: s.config.pin_dir.clone(),
            verified: None,
            cgroup_mount: s.cgroup_mount.clone(),
        }
    }

    /// The part read without the lock: the kernel's files, and the journal
    /// verified again if `cache` is older than its period.
    /// `gen` is the running build's generation directory (computed once:
    /// it hashes the whole eBPF object).
    pub(super) fn finish(mut self, gen: &std::path::Path, cache: &super::journal::VerifyCache) -> Self {
        for t in &mut self.targets {
            // By id, on the agent's own cgroup2 mount (as `status` does).
            let cg = Cgroup::by_id_on(&self.cgroup_mount, &t.cgroup, t.cgroup_id).unwrap_or_else(|_| Cgroup::new(&t.cgroup));
            t.tasks = cg.exists().then(|| cg.procs_recursive().len() as u64);
        }
        let count = |p: PathBuf| std::fs::read_dir(p).map_or(0, |d| d.count() as u64);
        self.programs_attached = count(gen.join("links"));
        self.target_links = std::fs::read_dir(gen.join("targets")).map_or(0, |d| d.flatten().map(|e| count(e.path())).sum());
        self.generation = gen.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // As `pins::generations` counts them, without hashing the object again.
        self.generations =
            std::fs::read_dir(&self.pin_dir).map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("gen-")).count() as u64);
        self.verified = cache.get(&self.journal_path, &self.verify);
        self
    }
}

#[cfg(test)]
impl Sample {
    /// A sample with one degraded, egress-throttled target, for encoding tests.
    pub(super) fn fixture() -> Self {
        let web = TargetSample {
            name: "web".into(),
            cgroup: PathBuf::from("/nonexistent"),
            cgroup_id: 7,
            level: killpath_common::level::DEGRADE,
            revoked: crate::degrade::bit("net.connect").unwrap_or(0),
            ceilings: vec![("egress-bytes", 1000)],
            buckets: vec![("egress-bytes", ThrottleCounts { passed: 10, paced: 2, denied: 3 })],
            denials: (0..cap::COUNT).map(|i| (i, if i == 0 { 5 } else { 0 })).collect(),
            protections: Vec::new(),
            escapes: Some(0),
            guard_kills: Some(0),
            last_stop_survivors: None,
            pending: 1,
            tripwires: vec![("burst".into(), Some(1500.0))],
            tasks: Some(2),
        };
        Sample {
            targets: vec![web],
            guard_kills: 4,
            isolation: vec![("packets_dropped", 9)],
            marks_lost: Some(0),
            lsm: false,
            journal_records: 12,
            verify: Default::default(),
            journal_path: PathBuf::new(),
            pin_dir: PathBuf::new(),
            generation: "gen-0123456789abcdef".into(),
            generations: 1,
            programs_attached: 3,
            target_links: 2,
            verified: Some(Verified { ok: true, at_unix_s: 1.5 }),
            cgroup_mount: PathBuf::new(),
        }
    }
}
