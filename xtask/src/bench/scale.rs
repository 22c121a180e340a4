//! Benchmark: scale. 1, 10, 100 and 1,000 targets (each a cgroup with one
//! `sleep`); at each size, time to effect of isolate, throttle, degrade and
//! stop on one target, `status` of all, agent RSS and BPF map memory.
use std::{
    collections::BTreeMap,
    fs,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, marks_early, micros, num, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

/// Target counts measured, in this order (targets are added; then all but
/// one are released and one target is measured again).
const SIZES: [usize; 4] = [1, 10, 100, 1000];
/// `status` repetitions per size (at 1,000 targets it is the slow one).
const STATUS_REPS: usize = 10;
/// The target every level is applied to.
const PROBE: &str = "scale-0";

/// `(series, level)` of the 1,000 / 1 ratios, with their labels.
const RATIOS: [(&str, &str, &str, &str); 8] = [
    ("scale_isolate", "isolate time_to_effect (agent), 1,000 targets / 1 target (p50)", "isolate_1000", "isolate_1"),
    ("scale_throttle", "throttle time_to_effect (agent), 1,000 targets / 1 target (p50)", "throttle_1000", "throttle_1"),
    ("scale_degrade", "degrade time_to_effect (agent), 1,000 targets / 1 target (p50)", "degrade_1000", "degrade_1"),
    ("scale_stop", "stop time_to_empty (agent), 1,000 targets / 1 target (p50)", "stop_1000", "stop_1"),
    ("scale_stop_wall", "stop client wall (with the registry write), 1,000 targets / 1 target (p50)", "stop_wall_1000", "stop_wall_1"),
    ("scale_isolate_wall", "isolate client wall (with the registry write), 1,000 targets / 1 target (p50)", "isolate_wall_1000", "isolate_wall_1"),
    ("scale_status_one", "status of one target, client wall, 1,000 targets / 1 target (p50)", "status_one_1000", "status_one_1"),
    ("scale_status", "status of all targets, client wall, 1,000 targets / 1 target (p50)", "status_1000", "status_1"),
];

pub(super) fn scale(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Scale: 1 to 1,000 targets".into();
    s.description = format!(
        "Targets are added, each a cgroup (`create`) running one `sleep 1000`, up to {sizes:?}. At each \
         size, on target `{PROBE}`, {reps} repetitions of: `isolate`, `throttle --syscalls` (1,000/s and \
         2,000/s alternating), `degrade --revoke net.connect`, each followed by `restore --to normal`; \
         the agent's `time_to_effect_us` (receipt, intent journaled and fsynced, to the map update), the \
         client wall time (it also holds the result's fsync and the registry saves), and, where the agent \
         reports it, `journal_intent_us` (the durable intent alone). \
         `stop`: a fresh extra target with one `sleep`, stopped (agent `time_to_empty_us`) and released, \
         {reps} times, and its client wall (it also holds the registry write: one file per target, \
         so it should not grow with the number of targets). `status` of `{PROBE}` alone {STATUS_REPS} \
         times, then of all targets {STATUS_REPS} times: client wall (one target's first: for tens of ms \
         after a status of all at 1,000 targets every command is slower, a `ping` by ~0.3 ms). Agent RSS (VmRSS) and \
         BPF map memory (the `memlock` of every map the agent holds, from /proc/PID/fdinfo, each map \
         once). The targets are then released down to one and the one-target figures measured again, \
         into the same series (so each 1-target series has twice the samples): the sizes cannot \
         alternate, and this way a slower minute of the machine while the larger sizes ran weighs on \
         both sides of the ratios. Flat means the 1,000-target p50 within 1.2× of the 1-target p50.",
        sizes = SIZES,
        reps = p.effect_reps,
    );
    let mut targets: Vec<Child> = Vec::new();
    let result = scale_inner(sb, p, s, &mut targets);
    for t in &mut targets {
        proc::terminate(t, Duration::from_secs(1));
    }
    let mut release_failed = None;
    for i in 0..targets.len() {
        if let Err(e) = sb.call("release", json!({"name": format!("scale-{i}")})) {
            release_failed.get_or_insert(e);
        }
    }
    result?;
    if let Some(e) = release_failed {
        return Err(e.context("releasing the scale targets"));
    }
    for (id, label, num, den) in RATIOS {
        s.ratio(id, label, num, den, 0.5, Some("≤ 1.2×"));
    }
    Ok(())
}

fn scale_inner(sb: &mut Sandbox, p: &Params, s: &mut Section, targets: &mut Vec<Child>) -> Result<()> {
    let pid = sb.agent_pid().context("the agent's pid is unknown")?;
    for size in SIZES {
        let start = Instant::now();
        while targets.len() < size {
            check_interrupted()?;
            let name = format!("scale-{}", targets.len());
            sb.call("create", json!({"name": name}))?;
            let child = spawn_in_cgroup(&sb.parent().join(&name), &["sleep", "1000"])?;
            wait_comm(child.id(), "sleep")?;
            targets.push(child);
        }
        s.notes.push(format!("{size} target(s): added in {}.", proc::elapsed(start)));
        measure(sb, p, s, size)?;
        s.push(&format!("rss_{size}"), &format!("agent RSS (KiB), {size} target(s)"), Unit::Count, rss_kib(pid)?);
        s.push(&format!("maps_{size}"), &format!("BPF map memory (KiB), {size} target(s)"), Unit::Count, map_kib(pid)?);
    }
    // The sizes cannot alternate (targets come a thousand at a time), so
    // the one-target figures are measured again once the others are
    // released, into the same series: a slower minute of the machine
    // during the larger sizes then weighs on both sides of the ratios.
    let start = Instant::now();
    while targets.len() > 1 {
        check_interrupted()?;
        if let Some(mut child) = targets.pop() {
            proc::terminate(&mut child, Duration::from_secs(1));
        }
        sb.call("release", json!({"name": format!("scale-{}", targets.len())}))?;
    }
    s.notes.push(format!("back to 1 target: released in {}; its figures measured again.", proc::elapsed(start)));
    measure(sb, p, s, 1)
}

/// Every timed figure at `size` targets: the levels, stops, and `status`.
fn measure(sb: &mut Sandbox, p: &Params, s: &mut Section, size: usize) -> Result<()> {
    levels(sb, p, s, size)?;
    stops(sb, p, s, size)?;
    // One target's first: for tens of ms after a status of all at 1,000
    // targets, any command is slower (a `ping` ~0.3 ms; not the
    // allocator's trim), which is the status of all's cost, not one's.
    for _ in 0..STATUS_REPS {
        let (wall, r) = sb.call("status", json!({"name": PROBE}))?;
        anyhow::ensure!(r["targets"].as_array().map_or(0, Vec::len) == 1, "status {PROBE} listed other than one target: {r}");
        s.push(&format!("status_one_{size}"), &format!("status {PROBE}, {size} target(s): client wall"), Unit::Micros, micros(wall));
    }
    for _ in 0..STATUS_REPS {
        let (wall, r) = sb.call("status", json!({}))?;
        let seen = r["targets"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(seen >= size, "status listed {seen} targets, {size} exist");
        s.push(&format!("status_{size}"), &format!("status of all, {size} target(s): client wall"), Unit::Micros, micros(wall));
    }
    Ok(())
}

/// Isolate, throttle and degrade on the probe target, each undone.
fn levels(sb: &mut Sandbox, p: &Params, s: &mut Section, size: usize) -> Result<()> {
    let normal = json!({"name": PROBE, "to": "normal", "reason": "bench"});
    for rep in 0..p.effect_reps {
        check_interrupted()?;
        let ceiling = if rep % 2 == 0 { 1000 } else { 2000 };
        let steps = [
            ("isolate", json!({"name": PROBE, "reason": "bench"})),
            ("throttle", json!({"name": PROBE, "syscalls": ceiling, "reason": "bench"})),
            ("degrade", json!({"name": PROBE, "revoke": ["net.connect"], "reason": "bench"})),
        ];
        for (cmd, args) in steps {
            let (wall, r) = sb.call(cmd, args)?;
            let label = format!("{cmd}, {size} target(s): time_to_effect_us (agent)");
            s.push(&format!("{cmd}_{size}"), &label, Unit::Micros, num(&r, "time_to_effect_us")?);
            let label = format!("{cmd}, {size} target(s): client wall");
            s.push(&format!("{cmd}_wall_{size}"), &label, Unit::Micros, micros(wall));
            if let Some(us) = r["journal_intent_us"].as_f64() {
                let label = format!("{cmd}, {size} target(s): journal_intent_us (agent: the durable intent)");
                s.push(&format!("{cmd}_intent_{size}"), &label, Unit::Micros, us);
            }
            sb.call("restore", normal.clone())?;
        }
    }
    Ok(())
}

/// Stops of a fresh one-task target, next to `size` others.
fn stops(sb: &mut Sandbox, p: &Params, s: &mut Section, size: usize) -> Result<()> {
    for rep in 0..p.effect_reps {
        check_interrupted()?;
        let name = format!("scale-stop-{size}-{rep}");
        sb.call("create", json!({"name": name}))?;
        let mut child = spawn_in_cgroup(&sb.parent().join(&name), &["sleep", "1000"])?;
        let measured = wait_comm(child.id(), "sleep").and_then(|()| sb.call("stop", json!({"name": name, "reason": "bench"})));
        proc::terminate(&mut child, Duration::from_secs(1));
        let released = sb.call("release", json!({"name": name}));
        let (wall, r) = measured?;
        released?;
        anyhow::ensure!(r["survivors"].as_u64() == Some(0), "stop left survivors: {r}");
        let label = format!("stop, {size} target(s): time_to_empty_us (agent)");
        s.push(&format!("stop_{size}"), &label, Unit::Micros, num(&r, "time_to_empty_us")?);
        s.push(&format!("stop_wall_{size}"), &format!("stop, {size} target(s): client wall"), Unit::Micros, micros(wall));
        for (key, what) in [
            ("picked_up_us", "receipt to the stop thread's pickup"),
            ("checked_us", "receipt to the caller checked (state lock held)"),
            ("intent_durable_us", "receipt to the intent durable"),
            ("time_to_halt_us", "receipt to halt (the kill written)"),
            ("cgroup_empty_us", "receipt to the cgroup seen empty"),
            ("marks_wait_us", "then waiting for the marks read beside the stop"),
            ("marks_asked_us", "receipt to that read asked for"),
            ("marks_read_from_us", "receipt to the start of that read"),
            ("marks_read_to_us", "receipt to its end"),
        ] {
            if let Some(us) = r[key].as_f64() {
                s.push(&format!("stop_{key}_{size}"), &format!("stop, {size} target(s): {what}"), Unit::Micros, us);
            }
        }
        s.push(
            &format!("stop_marks_early_{size}"),
            &format!("stop, {size} target(s): marks checked in the index (2), from the early read (1) or every mark read (0)"),
            Unit::Count,
            marks_early(&r),
        );
    }
    Ok(())
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The `memlock` of every BPF map `pid` holds a descriptor of, each map
/// once (by `map_id`), in KiB.
fn map_kib(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps: BTreeMap<u64, u64> = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else { continue };
        let field = |key: &str| -> Option<u64> { info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()) };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, memlock);
        }
    }
    anyhow::ensure!(!maps.is_empty(), "no BPF map descriptors in {dir}");
    Ok(maps.values().sum::<u64>() as f64 / 1024.0)
}
