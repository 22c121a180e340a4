//! Benchmark: time to effect of isolate, throttle and degrade, phase by
//! phase (where the p99 goes), idle and with the CPUs busy, beside the
//! disk's floor: a bare `pwrite` + `fdatasync` of a journal-sized line.
use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, micros, num, rotate, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};

/// The target every level is applied to.
const TARGET: &str = "tte";
const LEVELS: [&str; 3] = ["isolate", "throttle", "degrade"];
/// The phases the agent reports with each result (`phases`), in order.
const PHASES: [(&str, &str); 8] = [
    ("lock_wait_us", "receipt to handler (thread, state lock, caller check)"),
    ("pre_intent_us", "checks before the intent (link pins, drill)"),
    ("intent_write_us", "intent encode + pwrite"),
    ("intent_sync_us", "intent fdatasync"),
    ("action_to_effect_us", "intent durable to effect (map update)"),
    ("after_effect_us", "effect to result journaling (registry save)"),
    ("result_write_us", "result encode + pwrite"),
    ("result_sync_us", "result fdatasync"),
];
/// `(id, label, series, floor series)` of the p99 ratios to the disk's floor.
const RATIOS: [(&str, &str, &str, &str); 8] = [
    ("tte_isolate_idle", "isolate time_to_effect (agent) / floor fdatasync, idle (p99)", "isolate_idle", "floor_idle"),
    ("tte_throttle_idle", "throttle time_to_effect (agent) / floor fdatasync, idle (p99)", "throttle_idle", "floor_idle"),
    ("tte_retune_idle", "throttle retune time_to_effect (agent) / floor fdatasync, idle (p99)", "retune_idle", "floor_idle"),
    ("tte_degrade_idle", "degrade time_to_effect (agent) / floor fdatasync, idle (p99)", "degrade_idle", "floor_idle"),
    ("tte_isolate_busy", "isolate time_to_effect (agent) / floor fdatasync, busy CPUs (p99)", "isolate_busy", "floor_busy"),
    ("tte_throttle_busy", "throttle time_to_effect (agent) / floor fdatasync, busy CPUs (p99)", "throttle_busy", "floor_busy"),
    ("tte_retune_busy", "throttle retune time_to_effect (agent) / floor fdatasync, busy CPUs (p99)", "retune_busy", "floor_busy"),
    ("tte_degrade_busy", "degrade time_to_effect (agent) / floor fdatasync, busy CPUs (p99)", "degrade_busy", "floor_busy"),
];
/// How many of the slowest samples are listed phase by phase.
const WORST: usize = 3;
/// CPU hogs of the busy condition (the machine has 2 cores).
const HOGS: usize = 4;

pub(super) fn time_to_effect(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Time to effect, phase by phase".into();
    s.description = format!(
        "One target running `sleep 1000`; {reps} repetitions of `isolate`, `throttle --syscalls` \
         (1,000/s and 2,000/s alternating; every other repetition, as **retune**, on a target already \
         throttled at 500/s, so the sys_exit hook stays attached; otherwise it is attached again after \
         the previous restore detached it) and `degrade --revoke net.connect`, the order rotating, each \
         followed by `restore --to normal`, in two conditions: **idle** (nothing else started by the \
         bench) and **busy** ({HOGS} CPU-bound loops at nice 0 outside any target, on a 2-core machine). \
         The agent's `time_to_effect_us` (receipt to map update) and the `phases` it reports with each \
         result: {phases}. **Floor**: the harness's own `pwrite` of a {LINE}-byte line into written \
         zeros + `fdatasync`, in the sandbox's directory, once per repetition: the disk's share no \
         journaled command can go under. Goal: time to effect under 1 ms, p50 and p99.",
        reps = p.effect_reps,
        phases = PHASES.map(|(_, l)| l).join("; "),
    );
    sb.call("create", json!({"name": TARGET}))?;
    let mut child = spawn_in_cgroup(&sb.parent().join(TARGET), &["sleep", "1000"])?;
    let result = wait_comm(child.id(), "sleep").and_then(|()| conditions(sb, p, s));
    let _ = child.kill();
    let _ = child.wait();
    let released = sb.call("release", json!({"name": TARGET}));
    result?;
    released?;
    for (id, label, num, den) in RATIOS {
        s.ratio(id, label, num, den, 0.99, Some("time to effect < 1 ms"));
    }
    Ok(())
}

fn conditions(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let floor = Floor::open(&sb.tmp().join("floor.journal"))?;
    measure(sb, p, s, &floor, "idle")?;
    let mut hogs = Vec::new();
    for _ in 0..HOGS {
        hogs.push(hog()?);
    }
    let busy = measure(sb, p, s, &floor, "busy");
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    busy
}

fn hog() -> Result<Child> {
    Command::new("sh").args(["-c", "while :; do :; done"]).stdin(Stdio::null()).spawn().context("starting a CPU hog")
}

fn measure(sb: &mut Sandbox, p: &Params, s: &mut Section, floor: &Floor, cond: &str) -> Result<()> {
    let normal = json!({"name": TARGET, "to": "normal", "reason": "bench"});
    let mut worst: Vec<(f64, String)> = Vec::new();
    for rep in 0..p.effect_reps {
        check_interrupted()?;
        let ceiling = if rep % 2 == 0 { 1000 } else { 2000 };
        for level in rotate(&LEVELS, rep) {
            let args = match level {
                "throttle" => json!({"name": TARGET, "syscalls": ceiling, "reason": "bench"}),
                "degrade" => json!({"name": TARGET, "revoke": ["net.connect"], "reason": "bench"}),
                _ => json!({"name": TARGET, "reason": "bench"}),
            };
            if level == "throttle" && rep % 2 == 1 {
                // Every other repetition, a ceiling change on a target
                // already throttled: the hook stays attached.
                sb.call("throttle", json!({"name": TARGET, "syscalls": 500, "reason": "bench"}))?;
            }
            let level_tag = if level == "throttle" && rep % 2 == 1 { "retune" } else { level };
            let (wall, r) = sb.call(level, args)?;
            let tte = num(&r, "time_to_effect_us")?;
            let level = level_tag;
            s.push(&format!("{level}_{cond}"), &format!("{level}, {cond}: time_to_effect_us (agent)"), Unit::Micros, tte);
            s.push(&format!("{level}_{cond}_wall"), &format!("{level}, {cond}: client wall"), Unit::Micros, micros(wall));
            let phases = &r["phases"];
            for (key, label) in PHASES {
                if let Some(v) = phases[key].as_f64() {
                    s.push(&format!("{level}_{cond}_{key}"), &format!("{level}, {cond}: {label}"), Unit::Micros, v);
                }
            }
            if let Some(v) = r["hook_sync_us"].as_f64() {
                s.push(&format!("{level}_{cond}_hook_sync_us"), &format!("{level}, {cond}: of which sys_exit/io_uring hook attach"), Unit::Micros, v);
            }
            worst.push((tte, format!("{level} {tte} µs: {}", brief(phases))));
            sb.call("restore", normal.clone())?;
        }
        s.push(&format!("floor_{cond}"), &format!("floor, {cond}: pwrite {LINE} B + fdatasync (harness)"), Unit::Micros, micros(floor.append()?));
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    let listed: Vec<String> = worst.into_iter().take(WORST).map(|(_, w)| w).collect();
    s.notes.push(format!("{cond}: the {WORST} slowest time_to_effect samples, phase by phase: {}.", listed.join("; ")));
    Ok(())
}

fn brief(phases: &Value) -> String {
    PHASES.iter().filter_map(|(k, _)| phases[*k].as_u64().map(|v| format!("{} {v}", k.trim_end_matches("_us")))).collect::<Vec<_>>().join(", ")
}

/// A journal-like line's length.
const LINE: usize = 400;
/// Zeros written ahead, as the agent's journal keeps them.
const FLOOR_RESERVE: u64 = 1 << 20;

/// The disk's floor for a durable record: a line written over zeros the
/// file already has, then `fdatasync` (no metadata to flush).
struct Floor {
    file: File,
    at: std::cell::Cell<u64>,
}

impl Floor {
    fn open(path: &std::path::Path) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all_at(&vec![0u8; FLOOR_RESERVE as usize], 0).context("writing the floor's zeros")?;
        file.sync_all().context("syncing the floor file")?;
        Ok(Self { file, at: std::cell::Cell::new(0) })
    }

    fn append(&self) -> Result<Duration> {
        let line = [b'x'; LINE];
        let at = self.at.get() % (FLOOR_RESERVE - LINE as u64);
        let start = Instant::now();
        self.file.write_all_at(&line, at).context("floor pwrite")?;
        self.file.sync_data().context("floor fdatasync")?;
        let took = start.elapsed();
        self.at.set(at + LINE as u64);
        Ok(took)
    }
}
