//! Benchmark: hard stop (level 4) of a fork bomb, next to the bare
//! `cgroup.freeze` and `cgroup.kill` floors and a `pkill -9`-style tree walk.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use killpath_sandbox::cgroup::wait_event;
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, count_f64, count_procs, micros, num, push_stop_times, rotate, write_file},
    sandbox::{PidsCap, Sandbox},
    section::{fmt_us, Section, Unit},
    Params,
};
use crate::proc;

/// Parallel shell loops in each fork bomb.
const BOMB_LOOPS: usize = 4;
/// Live tasks a fork bomb must reach before it is stopped.
const BOMB_GOAL: usize = 1300;
/// pids.max of each bomb's cgroup: a cap that keeps a bomb from eating the
/// host's pid space; far enough above the goal that the loops are still
/// forking freely when the stop starts, even when it is slow to start (dash
/// loops die on a failed fork, and their orphans would leave the tree).
const BOMB_CAP: usize = 2 * BOMB_GOAL;

/// The bomb: `BOMB_LOOPS` loops that start `sleep` in the background forever.
fn bomb_script() -> String {
    let loops: Vec<String> = (1..=BOMB_LOOPS).map(|i| i.to_string()).collect();
    format!(
        "for i in {}; do (while :; do sleep 1000 & done) & done; wait",
        loops.join(" ")
    )
}
/// How long a bomb may take to reach the goal.
const BOMB_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the tree walk's leftovers are given before they are counted.
const WALK_SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
enum BombVariant {
    /// `stop` as the agent chooses (what the product does).
    Killpath,
    /// `stop` with a forced order (index into [`ORDERS`]).
    Order(usize),
    Freeze,
    Kill,
    Walk,
}

/// The stop orders put side by side (`"order"` of the `stop` request; see
/// `killpath::stop::StopOrder`): the value sent, and what it does.
const ORDERS: [(&str, &str); 3] = [
    (
        "freeze-wait-kill",
        "cgroup.freeze, wait for frozen 1 (≤ 50 ms), arm the guard, cgroup.kill; halt = frozen 1",
    ),
    (
        "kill-guard-first",
        "arm the guard, cgroup.kill alone; halt = the kill write returned",
    ),
    (
        "freeze-kill-race",
        "cgroup.freeze then cgroup.kill at once, another thread waiting for frozen 1; halt = the first of frozen 1 / the kill write returned",
    ),
];

/// A label or id made at run time, for the section's `&'static str` fields.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub(super) fn hard_stop_fork_bomb(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Hard stop of a fork bomb".into();
    s.description = format!(
        "A tree that keeps forking: `sh -c '{}'`, started inside its cgroup, stopped as soon as \
         the cgroup holds {BOMB_GOAL} live tasks (pids.max {BOMB_CAP} as a safety cap, so the loops are \
         still forking freely when the stop starts). {} runs of each variant, the order of the variants \
         rotating from one repetition to the next. **killpath**: `stop` over the agent's socket; \
         `time_to_halt_us` is command receipt to the moment no task of the target can run user code, as \
         the agent observed it: the `cgroup.kill` write returning (every task has SIGKILL pending) when \
         its stop thread is real-time (`SCHED_FIFO`: it arms its guard, then writes `cgroup.kill`), \
         else `frozen 1` in cgroup.events (it writes `cgroup.freeze`, waits for `frozen 1` at most \
         50 ms, arms its guard, then writes `cgroup.kill`; the kill write ends the halt if the freeze \
         did not complete in time); the notes say which order ran and which observation ended each \
         halt. `time_to_empty_us` is command receipt to `populated 0`. \
         **killpath, order …**: the same stop with the freeze/kill order forced (the plain killpath \
         variant is the product's own choice), one per order: {}. Beside each ratio, the durable \
         intent's share (intent / floor) and the ratio without it ((time − intent) / floor): the \
         intent is written and fdatasynced before any write to the cgroup (durability rule), so it is \
         the disk's part of the ratio, not the order's. **Bare cgroup.freeze** (halt floor): write `cgroup.freeze`, wait for `frozen 1`. **Bare \
         cgroup.kill** (empty floor): write `cgroup.kill`, wait for `populated 0`; it also records when \
         its write returned (the other observable halt, applied to the floor). **Tree walk** (what \
         `pkill -9`-style tools do): one pass from the bomb's root, descendants collected from \
         `/proc/*/stat` ppids, SIGKILL to each, root first; survivors are the bomb's tasks still alive \
         {} ms later. killpath's numbers include its fsynced intent and the agent's work before the \
         writes; the floors start at the write.",
        bomb_script(),
        p.bomb_reps,
        ORDERS
            .iter()
            .map(|(o, what)| format!("`{o}` ({what})"))
            .collect::<Vec<_>>()
            .join("; "),
        WALK_SETTLE.as_millis()
    );
    let mut variants = vec![BombVariant::Killpath];
    variants.extend((0..ORDERS.len()).map(BombVariant::Order));
    variants.extend([BombVariant::Freeze, BombVariant::Kill, BombVariant::Walk]);
    for rep in 0..p.bomb_reps {
        for v in rotate(&variants, rep) {
            check_interrupted()?;
            match v {
                BombVariant::Killpath => bomb_killpath(sb, rep, s)?,
                BombVariant::Order(i) => bomb_order(sb, rep, i, s)?,
                BombVariant::Freeze | BombVariant::Kill => bomb_bare(sb, rep, v, s)?,
                BombVariant::Walk => bomb_walk(sb, rep, s)?,
            }
        }
        println!(
            "bench:   fork bomb repetition {}/{} done",
            rep + 1,
            p.bomb_reps
        );
    }
    s.ratio(
        "halt_killpath_over_freeze",
        "killpath time_to_halt / bare cgroup.freeze halt (p50)",
        "kp_halt",
        "bare_freeze",
        0.5,
        Some("≤ 1.2"),
    );
    s.ratio(
        "halt_killpath_over_kill_write",
        "killpath time_to_halt / bare cgroup.kill write returned (p50)",
        "kp_halt",
        "bare_kill_write",
        0.5,
        None,
    );
    s.ratio(
        "empty_killpath_over_kill",
        "killpath time_to_empty / bare cgroup.kill empty (p50)",
        "kp_empty",
        "bare_kill",
        0.5,
        Some("≤ 1.1"),
    );
    s.ratio(
        "wall_killpath_over_kill",
        "killpath stop client wall / bare cgroup.kill empty (p50)",
        "kp_wall",
        "bare_kill",
        0.5,
        None,
    );
    s.ratio(
        "intent_over_freeze",
        "killpath durable intent / bare cgroup.freeze halt (p50): the intent's share of the halt ratio",
        "kp_intent",
        "bare_freeze",
        0.5,
        None,
    );
    s.ratio(
        "intent_over_kill",
        "killpath durable intent / bare cgroup.kill empty (p50): the intent's share of the empty ratio",
        "kp_intent",
        "bare_kill",
        0.5,
        None,
    );
    for (o, _) in ORDERS {
        for (what, floor, fname, goal) in [
            ("halt", "bare_freeze", "bare cgroup.freeze halt", "≤ 1.2"),
            ("empty", "bare_kill", "bare cgroup.kill empty", "≤ 1.1"),
        ] {
            s.ratio(
                leak(format!("{what}_{o}_over_{floor}")),
                leak(format!("order {o}: time_to_{what} / {fname} (p50)")),
                &format!("kp_{what}_{o}"),
                floor,
                0.5,
                Some(goal),
            );
            s.ratio(
                leak(format!("intent_{o}_over_{floor}")),
                leak(format!("order {o}: durable intent / {fname} (p50): the intent's share")),
                &format!("kp_intent_{o}"),
                floor,
                0.5,
                None,
            );
            s.ratio(
                leak(format!("{what}_net_{o}_over_{floor}")),
                leak(format!("order {o}: (time_to_{what} − intent) / {fname} (p50)")),
                &format!("kp_{what}_net_{o}"),
                floor,
                0.5,
                None,
            );
        }
    }
    s.ratio(
        "walk_over_killpath_empty",
        "tree walk time / killpath time_to_empty (p50)",
        "walk_time",
        "kp_empty",
        0.5,
        None,
    );
    Ok(())
}

fn bomb_killpath(sb: &mut Sandbox, rep: usize, s: &mut Section) -> Result<()> {
    let name = format!("bomb-{rep}");
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(&name);
    let bomb = Bomb::start(sb, &name, &cg, false)?;
    let reached = bomb.wait_goal()?;
    let (wall, r) = sb.call("stop", json!({"name": name, "reason": "bench"}))?;
    let left = count_procs(&cg).unwrap_or(0);
    let reported = r["survivors"].as_u64().unwrap_or(0);
    push_stop_times(s, wall, &r)?;
    s.push(
        "kp_tasks",
        "killpath stop: tasks at start (agent)",
        Unit::Count,
        num(&r, "tasks_at_start")?,
    );
    s.push(
        "kp_survivors",
        "killpath stop: survivors",
        Unit::Count,
        count_f64(usize::try_from(reported).unwrap_or(usize::MAX).max(left)),
    );
    s.push(
        "kp_guard_kills",
        "killpath stop: guard kills (agent)",
        Unit::Count,
        num(&r, "guard_kills").unwrap_or(0.0),
    );
    if left > 0 {
        s.notes.push(format!(
            "repetition {rep}: {left} task(s) still in the target's cgroup after the stop answered"
        ));
    }
    s.notes.push(halt_note(rep, "killpath", &r));
    drop(bomb);
    sb.call("release", json!({"name": name}))?;
    println!(
        "bench:   killpath stop: {reached} tasks, halt {}, empty {}, survivors {}",
        fmt_us(num(&r, "time_to_halt_us")?),
        fmt_us(num(&r, "time_to_empty_us")?),
        reported.max(left as u64)
    );
    Ok(())
}

/// The note on what ended one stop's halt (`who`: "killpath" or the order).
fn halt_note(rep: usize, who: &str, r: &Value) -> String {
    format!(
        "repetition {rep}: {who} order {}, halt ended by {} ({} tasks; freeze timed out: {}; knob watched: {}; intent {} µs)",
        r["order"].as_str().unwrap_or("?"),
        r["halt"].as_str().unwrap_or("?"),
        r["tasks_at_start"],
        r["freeze_timed_out"],
        r["freeze_watched"],
        r["intent_durable_us"]
    )
}

/// A stop with the order forced to `ORDERS[i]`; its own series, and
/// survivors counted from outside like the product's.
fn bomb_order(sb: &mut Sandbox, rep: usize, i: usize, s: &mut Section) -> Result<()> {
    let (o, _) = ORDERS[i];
    let name = format!("order-{i}-{rep}");
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(&name);
    let bomb = Bomb::start(sb, &name, &cg, false)?;
    let reached = bomb.wait_goal()?;
    let (_, r) = sb.call("stop", json!({"name": name, "reason": "bench", "order": o}))?;
    let left = count_procs(&cg).unwrap_or(0);
    let reported = usize::try_from(r["survivors"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
    let (halt, empty) = (num(&r, "time_to_halt_us")?, num(&r, "time_to_empty_us")?);
    let intent = num(&r, "intent_durable_us")?;
    for (id, label, v) in [
        ("halt", "time_to_halt_us (agent)", halt),
        ("empty", "time_to_empty_us (agent)", empty),
        ("intent", "receipt to intent durable (agent)", intent),
        ("halt_net", "time_to_halt_us − intent", halt - intent),
        ("empty_net", "time_to_empty_us − intent", empty - intent),
    ] {
        s.push(
            &format!("kp_{id}_{o}"),
            leak(format!("order {o}: {label}")),
            Unit::Micros,
            v,
        );
    }
    s.push(
        &format!("kp_survivors_{o}"),
        leak(format!("order {o}: survivors (agent, or left in the cgroup)")),
        Unit::Count,
        count_f64(reported.max(left)),
    );
    s.notes.push(halt_note(rep, &format!("order {o}:"), &r));
    drop(bomb);
    sb.call("release", json!({"name": name}))?;
    println!(
        "bench:   order {o}: {reached} tasks, halt {} ({}), empty {}, intent {}, survivors {}",
        fmt_us(halt),
        r["halt"].as_str().unwrap_or("?"),
        fmt_us(empty),
        fmt_us(intent),
        reported.max(left)
    );
    Ok(())
}

fn bomb_bare(sb: &mut Sandbox, rep: usize, v: BombVariant, s: &mut Section) -> Result<()> {
    let (tag, file, key, want) = match v {
        BombVariant::Freeze => ("freeze", "cgroup.freeze", "frozen", "1"),
        _ => ("kill", "cgroup.kill", "populated", "0"),
    };
    let name = format!("bare-{tag}-{rep}");
    let cg = sb.parent().join(&name);
    let bomb = Bomb::start(sb, &name, &cg, true)?;
    bomb.wait_goal()?;
    let tasks = count_procs(&cg)?;
    let t0 = Instant::now();
    fs::write(cg.join(file), "1").with_context(|| format!("writing {}/{file}", cg.display()))?;
    let written = t0.elapsed();
    wait_event(&cg, key, want, Duration::from_secs(30))?;
    let dt = t0.elapsed();
    drop(bomb);
    if matches!(v, BombVariant::Kill) {
        s.push(
            "bare_kill_write",
            "bare cgroup.kill: write returned (killpath's definition of halt)",
            Unit::Micros,
            micros(written),
        );
    }
    let (id, label, tid, tlabel) = match v {
        BombVariant::Freeze => (
            "bare_freeze",
            "bare cgroup.freeze → frozen 1 (halt floor)",
            "bare_freeze_tasks",
            "bare cgroup.freeze: tasks at start",
        ),
        _ => (
            "bare_kill",
            "bare cgroup.kill → populated 0 (empty floor)",
            "bare_kill_tasks",
            "bare cgroup.kill: tasks at start",
        ),
    };
    s.push(id, label, Unit::Micros, micros(dt));
    s.push(tid, tlabel, Unit::Count, count_f64(tasks));
    println!(
        "bench:   bare {file}: {tasks} tasks, {}",
        fmt_us(micros(dt))
    );
    Ok(())
}

fn bomb_walk(sb: &mut Sandbox, rep: usize, s: &mut Section) -> Result<()> {
    let name = format!("walk-{rep}");
    let cg = sb.parent().join(&name);
    let bomb = Bomb::start(sb, &name, &cg, true)?;
    bomb.wait_goal()?;
    let tasks = count_procs(&cg)?;
    let t0 = Instant::now();
    let signalled = walk_and_kill(bomb.root)?;
    let dt = t0.elapsed();
    thread::sleep(WALK_SETTLE);
    let survivors = count_procs(&cg)?;
    drop(bomb);
    s.push(
        "walk_time",
        "tree walk: time to collect and signal",
        Unit::Micros,
        micros(dt),
    );
    s.push(
        "walk_tasks",
        "tree walk: tasks at start",
        Unit::Count,
        count_f64(tasks),
    );
    s.push(
        "walk_signalled",
        "tree walk: tasks signalled",
        Unit::Count,
        count_f64(signalled),
    );
    s.push(
        "walk_survivors",
        "tree walk: survivors after 200 ms",
        Unit::Count,
        count_f64(survivors),
    );
    println!(
        "bench:   tree walk: {tasks} tasks, {} , {survivors} survivors",
        fmt_us(micros(dt))
    );
    Ok(())
}

/// One pass of a process-tree walk: every descendant of `root` by the ppids
/// in `/proc/*/stat`, then SIGKILL to each, root first. Returns how many.
fn walk_and_kill(root: i32) -> Result<usize> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may hold spaces and ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut order = vec![root];
    let mut i = 0;
    while let Some(&pid) = order.get(i) {
        if let Some(kids) = children.get(&pid) {
            order.extend(kids);
        }
        i += 1;
    }
    for &pid in &order {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    Ok(order.len())
}

/// A fork bomb running in `cg` under a subreaper helper; killed, reaped and
/// its cgroups removed when dropped.
struct Bomb {
    cg: PathBuf,
    v1: Option<PathBuf>,
    remove_cg: bool,
    reaper: Option<Child>,
    /// The bomb's root shell.
    root: i32,
}

impl Bomb {
    /// Starts the bomb in `cg` (created first when `create`), capped by pids.max.
    fn start(sb: &Sandbox, name: &str, cg: &Path, create: bool) -> Result<Self> {
        if create {
            fs::create_dir(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        let mut bomb = Self {
            cg: cg.to_owned(),
            v1: None,
            remove_cg: create,
            reaper: None,
            root: 0,
        };
        match &sb.pids {
            PidsCap::V2 => write_file(&cg.join("pids.max"), &BOMB_CAP.to_string())?,
            PidsCap::V1(base) => {
                let dir = base.join(name);
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                bomb.v1 = Some(dir.clone());
                write_file(&dir.join("pids.max"), &BOMB_CAP.to_string())?;
            }
            PidsCap::None => {}
        }
        let v1 = bomb
            .v1
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Joins both cgroups before the bomb starts, so that every task it
        // forks is inside from its first instruction.
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 1
if [ -n "$2" ]; then echo $$ > "$2/cgroup.procs" || exit 1; fi
exec sh -c "$3" 2>/dev/null"#;
        let mut reaper = Command::new(&sb.helper)
            .args(["bench-helper", "reap", "--", "sh", "-c", script, "sh"])
            .arg(cg)
            .arg(&v1)
            .arg(bomb_script())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the fork bomb's reaper")?;
        let out = reaper.stdout.take();
        bomb.reaper = Some(reaper);
        let mut line = String::new();
        if let Some(out) = out {
            BufReader::new(out)
                .read_line(&mut line)
                .context("reading the bomb's pid from its reaper")?;
        }
        bomb.root = line
            .trim()
            .parse()
            .with_context(|| format!("the reaper printed {:?}, not a pid", line.trim()))?;
        Ok(bomb)
    }

    /// Waits until the bomb's cgroup holds `BOMB_GOAL` tasks; returns the count.
    fn wait_goal(&self) -> Result<usize> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let n = count_procs(&self.cg)?;
            if n >= BOMB_GOAL {
                return Ok(n);
            }
            if start.elapsed() > BOMB_TIMEOUT {
                bail!(
                    "the fork bomb in {} reached only {n} of {BOMB_GOAL} tasks in {}s",
                    self.cg.display(),
                    BOMB_TIMEOUT.as_secs()
                );
            }
            if n == 0 && start.elapsed() > Duration::from_secs(5) {
                bail!("the fork bomb never joined {}", self.cg.display());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.cg.exists() {
            let _ = fs::write(self.cg.join("cgroup.kill"), "1");
            let _ = wait_event(&self.cg, "populated", "0", Duration::from_secs(10));
        }
        if let Some(mut reaper) = self.reaper.take() {
            let start = Instant::now();
            while !matches!(reaper.try_wait(), Ok(Some(_)) | Err(_))
                && start.elapsed() < Duration::from_secs(10)
            {
                thread::sleep(Duration::from_millis(10));
            }
            proc::terminate(&mut reaper, Duration::from_millis(500));
        }
        if let Some(v1) = &self.v1 {
            let _ = fs::remove_dir(v1);
        }
        if self.remove_cg && self.cg.exists() {
            let _ = fs::write(self.cg.join("cgroup.freeze"), "0");
            let _ = fs::remove_dir(&self.cg);
        }
    }
}
