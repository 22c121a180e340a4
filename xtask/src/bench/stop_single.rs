//! Benchmark: stop (level 4) of a single process, next to `kill -9`.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, count_f64, count_procs, micros, push_stop_times, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

pub(super) fn stop_single(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Stop of a single process: command to effect".into();
    s.description = format!(
        "{} repetitions, alternating. **killpath**: a fresh target running `sleep 1000`, `stop` over the \
         socket (client wall time, agent `time_to_halt_us` and `time_to_empty_us`, survivors), then \
         `release`. **kill -9**: the same `sleep 1000` started by the harness, `kill(pid, SIGKILL)` + \
         `waitpid`. killpath's stop journals an fsynced intent first; a target this small is not frozen: \
         one `cgroup.kill` write (halt: the write returned), the exit awaited on a pidfd opened before \
         it, then `populated 0` read from cgroup.events (its notification can come 10 ms late: the \
         kernel rate-limits them). Design goal: agent time_to_empty ≤ 1 ms (p50).",
        p.effect_reps
    );
    for rep in 0..p.effect_reps {
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for killpath in order {
            check_interrupted()?;
            if killpath {
                let name = format!("one-{rep}");
                sb.call("create", json!({"name": name}))?;
                let cg = sb.parent().join(&name);
                let mut child = spawn_in_cgroup(&cg, &["sleep", "1000"])?;
                let measured = wait_comm(child.id(), "sleep")
                    .and_then(|()| sb.call("stop", json!({"name": name, "reason": "bench"})));
                let left = count_procs(&cg).unwrap_or(0);
                proc::terminate(&mut child, Duration::from_secs(1));
                let (wall, r) = measured?;
                let reported =
                    usize::try_from(r["survivors"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
                push_stop_times(s, wall, &r)?;
                s.push(
                    "kp_survivors",
                    "killpath stop: survivors",
                    Unit::Count,
                    count_f64(reported.max(left)),
                );
                sb.call("release", json!({"name": name}))?;
            } else {
                let mut child = Command::new("sleep")
                    .arg("1000")
                    .stdin(Stdio::null())
                    .spawn()
                    .context("starting sleep")?;
                wait_comm(child.id(), "sleep")?;
                let t0 = Instant::now();
                child.kill().context("kill -9")?;
                child.wait().context("waitpid")?;
                s.push(
                    "kill9",
                    "kill -9 + waitpid: wall",
                    Unit::Micros,
                    micros(t0.elapsed()),
                );
            }
        }
    }
    if let Some(v) = s.stat("kp_empty", 0.5) {
        s.notes.push(format!(
            "Design goal: agent time_to_empty ≤ 1 ms (p50). Measured p50 {}.",
            super::section::fmt_us(v)
        ));
    }
    s.ratio(
        "stop_wall_over_kill9",
        "killpath stop client wall / kill -9 + waitpid (p50)",
        "kp_wall",
        "kill9",
        0.5,
        None,
    );
    s.ratio(
        "stop_empty_over_kill9",
        "killpath time_to_empty (agent) / kill -9 + waitpid (p50)",
        "kp_empty",
        "kill9",
        0.5,
        None,
    );
    Ok(())
}
