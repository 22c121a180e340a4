//! Benchmark: stop while a target floods the agent with `stop` and
//! `isolate` of another target (refused: a caller inside a target may only
//! read), next to stop on an idle agent. The refusals are answered before
//! anything is queued, so the ratio's floor is the CPU the flood takes.
use std::{
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, count_f64, micros, num, spawn_in_cgroup},
    sandbox::Sandbox,
    section::{fmt_us, Section, Unit},
    stop_flood::one_stop,
    Params,
};
use crate::proc;

/// The flood, run inside target `hostile`: threads each pipelining
/// requests (stop and isolate of `victim`, alternately) on their own
/// connection, counting answers into `argv[2]` after every batch.
const FLOOD_PY: &str = r#"
import json, os, socket, sys, threading
sock, out = sys.argv[1], sys.argv[2]
THREADS, PIPELINE = 8, 64
n = [0]
lock = threading.Lock()
batch = "".join(json.dumps({"id": i, "cmd": "stop" if i % 2 == 0 else "isolate", "args": {"name": "victim"}}) + "\n" for i in range(PIPELINE)).encode()
def flood():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    while True:
        s.sendall(batch)
        buf = b""
        while buf.count(b"\n") < PIPELINE:
            chunk = s.recv(1 << 20)
            if not chunk:
                return
            buf += chunk
        with lock:
            n[0] += PIPELINE
            with open(out + ".tmp", "w") as o:
                o.write(str(n[0]))
            os.replace(out + ".tmp", out)
ts = [threading.Thread(target=flood) for _ in range(THREADS)]
for t in ts: t.start()
for t in ts: t.join()
"#;

/// Answers the flood has counted so far.
fn answered(file: &Path) -> u64 {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Starts the flood inside `hostile`'s cgroup; returns once it has had
/// answers.
fn start_flood(sb: &Sandbox, out: &Path) -> Result<Child> {
    let _ = std::fs::remove_file(out);
    let sock = sb.socket().to_string_lossy().into_owned();
    let file = out.to_string_lossy().into_owned();
    let mut child = spawn_in_cgroup(&sb.parent().join("hostile"), &["python3", "-c", FLOOD_PY, &sock, &file])?;
    let t0 = Instant::now();
    while answered(out) < 256 {
        if t0.elapsed() > Duration::from_secs(30) {
            proc::terminate(&mut child, Duration::from_secs(1));
            bail!("the confined flood had no answers within 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child)
}

pub(super) fn confined_flood(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let reps = (p.effect_reps / 3).max(10);
    s.title = "Stop under a flood of refused stops from inside a target".into();
    s.description = format!(
        "{reps} repetitions of each variant, alternating. A fresh target running `sleep 1000` is stopped \
         over the socket (agent `time_to_empty_us`, client wall time), then released. **idle**: nothing \
         else talks to the agent. **flood**: a python process inside target `hostile` sends `stop` and \
         `isolate` of target `victim` on 8 connections, 64 requests pipelined on each, back to back; \
         every one is refused (`forbidden`) before it is queued (the caller's cgroup ids and mark looked \
         up in KP_TARGETS/KP_MEMBERS without the state lock), 10 a second journaled. `queued_ahead` is \
         the number of stops on the stop thread ahead of the operator's. The machine has 2 cores: the \
         flood also takes CPU from the stop."
    );
    sb.call("create", json!({"name": "hostile"}))?;
    sb.call("create", json!({"name": "victim"}))?;
    let out = sb.tmp().join("confined-flood-count");
    for rep in 0..reps {
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for flood in order {
            check_interrupted()?;
            let mut running = if flood { Some(start_flood(sb, &out)?) } else { None };
            let before = answered(&out);
            let measured = one_stop(sb, &format!("confined-{rep}-{}", u8::from(flood)));
            let during = answered(&out).saturating_sub(before);
            if let Some(c) = running.as_mut() {
                proc::terminate(c, Duration::from_secs(1));
            }
            let (wall, r, survivors) = measured?;
            let tag = if flood { "flood" } else { "idle" };
            s.push(&format!("{tag}_empty"), &format!("stop, {tag}: time_to_empty_us (agent)"), Unit::Micros, num(&r, "time_to_empty_us")?);
            s.push(&format!("{tag}_wall"), &format!("stop, {tag}: client wall time"), Unit::Micros, micros(wall));
            s.push(&format!("{tag}_picked_up_us"), &format!("stop, {tag}: receipt to picked up by the stop thread"), Unit::Micros, num(&r, "picked_up_us")?);
            s.push(&format!("{tag}_queued_ahead"), &format!("stop, {tag}: stops queued ahead of it"), Unit::Count, num(&r, "queued_ahead")?);
            s.push(&format!("{tag}_survivors"), &format!("stop, {tag}: survivors"), Unit::Count, count_f64(survivors));
            if flood {
                s.push("flood_refused_during", "flood: refusals answered during the stop", Unit::Count, during as f64);
            }
        }
    }
    println!(
        "bench:   stop p50: idle {}, under a confined flood {}",
        s.stat("idle_empty", 0.5).map_or("-".into(), fmt_us),
        s.stat("flood_empty", 0.5).map_or("-".into(), fmt_us)
    );
    s.ratio("flood_over_idle_empty", "stop time_to_empty (agent) under a confined flood / idle (p50)", "flood_empty", "idle_empty", 0.5, Some("≤ 1.2"));
    s.ratio("flood_over_idle_empty_p99", "stop time_to_empty (agent) under a confined flood / idle (p99)", "flood_empty", "idle_empty", 0.99, None);
    s.ratio("flood_over_idle_wall", "stop client wall under a confined flood / idle (p50)", "flood_wall", "idle_wall", 0.5, None);
    Ok(())
}
