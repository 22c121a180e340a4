//! Level 1 in the agent: apply and lift ceilings, resume paced tasks on
//! time, and measure the rate each bucket lets through.
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use killpath_common::{level, ThrottleCounts};
use serde_json::{json, Value};
use tracing::warn;

use super::{now_us, Done, State};
pub use crate::throttle::pacer::{resume_stopped, Pacer, PacerReport};
use crate::{
    error::{Error, Result},
    target::level_name,
    throttle::tasks,
    throttle::{class_name, Ceilings},
};

/// How often bucket counts are sampled for the measured rates.
pub const RATE_SAMPLE: Duration = Duration::from_millis(500);
/// Window of the "measured rate" in status.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Counts of every bucket at one moment: (cgroup id, class, counts).
pub type CountSnapshot = (Instant, Vec<(u64, u32, ThrottleCounts)>);

/// Samples bucket counts every [`RATE_SAMPLE`].
pub async fn rate_sampler(state: Arc<std::sync::Mutex<State>>) {
    let mut tick = tokio::time::interval(RATE_SAMPLE);
    loop {
        tick.tick().await;
        super::stop_first::background(&state).sample_throttle();
    }
}

impl State {
    /// Checks a throttle request against the target and this kernel, and
    /// returns the ceilings it results in (current ones merged with it).
    pub(super) fn plan_throttle(&self, name: &str, req: &Ceilings) -> Result<Ceilings> {
        let t = self.registry.get(name)?;
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "nothing left to throttle; restore it first" });
        }
        if req.is_empty() {
            req.validate()?;
        }
        let mut merged = t.throttle.clone();
        merged.merge(req);
        merged.validate()?;
        if merged.has_syscalls() {
            crate::throttle::syscall_class_table()?;
        }
        Ok(merged)
    }

    /// Applies ceilings: buckets (one map update per class), the sys_exit
    /// hook if this is the first syscall ceiling, the task limit.
    pub(super) fn throttle(&mut self, name: &str, ceilings: Ceilings, netdevs: &[String], received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        let buckets = ceilings.buckets()?;
        // Devices first: binding one can fail, and then nothing changes.
        let tc = self.bind_netdevs(name, t.cgroup_id, netdevs)?;
        self.enforcer.maps.set_throttle(t.cgroup_id, &buckets)?;
        let map_update_us = received.elapsed().as_micros() as u64;
        let hooking = Instant::now();
        let hook = match self.enforcer.sync_syscall_hook() {
            Ok(h) => h,
            Err(e) => {
                // Leave the kernel as it was: the previous ceilings.
                let old = t.throttle.buckets().unwrap_or_default();
                let _ = self.enforcer.maps.set_throttle(t.cgroup_id, &old);
                return Err(e);
            }
        };
        // Attaching sys_exit again soon after it was detached waits for an
        // RCU grace period in the kernel (tracepoint 1->0->1 transition):
        // reported apart, it is often most of the time to effect.
        let hook_sync_us = hooking.elapsed().as_micros() as u64;
        let tasks = match ceilings.tasks {
            Some(n) => {
                let pids = tasks::locate(name, &t.cgroup)?;
                let moved = tasks::apply(&pids, &t.cgroup, Some(n))?;
                Some(json!({"limit": n, "mechanism": pids.describe(), "moved_tasks": moved}))
            }
            None => None,
        };
        // New ceilings apply from now: tasks paused under the old ones
        // resume and are paused again if still over.
        self.pacer.resume_target(t.cgroup_id);
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let from = t.level;
        let to = from.max(level::THROTTLE);
        let tt = self.registry.get_mut(name)?;
        tt.throttle = ceilings.clone();
        tt.level = to;
        tt.since_unix_us = now_us();
        self.enforcer.maps.set(t.cgroup_id, t.state(to))?;
        self.registry.save()?;
        Ok(Done {
            result: json!({
                "target": name,
                "level": level_name(to),
                "from": level_name(from),
                "ceilings": ceilings,
                "tasks": tasks,
                "netdevs": tc,
                "syscall_hook_attached": hook,
                "io_uring": ceilings.has_syscalls().then(|| self.enforcer.iouring_coverage()),
                "class_hooks": ceilings.has_syscalls().then(|| self.enforcer.class_hooks(Some(&crate::throttle::class_hooks::classes_of(&ceilings)))),
                "map_update_us": map_update_us,
                "hook_sync_us": hook_sync_us,
                "time_to_effect_us": time_to_effect_us,
            }),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Lifts every ceiling of a target (restore below throttle, release).
    pub(super) fn unthrottle(&mut self, name: &str) -> Result<()> {
        let t = self.registry.get(name)?.clone();
        if t.throttle.is_empty() && self.enforcer.maps.throttle_classes(t.cgroup_id).is_empty() {
            return Ok(());
        }
        self.enforcer.maps.clear_throttle(t.cgroup_id)?;
        self.enforcer.sync_syscall_hook()?;
        if let Some(pids) = tasks::existing(name, &t.cgroup).filter(|_| t.throttle.tasks.is_some()) {
            tasks::apply(&pids, &t.cgroup, None)?;
            tasks::cleanup(&pids);
        }
        self.pacer.resume_target(t.cgroup_id);
        resume_stopped(&t.cgroup);
        self.registry.get_mut(name)?.throttle = Ceilings::default();
        Ok(())
    }

    /// Re-installs ceilings the kernel lost (a new build's maps) and
    /// resumes tasks paused while the agent was down. Called at start.
    pub(super) fn recover_throttle(&mut self) -> Result<Vec<Value>> {
        let mut changes = Vec::new();
        let list: Vec<(String, u64, std::path::PathBuf, Ceilings)> = self
            .registry
            .targets
            .values()
            .filter(|t| !t.throttle.is_empty())
            .map(|t| (t.name.clone(), t.cgroup_id, t.cgroup.clone(), t.throttle.clone()))
            .collect();
        for (name, id, cgroup, c) in list {
            let buckets = c.buckets()?;
            if self.enforcer.maps.throttle_classes(id).len() != buckets.len() {
                self.enforcer.maps.set_throttle(id, &buckets)?;
                changes.push(json!({"target": name, "change": "throttle buckets re-installed"}));
            }
            // SIGCONT first: it discards a SIGSTOP still pending in a task
            // the previous pacer froze, which would stop it at the thaw.
            let n = resume_stopped(&cgroup);
            if n > 0 {
                changes.push(json!({"target": name, "change": format!("{n} paused task(s) resumed")}));
            }
            // A target the previous agent's pacer froze for its debt (and
            // never thawed: it died) is thawed here, and only below stopped
            // (registry and kernel map agree, or the higher wins): a stop's
            // freeze is never undone here. A still unpaid debt pauses it
            // again at its next operation.
            let lvl = self.registry.get(&name).map(|t| t.level).unwrap_or(level::NORMAL).max(self.enforcer.maps.get(id).map_or(level::NORMAL, |s| s.level));
            if lvl < level::STOPPED && c.paces() {
                if let Ok((cg, _)) = self.target_cgroup(&name) {
                    if cg.has_freeze() && cg.freeze_requested().unwrap_or(false) && cg.freeze(false).is_ok() {
                        changes.push(json!({"target": name, "change": "thawed: the previous agent's pacer had frozen it for its debt"}));
                    }
                }
            }
        }
        self.enforcer.sync_syscall_hook()?;
        Ok(changes)
    }

    /// Periodic work: samples bucket counts and, where `--tasks` uses a v1
    /// pids cgroup, moves in any task that joined the target's cgroup2
    /// directory from outside (forks join by themselves).
    pub fn sample_throttle(&mut self) {
        self.pacer_reports();
        for t in self.registry.targets.values().filter(|t| t.throttle.tasks.is_some()) {
            if let Some(p @ tasks::PidsCgroup::V1(_)) = tasks::existing(&t.name, &t.cgroup) {
                if let Err(e) = tasks::sync_members(&p, &t.cgroup) {
                    warn!(target = %t.name, "keeping --tasks members in {}: {e}", p.describe());
                }
            }
        }
        let snap: Vec<(u64, u32, ThrottleCounts)> = self
            .registry
            .targets
            .values()
            .filter(|t| !t.throttle.is_empty())
            .flat_map(|t| {
                let m = &self.enforcer.maps;
                m.throttle_classes(t.cgroup_id).into_iter().map(move |c| (t.cgroup_id, c, m.throttle_counts(t.cgroup_id, c)))
            })
            .collect();
        self.throttle_history.push_back((Instant::now(), snap));
        let keep = (RATE_WINDOW.as_millis() / RATE_SAMPLE.as_millis()) as usize + 2;
        while self.throttle_history.len() > keep {
            self.throttle_history.pop_front();
        }
    }

    /// Journals (high priority) and alerts what the pacer reported: a
    /// target thawed behind it (and frozen again), or a freeze that failed.
    fn pacer_reports(&mut self) {
        // Coalesced per target and kind: one record per sample (0.5 s)
        // however often the pacer had to re-freeze, with the running count.
        let mut reports: Vec<PacerReport> = Vec::new();
        for r in self.pacer.reports.try_iter() {
            let same = |o: &PacerReport| match (o, &r) {
                (PacerReport::ThawUndone { cgroup_id: a, .. }, PacerReport::ThawUndone { cgroup_id: b, .. }) => a == b,
                (PacerReport::FreezeFailed { cgroup_id: a, .. }, PacerReport::FreezeFailed { cgroup_id: b, .. }) => a == b,
                _ => false,
            };
            match reports.iter_mut().find(|o| same(o)) {
                Some(o) => *o = r,
                None => reports.push(r),
            }
        }
        for r in reports {
            let (id, action, message, details) = match r {
                PacerReport::ThawUndone { cgroup_id, times } => (
                    cgroup_id,
                    "throttle-thaw-undone",
                    format!(
                        "a paced target was thawed behind the pacer (cgroup.freeze written 0, {times} time(s) so far); frozen again until its debt is paid"
                    ),
                    json!({"cgroup_id": cgroup_id, "times": times}),
                ),
                PacerReport::FreezeFailed { cgroup_id, error } => (
                    cgroup_id,
                    "throttle-freeze-failed",
                    format!("cannot freeze a paced target ({error}): it is held by SIGSTOP alone, which its own tasks can undo with SIGCONT"),
                    json!({"cgroup_id": cgroup_id, "error": error}),
                ),
            };
            let target = self.registry.targets.values().find(|t| t.cgroup_id == id).map(|t| t.name.clone());
            warn!(target = ?target, "{message}");
            self.tamper_alert(target.as_deref(), action, &message, details);
        }
    }

    /// Per-second rate of `passed` over the last [`RATE_WINDOW`].
    fn measured_rate(&self, cgroup_id: u64, class: u32, now_counts: &ThrottleCounts) -> Option<f64> {
        let now = Instant::now();
        let (t, old) = self
            .throttle_history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW + RATE_SAMPLE)
            .and_then(|(t, snap)| snap.iter().find(|(c, k, _)| *c == cgroup_id && *k == class).map(|(_, _, n)| (*t, *n)))?;
        let dt = now.duration_since(t).as_secs_f64();
        (dt >= 0.5).then(|| now_counts.passed.saturating_sub(old.passed) as f64 / dt)
    }

    /// The `throttle` block of a target in `status`.
    pub(super) fn throttle_status(&self, t: &crate::target::Target) -> Value {
        if t.throttle.is_empty() {
            return Value::Null;
        }
        let c = &t.throttle;
        let buckets: Vec<Value> = self
            .enforcer
            .maps
            .throttle_classes(t.cgroup_id)
            .into_iter()
            .map(|class| {
                let counts = self.enforcer.maps.throttle_counts(t.cgroup_id, class);
                let ceiling = c.of_class(class);
                json!({
                    "class": class_name(class),
                    "ceiling_per_s": ceiling,
                    "measured_per_s": self.measured_rate(t.cgroup_id, class, &counts).map(|r| (r * 10.0).round() / 10.0),
                    "passed": counts.passed,
                    "paced": counts.paced,
                    "denied": counts.denied,
                })
            })
            .collect();
        let tasks = c.tasks.map(|limit| {
            let pids = tasks::existing(&t.name, &t.cgroup);
            json!({
                "limit": limit,
                "current": pids.as_ref().and_then(|p| p.current()),
                "forks_refused": pids.as_ref().and_then(|p| p.refused()),
                "mechanism": pids.map(|p| p.describe()),
            })
        });
        let view = self.pacer.view.lock().map(|m| m.get(&t.cgroup_id).cloned().unwrap_or_default()).unwrap_or_default();
        json!({
            "ceilings": c,
            "buckets": buckets,
            "tasks": tasks,
            "tasks_paused_now": view.tasks_paused,
            "frozen_for_debt": view.frozen,
            "freezes": view.freezes,
            "thaws_undone": view.thaws_undone,
            "paused_not_resumed": view.not_resumed,
            "syscall_hook_attached": self.enforcer.syscall_hook_attached(),
            "io_uring": c.has_syscalls().then(|| self.enforcer.iouring_coverage()),
            "class_hooks": c.has_syscalls().then(|| self.enforcer.class_hooks(Some(&crate::throttle::class_hooks::classes_of(c)))),
            "needs_agent": c.paces().then_some(
                "pace: the kernel stops a process at its ceiling (SIGSTOP) and the agent freezes the target's cgroup until the debt is paid \
                 (SIGCONT from inside cannot undo a freeze), then thaws it and resumes the process (SIGCONT); \
                 while the agent is down a paused task stays paused until it is back, but only SIGSTOP holds it (a sibling's SIGCONT undoes that). \
                 Counting, deny mode, egress and --tasks hold without the agent."
            ),
        })
    }
}

/// Recent bucket count snapshots, oldest first.
pub type History = VecDeque<CountSnapshot>;
