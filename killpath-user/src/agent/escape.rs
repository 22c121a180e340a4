//! Membership follows the task, in the agent: marking the tasks already
//! inside a target (the kernel marks those that enter later), and acting
//! on escape attempts the kernel reports (`KP_ESCAPE_EVENTS`, see
//! `killpath-ebpf/src/members.rs`).
//!
//! Each escape attempt is journaled as a high-priority record and raised
//! as an alert (event stream, operator hook), then reverted: a task of a
//! target below isolate is moved back into the target's cgroup; a task of
//! an isolated or stopped target is killed (by the kernel already when it
//! moved itself, otherwise here through a pidfd, and by the stop guard at
//! its next context switch).
use std::sync::{Arc, Mutex};

use killpath_common::{escape, level, EscapeEvent};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{now_us, State};
use crate::{
    journal::{Actor, Entry, Phase},
    kernel::{
        cgroup::Cgroup,
        members::{exited, kill_if_marked, task_gone, with_pidfd_if_marked},
    },
    target::{level_name, Target},
};

/// Reads escape attempts from the kernel's ring buffer and acts on each.
pub async fn escape_reader(rb: aya::maps::RingBuf<aya::maps::MapData>, state: Arc<Mutex<State>>) {
    super::ring::read_batches::<EscapeEvent, _, _>(rb, "escape", |events| {
        let state = state.clone();
        async move {
            // Journaling fsyncs: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = super::stop_first::background(&state);
                for ev in events {
                    s.on_escape(&ev);
                }
            })
            .await;
        }
    })
    .await;
}

impl State {
    /// Marks every task now in `t`'s cgroup subtree as `t`'s (tasks that
    /// were there before the kernel could see them enter).
    /// The targets enclosing `t` (not `t` itself), in the registry's order.
    pub(super) fn outer_targets(&self, t: &Target) -> Vec<&Target> {
        self.registry.enclosing(&t.cgroup).into_iter().filter(|o| o.cgroup != t.cgroup).collect()
    }

    pub(super) fn mark_target(&mut self, t: &Target) -> usize {
        let outer: Vec<u64> = self.outer_targets(t).iter().map(|o| o.cgroup_id).collect();
        let Some(m) = self.enforcer.maps.members.as_mut() else { return 0 };
        m.mark_cgroup(&Cgroup::new(&t.cgroup), t.cgroup_id, &outer)
    }

    /// Marks every task in `t`'s cgroup subtree as `t`'s, replacing the
    /// marks of other targets: after the agent moved a process tree into
    /// `t`'s new cgroup ([`crate::kernel::members::MemberMaps::mark_moved`]).
    pub(super) fn mark_moved(&mut self, t: &Target, moved: &[u32]) -> usize {
        let outer: Vec<u64> = self.outer_targets(t).iter().map(|o| o.cgroup_id).collect();
        let Some(m) = self.enforcer.maps.members.as_mut() else { return 0 };
        m.mark_moved(&Cgroup::new(&t.cgroup), t.cgroup_id, moved, &outer)
    }

    /// Marks the tasks of every target, outermost first so that nested
    /// targets take their own tasks over, and drops marks of dead tasks.
    pub(super) fn mark_all_targets(&mut self) {
        let mut list: Vec<Target> = self.registry.targets.values().cloned().collect();
        list.sort_by_key(|t| t.depth);
        let mut added = 0;
        for t in &list {
            added += self.mark_target(t);
        }
        if let Some(m) = self.enforcer.maps.members.as_mut() {
            m.prune_dead();
        }
        info!(added, "membership marks of existing targets' tasks");
    }

    /// Journals, alerts and reverts one escape attempt.
    pub(super) fn on_escape(&mut self, ev: &EscapeEvent) {
        let t = self.registry.targets.values().find(|t| t.cgroup_id == ev.target).cloned();
        let kind = if ev.kind == escape::BORN_OUTSIDE { "born-outside" } else { "cgroup-move" };
        // Still the escaped process: its mark is there (the exit hook drops
        // it) and it is not exiting (a zombie is moved nowhere), checked
        // with a pidfd open on it (`with_pidfd_if_marked`). The event is a
        // while old: by now its number may be another's.
        let marked = |pid: u32| self.enforcer.maps.members.as_ref().and_then(|m| m.get(pid)).is_some_and(|mk| mk.target == ev.target && mk.tgid == ev.tgid);
        let still = || (marked(ev.pid) || marked(ev.tgid)) && !task_gone(ev.tgid, ev.tgid);
        let outcome = match &t {
            None => "ignored: not a target of this agent".to_owned(),
            Some(_) if ev.action == escape::ACTION_KILLED => "killed in the kernel as it moved".to_owned(),
            Some(t) if t.level >= level::ISOLATE => {
                if kill_if_marked(ev.tgid, still) {
                    "killed (target isolated or stopped)".to_owned()
                } else {
                    "already gone".to_owned()
                }
            }
            // Moved back by number (cgroup.procs takes no pidfd) right
            // after the check; still there after the write, it was the one
            // moved (its number was not free). Exited by then, it may not
            // have been (a zombie is skipped, and a number freed in those
            // microseconds could be another's): said so, not "moved back".
            Some(t) => match with_pidfd_if_marked(ev.tgid, still, |fd| Cgroup::new(&t.cgroup).move_pid(ev.tgid as i32).map(|()| exited(fd))) {
                None => "already gone".to_owned(),
                Some(Ok(true)) => format!("exited during the move back into {}", t.cgroup.display()),
                Some(Ok(false)) => {
                    // Every thread is the target's again, not only the
                    // leader the kernel re-marked at the move.
                    if let Some(m) = self.enforcer.maps.members.as_mut() {
                        m.mark_process(ev.tgid, ev.target);
                    }
                    format!("moved back into {}", t.cgroup.display())
                }
                Some(Err(e)) => format!("move back failed: {e}"),
            },
        };
        let name = t.as_ref().map(|t| t.name.clone());
        let detail = json!({
            "type": "alert",
            "priority": "high",
            "action": "escape",
            "target": name,
            "pid": ev.pid,
            "tgid": ev.tgid,
            "by_pid": ev.by_tgid,
            "how": kind,
            "destination_cgroup_id": ev.dst_cgroup,
            "level": level_name(ev.level),
            "outcome": outcome,
            "time_unix_us": now_us(),
            "message": format!("escape attempt: pid {} of target {} left its cgroup ({kind}); {outcome}", ev.tgid, name.as_deref().unwrap_or("?")),
        });
        warn!(pid = ev.pid, target = ?name, kind, outcome, "escape attempt");
        let mut e = Entry::new(Actor::Source { source: "kernel".into() }, Phase::Event, "escape");
        e.target = name;
        e.params = detail.clone();
        e.outcome = Some(outcome);
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            warn!("journaling an escape attempt failed: {err}");
        }
        self.publish_alert(detail);
    }

    /// Sends an alert to `events` subscribers and the operator's hook.
    fn publish_alert(&self, alert: Value) {
        self.send_alert(alert);
    }
}
