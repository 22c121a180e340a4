//! Benchmark: `agent --metrics`: what one scrape costs, and stop on an
//! agent whose metrics endpoint is scraped back to back, next to stop on
//! the same agent unscraped.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, count_f64, micros, num, push_stop_phases},
    sandbox::Sandbox,
    section::{fmt_us, Section, Unit},
    stop_flood::one_stop,
    Params,
};

/// Scrapers in the flood, each on its own connection per scrape.
const SCRAPERS: usize = 8;
/// Idle targets registered during the section (each one is a row of every scrape).
const TARGETS: usize = 20;

pub(super) fn metrics(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    sb.restart_agent_with(&["--metrics", &addr])?;
    let r = measure(sb, p, s, &addr);
    // The usual agent back for the sections after this one, whatever happened.
    let back = sb.restart_agent_with(&[]);
    r.and(back)
}

fn measure(sb: &mut Sandbox, p: &Params, s: &mut Section, addr: &str) -> Result<()> {
    let reps = (p.effect_reps / 3).max(10);
    s.title = "Stop while Prometheus scrapes the agent".into();
    s.description = format!(
        "The agent runs with `--metrics` and {TARGETS} idle targets (each a row of every scrape). \
         **scrape**: {} scrapes of `GET /metrics`, one at a time, client wall time. Then {reps} \
         repetitions of each stop variant, alternating: a fresh target running `sleep 1000` is stopped \
         over the socket, then released. **idle**: nothing scrapes. **scraped**: {SCRAPERS} clients \
         scrape back to back for the whole repetition (a new connection per scrape); the stop is sent \
         once every client has had an answer. A scrape holds the state lock only to copy numbers and \
         walk the kernel maps, waits behind a stop, runs at nice 5, at most 2 at once (a scrape beyond \
         those is answered 503 at once; the client counts it as an answer and scrapes again; only \
         200s count as scrapes answered). The machine has 2 cores: the scrapers also take CPU from the stop.",
        p.effect_reps
    );
    let names: Vec<String> = (0..TARGETS).map(|i| format!("metrics-idle-{i}")).collect();
    for n in &names {
        sb.call("create", json!({"name": n}))?;
    }
    for _ in 0..p.effect_reps {
        check_interrupted()?;
        let (wall, body) = scrape(addr)?;
        if !body.contains("killpath_target_level{") {
            bail!("a scrape lists no target level:\n{body}");
        }
        s.push("scrape_wall", "one scrape: client wall time", Unit::Micros, micros(wall));
    }
    for rep in 0..reps {
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for scraped in order {
            check_interrupted()?;
            let running = if scraped { Some(Scrapers::start(addr)?) } else { None };
            let measured = one_stop(sb, &format!("metrics-{rep}-{}", u8::from(scraped)));
            let served = running.map(Scrapers::stop).transpose()?;
            let (wall, r, survivors) = measured?;
            let tag = if scraped { "scraped" } else { "idle" };
            s.push(&format!("{tag}_empty"), &format!("stop, {tag} agent: time_to_empty_us (agent)"), Unit::Micros, num(&r, "time_to_empty_us")?);
            s.push(&format!("{tag}_wall"), &format!("stop, {tag} agent: client wall time"), Unit::Micros, micros(wall));
            push_stop_phases(s, tag, &r);
            s.push(&format!("{tag}_survivors"), &format!("stop, {tag} agent: survivors"), Unit::Count, count_f64(survivors));
            if let Some((n, secs)) = served {
                s.push("scrape_rate", "scraped: scrapes answered per second", Unit::PerSecond, n as f64 / secs);
            }
        }
    }
    for n in &names {
        sb.call("release", json!({"name": n}))?;
    }
    println!(
        "bench:   scrape p50 {}; stop p50: idle {}, scraped {}",
        s.stat("scrape_wall", 0.5).map_or("-".into(), fmt_us),
        s.stat("idle_empty", 0.5).map_or("-".into(), fmt_us),
        s.stat("scraped_empty", 0.5).map_or("-".into(), fmt_us)
    );
    s.ratio("scraped_over_idle_empty", "stop time_to_empty (agent) while scraped / idle (p50)", "scraped_empty", "idle_empty", 0.5, Some("≤ 1.2"));
    s.ratio("scraped_over_idle_empty_p99", "stop time_to_empty (agent) while scraped / idle (p99)", "scraped_empty", "idle_empty", 0.99, None);
    s.ratio("scraped_over_idle_lock", "stop receipt to state lock while scraped / idle (p50)", "scraped_lock_held_us", "idle_lock_held_us", 0.5, None);
    Ok(())
}

/// One `GET /metrics` on a new connection: wall time and body.
fn scrape(addr: &str) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let out = get_metrics(addr)?;
    let wall = t0.elapsed();
    let Some(body) = out.strip_prefix("HTTP/1.1 200 OK\r\n") else {
        bail!("scrape failed: {}", out.lines().next().unwrap_or_default());
    };
    Ok((wall, body.to_owned()))
}

/// The whole answer to one `GET /metrics` on a new connection.
fn get_metrics(addr: &str) -> Result<String> {
    let mut c = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    c.read_to_string(&mut out).context("reading a scrape")?;
    Ok(out)
}

/// One scrape by a flooding client: true if served, false if the agent
/// answered 503 (its concurrent scrapes were all running: an answer too).
fn flood_scrape(addr: &str) -> Result<bool> {
    let out = get_metrics(addr)?;
    match out.lines().next().unwrap_or_default() {
        l if l.starts_with("HTTP/1.1 200") => Ok(true),
        l if l.starts_with("HTTP/1.1 503") => Ok(false),
        l => bail!("scrape failed: {l}"),
    }
}

/// The scraper threads.
struct Scrapers {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Result<()>>>,
    started: Instant,
}

impl Scrapers {
    /// Starts the scrapers; returns once every one has had an answer.
    fn start(addr: &str) -> Result<Self> {
        let (stop, served, ready) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = (0..SCRAPERS)
            .map(|_| {
                let (stop, served, ready, addr) = (stop.clone(), served.clone(), ready.clone(), addr.to_owned());
                thread::spawn(move || -> Result<()> {
                    let mut first = true;
                    while !stop.load(Ordering::Relaxed) {
                        if flood_scrape(&addr)? {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        if first {
                            ready.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let t0 = Instant::now();
        while ready.load(Ordering::Relaxed) < SCRAPERS as u64 {
            if t0.elapsed() > Duration::from_secs(60) {
                stop.store(true, Ordering::Relaxed);
                bail!("the scrapers did not all get an answer within 60 s");
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(Self { stop, served, threads, started: Instant::now() })
    }

    /// Stops the scrapers: (scrapes answered, seconds).
    fn stop(self) -> Result<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        for t in self.threads {
            t.join().map_err(|_| anyhow::anyhow!("a scraper panicked"))??;
        }
        Ok((self.served.load(Ordering::Relaxed), secs))
    }
}
