//! `killpath stop` without the agent. The kill path must not depend on the
//! agent being healthy: when it does not answer, the CLI reads the agent's
//! state dir to find the target's cgroup, arms the kernel guard through the
//! pinned map, hard-stops the cgroup itself, and journals to a fallback
//! journal that the agent imports when it comes back.
//!
//! The state dir is only a hint: a workload that can write it could point
//! a target at a decoy cgroup. Before acting, the target's cgroup id must
//! be a key of the pinned `KP_TARGETS` map (the kernel's own list of
//! targets) and the registry's cgroup path must be that cgroup (cgroup2,
//! inode = id); otherwise the stop is refused, naming the mismatch, and
//! the refusal is journaled. The stop then acts on the cgroup opened by its
//! id (`kernel::cgroup_id`), not on the path.
use std::{path::Path, time::Instant};

use killpath_common::level;
use serde_json::{json, Value};

use crate::{
    error::{Error, Result},
    journal::{Actor, Entry, Journal, Phase},
    kernel::{cgroup::Cgroup, maps::Maps, pins},
    state_dir::{AgentFile, AGENT_FILE, FALLBACK_JOURNAL_FILE},
    stop,
    target::Registry,
};

/// Hard-stops target `name` directly. `why` says why the agent was bypassed.
/// `started` is when the command began (before waiting for the agent), so
/// the reported times include the wait.
pub fn stop(state_dir: &Path, name: &str, reason: Option<&str>, why: &str, started: Instant) -> Result<Value> {
    let agent_wait_us = started.elapsed().as_micros() as u64;
    let received = Instant::now();
    let registry = Registry::load(state_dir)?;
    let t = registry.get(name)?.clone();
    let cfg_path = state_dir.join(AGENT_FILE);
    let cfg = AgentFile::read(state_dir);
    let journal_path = state_dir.join(FALLBACK_JOURNAL_FILE);
    let actor = Actor::Caller { uid: nix::unistd::getuid().as_raw(), pid: std::process::id() as i32 };

    let mut intent = Entry::new(actor.clone(), Phase::Intent, "stop");
    intent.target = Some(name.to_owned());
    intent.from_level = Some(t.level);
    intent.params = json!({"reason": reason, "fallback": why});
    // One open for both records: a second open would see the intent
    // without its result and report it as an interrupted action.
    // Intent before the action, as everywhere, but on this path a journal
    // that cannot be written must not prevent the stop: a full disk is the
    // usual reason the agent's own journal is poisoned, and a workload that
    // fills the state dir's filesystem would otherwise disable both. The
    // failure is in the answer (`journal_error`) and on stderr.
    let mut journal_error: Option<String> = None;
    let mut journal = match Journal::open(&journal_path) {
        Ok((j, _)) => Some(j),
        Err(e) => {
            journal_error = Some(format!("opening {}: {e}", journal_path.display()));
            None
        }
    };
    let intent_seq = match journal.as_mut().map(|j| j.append(intent)) {
        Some(Ok(rec)) => Some(rec.seq),
        Some(Err(e)) => {
            journal_error = Some(format!("the intent could not be written to {}: {e}", journal_path.display()));
            journal = None;
            None
        }
        None => None,
    };
    if let Some(e) = &journal_error {
        eprintln!("killpath: fallback journal unusable ({e}); stopping {name} anyway");
    }
    let mut journal_result = |res: Entry, journal_error: &mut Option<String>| {
        if let Some(Err(e)) = journal.as_mut().map(|j| j.append(res)) {
            journal_error.get_or_insert_with(|| format!("the result could not be written to {}: {e}", journal_path.display()));
        }
    };

    let cg = match verify(cfg.as_ref().map(|c| c.pin_dir.as_path()), name, t.cgroup_id, &t.cgroup) {
        Ok(cg) => cg,
        Err(e) => {
            let mut res = Entry::new(actor, Phase::Result, "stop");
            res.target = Some(name.to_owned());
            res.from_level = Some(t.level);
            res.intent_seq = intent_seq;
            res.outcome = Some(format!("refused: {e}"));
            res.params = json!({"refused": e.to_string(), "cgroup": t.cgroup, "cgroup_id": t.cgroup_id});
            res.high_priority = true;
            journal_result(res, &mut journal_error);
            return Err(e);
        }
    };

    // Arm the guard through the pinned map if the pins are there; the
    // cgroup kill below works without it.
    // Every generation of pins that exists (normally one) gets the stop.
    let mut opened: Vec<Maps> = Vec::new();
    let guard = match cfg.as_ref().map(|c| pins::generations(&c.pin_dir)) {
        None => format!("not armed: {} unreadable", cfg_path.display()),
        Some(gens) if gens.is_empty() => "not armed: no pinned maps (agent never started?)".to_owned(),
        Some(gens) => {
            let results: Vec<String> = gens
                .iter()
                .map(|g| {
                    Maps::open_pinned(g)
                        .and_then(|mut m| {
                            m.set(t.cgroup_id, t.state(level::STOPPED))?;
                            opened.push(m);
                            Ok(())
                        })
                        .map_or_else(|e| format!("not armed in {}: {e}", g.display()), |()| "armed".to_owned())
                })
                .collect();
            results.join("; ")
        }
    };
    // Membership follows the task: the marks of the target (and of targets
    // nested in it) from the pinned maps, when the pins have them.
    let ids: Vec<u64> = registry.nested_ids(&t.cgroup);
    let members = opened.iter().find_map(|m| m.members.as_ref());
    // As the agent's backup stop thread: nice -20 in the ordinary class,
    // not real-time. The fallback runs when the agent did not answer, and
    // a workload real-time above a real-time stop on every CPU is one way
    // that happens: an ordinary thread still gets the kernel's share for
    // ordinary tasks (the order follows the class, see `stop::large_order`).
    let raised = crate::kernel::priority::raise_nice_for_stop(0);
    tracing::debug!(raised, "fallback stop raised to nice -20");
    let outcome = stop::hard_stop_marked(&cg, members.map(|m| (m, ids.as_slice())), received, stop::EMPTY_TIMEOUT);
    let escape_attempts: u64 = members.map_or(0, |m| m.escapes_of(&ids));

    let mut res = Entry::new(actor, Phase::Result, "stop");
    res.target = Some(name.to_owned());
    res.from_level = Some(t.level);
    res.intent_seq = intent_seq;
    match &outcome {
        Ok(r) => {
            res.to_level = Some(level::STOPPED);
            res.outcome = Some(if r.survivors == 0 { "ok".into() } else { format!("survivors: {}", r.survivors) });
            res.time_to_effect_us = Some(r.time_to_empty_us);
            res.params = json!({"report": r, "guard": guard, "escape_attempts": escape_attempts});
        }
        Err(e) => res.outcome = Some(format!("error: {e}")),
    }
    journal_result(res, &mut journal_error);
    let r = outcome?;
    Ok(json!({
        "target": name,
        "level": "stopped",
        "fallback": true,
        "agent_error": why,
        "agent_wait_us": agent_wait_us,
        "guard": guard,
        "journal": journal_path,
        "journal_error": journal_error,
        "survivors": r.survivors,
        "tasks_at_start": r.tasks_at_start,
        "time_to_halt_us": r.time_to_halt_us,
        "time_to_empty_us": r.time_to_empty_us,
        "halt": r.halt,
        "order": r.order,
        "freeze_timed_out": r.freeze_timed_out,
        "halt_waited_for_marked": r.halt_waited_for_marked,
        "escapes_during_halt": r.escapes_during_halt,
        "used_cgroup_kill": r.used_cgroup_kill,
        "used_freeze": r.used_freeze,
        "escape_attempts": escape_attempts,
        "marked_outside": r.marked_outside,
        "marked_killed": r.marked_killed,
        "marks_lost": members.map(|m| m.lost()),
        "membership": r.membership,
    }))
}

/// Checks the registry's word against the kernel's: `cgroup_id` must be a
/// target in some generation's pinned `KP_TARGETS` (under the agent's pin
/// dir, or the default one), and `path` must be that cgroup. Returns the
/// cgroup opened by its id.
fn verify(pin_dir: Option<&Path>, name: &str, cgroup_id: u64, path: &Path) -> Result<Cgroup> {
    let mismatch = |why: String| Error::CgroupMismatch { name: name.to_owned(), cgroup_id, why };
    let mut dirs: Vec<&Path> = pin_dir.into_iter().collect();
    if pin_dir != Some(Path::new(pins::DEFAULT_PIN_DIR)) {
        dirs.push(Path::new(pins::DEFAULT_PIN_DIR));
    }
    let gens: Vec<_> = dirs.iter().flat_map(|d| pins::generations(d)).collect();
    let known = gens.iter().any(|g| Maps::open_pinned(g).is_ok_and(|m| m.get(cgroup_id).is_some()));
    if !known {
        let looked: Vec<String> = gens.iter().map(|g| g.display().to_string()).collect();
        return Err(mismatch(format!(
            "cgroup id {cgroup_id} is not a target in the pinned KP_TARGETS map (looked in: {}); the registry may be forged",
            if looked.is_empty() { "no pinned generation".to_owned() } else { looked.join(", ") }
        )));
    }
    let (cg, wrong) = Cgroup::by_id(path, cgroup_id).map_err(|e| mismatch(format!("no cgroup with that id can be opened: {e}")))?;
    match wrong {
        Some(why) => Err(mismatch(format!("{why}; the registry may be forged or the path mounted over"))),
        None => Ok(cg),
    }
}
