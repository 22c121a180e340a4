//! Benchmark: stop while 32 clients hammer read-only commands (`status`,
//! `journal`), next to stop on an idle agent.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use killpath_sandbox::Client;
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, count_f64, count_procs, micros, num, push_stop_phases, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{fmt_us, Section, Unit},
    Params,
};
use crate::proc;

/// Clients in the flood: half ask `status`, half `journal`.
const CLIENTS: usize = 32;
/// Records each `journal` request asks for (the last ones).
const JOURNAL_TAIL: u64 = 100;

pub(super) fn stop_flood(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let reps = (p.effect_reps / 3).max(10);
    s.title = "Stop under a flood of read-only commands".into();
    s.description = format!(
        "{reps} repetitions of each variant, alternating. A fresh target running `sleep 1000` is stopped \
         over the socket (agent `time_to_empty_us`, client wall time), then released. **idle**: nothing \
         else talks to the agent. **flood**: {CLIENTS} clients, each on its own connection, send requests \
         back to back for the whole repetition, half `status` (every target's row), half `journal` (the \
         last {JOURNAL_TAIL} records); the stop is sent once every client has had an answer. The agent \
         serves `journal` from the file without its state lock; a stop runs on its own thread at nice \
         -20 and goes ahead of every command waiting for the lock; other requests run 4 at once at \
         nice 5 (64 in flight, then `busy`, which the flood counts as an answer). The phases \
         (receipt to the stop thread, to the lock, to the durable intent; the stop thread's run delay) \
         come from the stop's result. The machine has 2 cores: the flood also takes CPU from the stop."
    );
    let head = journal_head(sb)?;
    let after = head.saturating_sub(JOURNAL_TAIL);
    for rep in 0..reps {
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for flood in order {
            check_interrupted()?;
            let running = if flood { Some(Flood::start(sb, after)?) } else { None };
            let measured = one_stop(sb, &format!("flood-{rep}-{}", u8::from(flood)));
            let served = running.map(Flood::stop).transpose()?;
            let (wall, r, survivors) = measured?;
            let tag = if flood { "flood" } else { "idle" };
            s.push(&format!("{tag}_empty"), &format!("stop, {tag} agent: time_to_empty_us (agent)"), Unit::Micros, num(&r, "time_to_empty_us")?);
            s.push(&format!("{tag}_wall"), &format!("stop, {tag} agent: client wall time"), Unit::Micros, micros(wall));
            push_stop_phases(s, tag, &r);
            s.push(&format!("{tag}_survivors"), &format!("stop, {tag} agent: survivors"), Unit::Count, count_f64(survivors));
            if let Some((n, secs)) = served {
                s.push("flood_rate", "flood: read-only requests answered per second", Unit::PerSecond, n as f64 / secs);
            }
        }
    }
    println!(
        "bench:   stop p50: idle {}, under flood {}",
        s.stat("idle_empty", 0.5).map_or("-".into(), fmt_us),
        s.stat("flood_empty", 0.5).map_or("-".into(), fmt_us)
    );
    s.ratio("flood_over_idle_empty", "stop time_to_empty (agent) under the flood / idle (p50)", "flood_empty", "idle_empty", 0.5, Some("≤ 1.2"));
    s.ratio("flood_over_idle_empty_p99", "stop time_to_empty (agent) under the flood / idle (p99)", "flood_empty", "idle_empty", 0.99, None);
    s.ratio("flood_over_idle_wall", "stop client wall under the flood / idle (p50)", "flood_wall", "idle_wall", 0.5, None);
    Ok(())
}

/// The journal's last sequence number.
fn journal_head(sb: &mut Sandbox) -> Result<u64> {
    let (_, r) = sb.call("journal", json!({}))?;
    Ok(r["records"].as_array().and_then(|a| a.last()).and_then(|x| x["seq"].as_u64()).unwrap_or(0))
}

/// A fresh target with one `sleep`, stopped: wall, result, survivors
/// (the larger of the agent's count and cgroup.procs).
pub(super) fn one_stop(sb: &mut Sandbox, name: &str) -> Result<(Duration, Value, usize)> {
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let mut child = spawn_in_cgroup(&cg, &["sleep", "1000"])?;
    let measured = wait_comm(child.id(), "sleep").and_then(|()| sb.call("stop", json!({"name": name, "reason": "bench"})));
    let left = count_procs(&cg).unwrap_or(0);
    proc::terminate(&mut child, Duration::from_secs(1));
    let (wall, r) = measured?;
    sb.call("release", json!({"name": name}))?;
    let reported = usize::try_from(r["survivors"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
    Ok((wall, r, reported.max(left)))
}

/// The flood's client threads.
struct Flood {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Result<()>>>,
    started: Instant,
}

impl Flood {
    /// Starts the clients; returns once every one has had an answer.
    fn start(sb: &Sandbox, after: u64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for i in 0..CLIENTS {
            let mut c = Client::connect(sb.socket(), Duration::from_secs(30)).context("connecting a flood client")?;
            let (stop, served, ready) = (stop.clone(), served.clone(), ready.clone());
            threads.push(thread::spawn(move || -> Result<()> {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let r = if i % 2 == 0 { c.call("status", json!({})) } else { c.call("journal", json!({"after": after})) };
                    // Over the agent's cap on requests in flight the answer
                    // is `busy`: an answer all the same.
                    match r {
                        Err(killpath_sandbox::Error::Refused { code, .. }) if code == "busy" => {}
                        r => drop(r?),
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    if first {
                        ready.fetch_add(1, Ordering::Relaxed);
                        first = false;
                    }
                }
                Ok(())
            }));
        }
        let t0 = Instant::now();
        while ready.load(Ordering::Relaxed) < CLIENTS as u64 {
            if t0.elapsed() > Duration::from_secs(30) {
                stop.store(true, Ordering::Relaxed);
                bail!("the flood clients did not all get an answer within 30 s");
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(Self { stop, served, threads, started: Instant::now() })
    }

    /// Stops the clients: (requests answered since all were ready, seconds).
    fn stop(self) -> Result<(u64, f64)> {
        let n = self.served.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().map_err(|_| anyhow::anyhow!("a flood client panicked"))??;
        }
        Ok((n, secs))
    }
}
