//! The activity trail in the agent: draining the kernel's event ring into
//! each recording target's trail file, snapshotting its flow and
//! file-write counters (every [`SNAPSHOT_EVERY`], at each level change and
//! at stop), and the `trail` command (list, summary, verify, on/off).
//!
//! Records are written with the journal's chain (`trail::store`), one
//! batch per drain and target. Events of a target this agent does not know
//! (released between the event and the drain) are counted, not written.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use killpath_common::trail::TrailEvent;
use serde_json::{json, Value};
use tracing::warn;

use super::{Caller, State};
use crate::{
    error::{Error, Result},
    journal,
    target::level_name,
    trail::{
        decode::{self, Clock},
        loss::{self, Kernel, Loss},
        store::{self, TrailFile},
        Request,
    },
};

/// How often flows, file writes and loss counters are written to the trails.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// The open trail files and what was last written of each target's counters.
#[derive(Default)]
pub struct Trails {
    pub(super) files: HashMap<String, TrailFile>,
    /// The last flows / file-writes snapshot written, per target (unchanged: not written again).
    last: HashMap<(String, &'static str), String>,
    /// Events of targets this agent does not know.
    pub unknown: u64,
    /// Level changes not written yet (see [`State::trail_level`]).
    deferred: Vec<Deferred>,
    /// What each trail lost (see `trail::loss`): written into its `lost`
    /// records, shown by status.
    pub loss: HashMap<String, Loss>,
    /// The trail heads written into the main journal (`trail_anchor`).
    pub(super) anchors: super::trail_anchor::Anchors,
}

/// A level change of a recording target, written by the background tick.
struct Deferred {
    name: String,
    from: u32,
    /// The closing phase's counters, when taken at the change (None after
    /// a stop: nothing of the target runs any more, so the tick reads the
    /// same counts without delaying the stop).
    snapshot: Option<Vec<journal::Entry>>,
    marker: journal::Entry,
}

/// How long the drain waits after a batch: events gather in the ring
/// meanwhile, so a steady event rate costs at most ten appends (and
/// fdatasyncs) a second rather than one per event. The ring holds over
/// 1,700 events, so that is 17,000 events/s before the kernel counts loss.
const DRAIN_PAUSE: Duration = Duration::from_millis(100);

/// Drains the trail ring whenever it is readable.
pub async fn event_reader(rb: aya::maps::RingBuf<aya::maps::MapData>, state: Arc<Mutex<State>>) {
    super::ring::read_batches::<TrailEvent, _, _>(rb, "trail", |events| {
        let state = state.clone();
        async move {
            // Appends fdatasync: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = super::stop_first::background(&state);
                s.trail_events(&events);
            })
            .await;
            tokio::time::sleep(DRAIN_PAUSE).await;
        }
    })
    .await;
}

/// Writes every recording target's counters every [`SNAPSHOT_EVERY`].
pub async fn snapshot_watch(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    loop {
        tick.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut s = super::stop_first::background(&state);
            s.trail_flush_deferred();
            let names: Vec<String> = s.registry.targets.values().filter(|t| t.trail).map(|t| t.name.clone()).collect();
            for n in names {
                s.trail_snapshot(&n, None);
            }
        })
        .await;
    }
}

impl State {
    /// The kernel's loss counts for `name`'s current cgroup (0 when the
    /// target is gone: its entries were folded at release).
    fn trail_kernel_lost(&self, name: &str) -> Kernel {
        let id = self.registry.get(name).map_or(0, |t| t.cgroup_id);
        let live = if id == 0 { Default::default() } else { loss::named(&self.enforcer.trail.lost_of(id)) };
        Kernel { cgroup_id: id, live, host_wide: loss::named(&self.enforcer.trail.lost_host_wide()) }
    }

    /// Appends `entries` to `name`'s trail, opening it on first use; with
    /// `report`, the loss counters too when they moved.
    fn trail_append(&mut self, name: &str, entries: Vec<journal::Entry>, report: bool) {
        let kernel = self.trail_kernel_lost(name);
        self.trail_append_with(name, entries, report, &kernel);
    }

    /// [`State::trail_append`] with the kernel's counts as given.
    fn trail_append_with(&mut self, name: &str, entries: Vec<journal::Entry>, report: bool, kernel: &Kernel) {
        let max = self.config.trail_max_bytes.unwrap_or(store::DEFAULT_MAX_BYTES);
        let path = store::path(&self.config.state_dir, name);
        let n = entries.len() as u64;
        let file = match self.trail.files.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match TrailFile::open(&path, max) {
                Ok(f) => v.insert(f),
                Err(e) => return self.trail_write_failed(name, n, &format!("trail file {}: {e}", path.display())),
            },
        };
        let loss = self.trail.loss.entry(name.to_owned()).or_default();
        // First open in this agent's life: the counts go on from the file's.
        loss.load(Some(file.last_lost()).filter(|v| !v.is_null()), kernel.cgroup_id);
        if let Err(e) = file.append(name, entries, loss, kernel, report) {
            // Reopened (and re-verified) on the next append.
            self.trail.files.remove(name);
            return self.trail_write_failed(name, n, &format!("writing the trail: {e}"));
        }
        if report {
            self.trail_anchor(name, false);
        }
    }

    /// Counts records that could not be written; the first of a run of
    /// failures is journaled (the main journal) and alerted: loss is never
    /// silent, also when the trail file itself is the problem.
    fn trail_write_failed(&mut self, name: &str, n: u64, why: &str) {
        warn!(target = name, "{why}: {n} trail records not written");
        let loss = self.trail.loss.entry(name.to_owned()).or_default();
        loss.write_failed += n;
        if !std::mem::replace(&mut loss.failure_journaled, true) {
            let mut e = journal::Entry::new(journal::Actor::Source { source: "kernel".into() }, journal::Phase::Event, "trail-write-failed");
            e.target = Some(name.to_owned());
            e.params = json!({"records": n, "error": why});
            if let Err(err) = self.journal.append(e) {
                warn!("journaling a trail write failure: {err}");
            }
            self.send_alert(json!({"type": "alert", "priority": "high", "action": "trail-write-failed", "target": name, "message": why}));
        }
    }

    /// Moves cgroup `id`'s kernel loss counts into `name`'s trail (its
    /// `kernel_earlier`, written at once in a `lost` record), then out of
    /// the kernel map: when recording stops (`trail --off`, release), so
    /// the map holds recording targets only and the trail's counts go on
    /// if it records again, under the same cgroup or a new one. Called
    /// once the switch is off: no hook counts for `id` any more.
    fn trail_fold_lost(&mut self, name: &str, id: u64) {
        let live = loss::named(&self.enforcer.trail.lost_of(id));
        if live.is_empty() {
            return;
        }
        // Not read back from the file yet (it would not open): the entries
        // stay in the kernel, still counted from there.
        if !self.trail.loss.get(name).is_some_and(|l| l.loaded) {
            return;
        }
        if let Some(l) = self.trail.loss.get_mut(name) {
            l.fold(&live);
        }
        let kernel = Kernel { cgroup_id: id, live: Default::default(), host_wide: loss::named(&self.enforcer.trail.lost_host_wide()) };
        self.trail_append_with(name, Vec::new(), true, &kernel);
        if self.trail.files.contains_key(name) {
            self.enforcer.trail.clear_lost(id);
        } else if let Some(l) = self.trail.loss.get_mut(name) {
            // Not written: counted from the kernel's entries still.
            l.unfold(&live);
        }
    }

    /// Writes a batch of kernel events to their targets' trails.
    pub(super) fn trail_events(&mut self, events: &[TrailEvent]) {
        let clock = Clock::now();
        let names: HashMap<u64, String> = self.registry.targets.values().map(|t| (t.cgroup_id, t.name.clone())).collect();
        let mut by: BTreeMap<String, Vec<journal::Entry>> = BTreeMap::new();
        for ev in events {
            let Some(name) = names.get(&ev.target) else {
                self.trail.unknown += 1;
                continue;
            };
            let (action, mut params) = decode::event(ev, &clock);
            if let (Some(dev), Some(ino)) = (params.get("dev").and_then(Value::as_str), params.get("ino").and_then(Value::as_u64)) {
                if let Some(exe) = decode::exe_path(ev.pid, dev, ino) {
                    params["exe"] = json!(exe);
                }
            }
            by.entry(name.clone()).or_default().push(store::entry(name, action, Some(ev.level), params));
        }
        for (name, entries) in by {
            self.trail_append(&name, entries, false);
        }
    }

    /// Writes `name`'s flows and file-write counters if they changed, and
    /// the loss counters; `level` overrides the level they are counted at
    /// (a level change closes the phase of the level it leaves).
    pub(super) fn trail_snapshot(&mut self, name: &str, level: Option<u32>) {
        self.trail_flush_deferred();
        let Some(entries) = self.trail_snapshot_entries(name, level) else { return };
        // Even with nothing new: the loss counters are checked.
        self.trail_append(name, entries, true);
    }

    /// The records of `name`'s counters that changed since last written
    /// (None: the target does not record).
    fn trail_snapshot_entries(&mut self, name: &str, level: Option<u32>) -> Option<Vec<journal::Entry>> {
        let t = self.registry.get(name).ok()?;
        if !t.trail {
            return None;
        }
        let (id, level) = (t.cgroup_id, level.unwrap_or(t.level));
        let clock = Clock::now();
        let flows = self.enforcer.trail.flows_of(id);
        let files = self.enforcer.trail.files_of(id);
        // Compared raw: the decoded times move by a µs or two between two
        // reads of the clocks, which would write every unchanged table again.
        let raw = [("flows", format!("{flows:?}")), ("file-writes", format!("{files:?}"))];
        let flows: Vec<Value> = flows.iter().map(|(k, v)| decode::flow(k, v, &clock)).collect();
        let files: Vec<Value> = files.iter().map(|(k, v)| decode::file(k, v, &clock)).collect();
        let mut entries = Vec::new();
        for ((what, key, list), (_, raw)) in [("flows", "flows", flows), ("file-writes", "files", files)].into_iter().zip(raw) {
            if list.is_empty() {
                continue;
            }
            if self.trail.last.get(&(name.to_owned(), what)) == Some(&raw) {
                continue;
            }
            self.trail.last.insert((name.to_owned(), what), raw);
            entries.push(store::entry(name, what, Some(level), json!({key: Value::Array(list), "level": level_name(level)})));
        }
        Some(entries)
    }

    /// A level change of `name` (from `State::execute`): the counters as
    /// they closed the phase at `from`, then the change itself.
    ///
    /// Nothing is written here: the change's answer (and a stop above all)
    /// never waits for the trail's fdatasyncs; the background tick writes
    /// it within [`SNAPSHOT_EVERY`], and any read of the trail first.
    pub(super) fn trail_level(&mut self, name: &str, from: u32, to: u32, action: &str) {
        if !self.registry.get(name).is_ok_and(|t| t.trail) {
            return;
        }
        let snapshot = if to >= killpath_common::level::STOPPED { None } else { self.trail_snapshot_entries(name, Some(from)) };
        let marker = store::entry(name, "level", Some(to), json!({"from": level_name(from), "to": level_name(to), "by": action}));
        self.trail.deferred.push(Deferred { name: name.to_owned(), from, snapshot, marker });
    }

    /// Writes the level changes [`State::trail_level`] deferred, in order.
    pub(super) fn trail_flush_deferred(&mut self) {
        for d in std::mem::take(&mut self.trail.deferred) {
            let mut entries = match d.snapshot {
                Some(e) => e,
                None => self.trail_snapshot_entries(&d.name, Some(d.from)).unwrap_or_default(),
            };
            entries.push(d.marker);
            self.trail_append(&d.name, entries, true);
            self.trail_anchor(&d.name, true);
        }
    }

    /// KP_TRAIL_ON from the registry (at start: a target recorded by an
    /// older agent keeps recording; the pinned map normally agrees).
    pub(super) fn trail_sync(&mut self) {
        let want: Vec<(u64, bool)> = self.registry.targets.values().map(|t| (t.cgroup_id, t.trail)).collect();
        let known: std::collections::HashSet<u64> = want.iter().map(|w| w.0).collect();
        for (id, on) in want {
            if let Err(e) = self.enforcer.trail.set(id, on) {
                warn!("trail switch of cgroup {id}: {e}");
            }
        }
        for id in self.enforcer.trail.recording() {
            if !known.contains(&id) {
                let _ = self.enforcer.trail.set(id, false);
            }
        }
        // Loss counted for a cgroup no target has any more (re-created
        // while no agent ran: its counts were in the trail's last `lost`
        // record, carried on as earlier ones when the file is opened).
        for id in self.enforcer.trail.lost_targets() {
            if !known.contains(&id) {
                self.enforcer.trail.clear_lost(id);
            }
        }
    }

    /// Starts or stops recording `name`, inside the caller's transaction
    /// (`run --trail`, `adopt --trail`, `trail --on/--off`).
    pub(super) fn trail_set(&mut self, name: &str, on: bool) -> Result<Value> {
        let action = if on { "trail-on" } else { "trail-off" };
        let t = self.registry.get(name)?.clone();
        if !on {
            // What it did up to now, before the switch goes off.
            self.trail_snapshot(name, None);
        }
        self.enforcer.trail.set(t.cgroup_id, on)?;
        if !on {
            self.trail_fold_lost(name, t.cgroup_id);
        }
        self.registry.get_mut(name)?.trail = on;
        self.registry.save()?;
        let e = store::entry(name, action, Some(t.level), json!({"level": level_name(t.level), "cgroup_id": t.cgroup_id}));
        self.trail_append(name, vec![e], true);
        self.trail_anchor(name, true);
        let path = store::path(&self.config.state_dir, name);
        let files = if self.enforcer.lsm_error.is_none() && self.enforcer.trail.config().files != 0 {
            "recorded (BPF LSM)"
        } else {
            "NOT recorded: file events need BPF LSM hooks running (see `killpath probe`)"
        };
        Ok(json!({"target": name, "recording": on, "trail": path, "files": files}))
    }

    /// Starts or stops recording `name` (journaled).
    fn trail_switch(&mut self, caller: Caller, name: &str, on: bool) -> Result<Value> {
        self.registry.get(name)?;
        let action = if on { "trail-on" } else { "trail-off" };
        self.execute(caller, action, Some(name), Value::Null, |s| {
            let result = s.trail_set(name, on)?;
            Ok(super::Done { result, to_level: None, time_to_effect_us: None })
        })
    }

    /// What `status` shows of a target's trail.
    pub(super) fn trail_status(&self, t: &crate::target::Target) -> Value {
        let path = store::path(&self.config.state_dir, &t.name);
        let bytes = std::fs::metadata(&path).map(|m| m.len()).ok();
        let files =
            if self.enforcer.lsm_error.is_none() && self.enforcer.trail.config().files != 0 { "files recorded" } else { "files not recorded: no BPF LSM" };
        let loss = self.trail.loss.get(&t.name).cloned().unwrap_or_default();
        let lost = loss.record(&self.trail_kernel_lost(&t.name));
        json!({"recording": t.trail && self.enforcer.trail.records(t.cgroup_id), "file": bytes.map(|_| path), "bytes": bytes, "files": files, "write_failed": loss.write_failed, "lost": lost})
    }

    /// Where a stop result or a drill report points the rollback planner
    /// (None: the target does not record).
    pub(super) fn trail_pointer(&self, t: &crate::target::Target) -> Value {
        if !t.trail {
            return Value::Null;
        }
        json!({"summary": format!("killpath trail {} --summary", t.name), "file": store::path(&self.config.state_dir, &t.name)})
    }

    /// Called when a target is released: its counters leave the kernel
    /// maps (its trail file stays, for the rollback planner).
    pub(super) fn trail_release(&mut self, name: &str, cgroup_id: u64) {
        self.trail_snapshot(name, None);
        let _ = self.enforcer.trail.set(cgroup_id, false);
        self.trail_fold_lost(name, cgroup_id);
        // After the last record (the folded loss): the head it anchors is final.
        self.trail_anchor(name, true);
        self.trail.files.remove(name);
        self.enforcer.trail.forget(cgroup_id);
    }

    /// The `trail` command: recording on or off; a read (list, summary,
    /// verify) is served here under the lock only when not served by
    /// `trail_read` (the server reads without it).
    pub(super) fn trail_cmd(&mut self, caller: Caller, req: Request) -> Result<Value> {
        if req.on && req.off {
            return Err(Error::InvalidRequest("trail takes --on or --off, not both".into()));
        }
        if req.on || req.off {
            crate::target::validate_name(&req.name)?;
            return self.trail_switch(caller, &req.name, req.on);
        }
        self.trail_prepare(&req)?.serve()
    }
}
