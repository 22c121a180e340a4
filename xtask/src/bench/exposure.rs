//! Benchmark: the exposure window of a critical egress tripwire, judged by
//! a receiver outside the target, for three ways of evaluating the same
//! rule side by side: in the kernel (the crossing packet is the first one
//! refused), by the agent from the counters it polls, and the pattern peers
//! use (a detector in user space reading the event stream, then asking the
//! agent to isolate).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    os::unix::net::UnixStream,
    path::Path,
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, rotate, spawn_in_cgroup},
    helper::{UDP_PAYLOAD, UDP_WIRE},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

/// The rule's threshold, in bytes the kernel counts at cgroup skb egress
/// (IP header included).
const THRESHOLD: u64 = 1 << 20;
/// No byte for this long at the receiver: the target is cut.
const QUIET: Duration = Duration::from_millis(300);
/// Longest a repetition may take before it counts as never cut.
const GIVE_UP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum Eval {
    Kernel,
    Agent,
    Detector,
}

impl Eval {
    fn id(self) -> &'static str {
        match self {
            Eval::Kernel => "kernel",
            Eval::Agent => "agent",
            Eval::Detector => "detector",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Eval::Kernel => "in-kernel tripwire",
            Eval::Agent => "agent polling the counters",
            Eval::Detector => "user-space detector → isolate",
        }
    }

    /// The rule's flags for this way of evaluating it.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Eval::Kernel => &["--critical"],
            Eval::Agent => &["--critical", "--eval", "agent"],
            // The rule only reports; the detector acts.
            Eval::Detector => &["--mode", "audit"],
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn id(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Payload bytes the receiver sees for THRESHOLD bytes counted at
    /// egress: UDP datagrams carry 28 bytes of headers each; TCP's GSO
    /// packets carry ~52 bytes per up to 64 KiB (counted as none).
    fn threshold_payload(self) -> u64 {
        match self {
            Proto::Tcp => THRESHOLD,
            Proto::Udp => THRESHOLD * UDP_PAYLOAD as u64 / UDP_WIRE as u64,
        }
    }
}

pub(super) fn exposure(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    let reps = (p.effect_reps / 10).max(3);
    s.title = "Exposure window of a critical egress tripwire".into();
    s.description = format!(
        "{reps} repetitions per variant and protocol, the order of the variants rotating. A target streams \
         to a receiver outside it (127.0.0.1) as fast as it can — TCP writes of 64 KiB, UDP datagrams of \
         {UDP_PAYLOAD} bytes — under the rule `tripwire add --metric egress-bytes --above {THRESHOLD} \
         --window 10s --action isolate`. **in-kernel**: `--critical`: the cgroup skb egress program counts \
         the bytes and raises the target to isolate on the packet that crosses the threshold. **agent \
         polling**: the same rule with `--eval agent`: the agent reads the kernel's counters on its polling \
         interval and isolates. **detector**: the peers' pattern: the rule in `--mode audit` only reports; a \
         detector subscribed to `events` calls `isolate` over the socket when it sees the firing. Judged at \
         the receiver: **bytes past the threshold** = payload that got out − the payload of {THRESHOLD} egress \
         bytes (0 or less: nothing got out after the crossing; UDP datagrams are numbered, so those the \
         receiver's full buffer dropped still count as out), and the **window seen outside** = last byte \
         received − the moment the received payload reached the threshold (0 when it never did). The \
         window killpath reports (crossing → effect in force, kernel clock) is shown too."
    );
    for rep in 0..reps {
        for eval in rotate(&[Eval::Kernel, Eval::Agent, Eval::Detector], rep) {
            for proto in [Proto::Tcp, Proto::Udp] {
                check_interrupted()?;
                let name = format!("exp-{}-{}-{rep}", eval.id(), proto.id());
                let key = format!("{}_{}", eval.id(), proto.id());
                let out = one(sb, &name, eval, proto).with_context(|| format!("{} over {}", eval.label(), proto.id()));
                let _ = sb.call("release", json!({"name": name}));
                let out = out?;
                let what = format!("{} ({})", eval.label(), proto.id());
                s.push(&format!("{key}_excess"), &format!("{what}: bytes past the threshold"), Unit::Count, out.excess as f64);
                s.push(&format!("{key}_outside"), &format!("{what}: window seen outside"), Unit::Micros, out.outside_us);
                match out.reported_us {
                    Some(us) => s.push(&format!("{key}_reported"), &format!("{what}: window killpath reports"), Unit::Micros, us),
                    None => s.series_error(
                        &format!("{key}_reported"),
                        &format!("{what}: window killpath reports"),
                        Unit::Micros,
                        "no exposure window in the firing's records".into(),
                    ),
                }
            }
        }
    }
    for (id, label, num) in [
        ("agent_over_kernel_tcp", "agent polling / in-kernel: window killpath reports, TCP (p50)", "agent_tcp_reported"),
        ("detector_over_kernel_tcp", "detector / in-kernel: window killpath reports, TCP (p50)", "detector_tcp_reported"),
        ("agent_over_kernel_udp", "agent polling / in-kernel: window killpath reports, UDP (p50)", "agent_udp_reported"),
        ("detector_over_kernel_udp", "detector / in-kernel: window killpath reports, UDP (p50)", "detector_udp_reported"),
    ] {
        let den = if num.ends_with("tcp_reported") { "kernel_tcp_reported" } else { "kernel_udp_reported" };
        s.ratio(id, label, num, den, 0.5, None);
    }
    s.notes.push(format!(
        "Goal (issue 13): in-kernel window under 100 µs, and bytes past the threshold within one packet \
         (UDP: {UDP_PAYLOAD} bytes) or one TCP window."
    ));
    Ok(())
}

/// What one repetition measured.
struct Outcome {
    excess: i64,
    outside_us: f64,
    reported_us: Option<f64>,
}

fn one(sb: &mut Sandbox, name: &str, eval: Eval, proto: Proto) -> Result<Outcome> {
    sb.call("create", json!({"name": name}))?;
    let rx = Receiver::start(proto)?;
    let rule = format!("{name}-rule");
    let mut add = vec!["tripwire", "add", &rule, "--target", name, "--metric", "egress-bytes", "--above"];
    let above = THRESHOLD.to_string();
    add.extend([above.as_str(), "--window", "10s", "--action", "isolate"]);
    add.extend(eval.flags());
    sb.kp(&add)?;
    let detector = (eval == Eval::Detector).then(|| Detector::start(sb.socket(), name)).transpose()?;
    let cg = sb.parent().join(name);
    let helper = sb.helper.display().to_string();
    let mut blaster = spawn_in_cgroup(&cg, &[&helper, "bench-helper", "blast", proto.id(), &rx.addr])?;
    let cut = wait_cut(&rx, &mut blaster);
    proc::terminate(&mut blaster, Duration::from_secs(1));
    let log = rx.stop();
    let detected = detector.map(Detector::join).transpose();
    let _ = sb.kp(&["tripwire", "remove", &rule]);
    cut?;
    let detected = detected?;
    let records = sb.call("journal", json!({}))?.1;
    let reported_us = reported_window_us(&records, name, detected);
    let thr = proto.threshold_payload();
    // UDP: what got out is every datagram up to the highest number seen
    // (those the receiver's buffer dropped left the target too).
    let got_out = log.max_seq.map_or(log.total, |s| (s + 1) * UDP_PAYLOAD as u64);
    let excess = got_out as i64 - thr as i64;
    let outside_us = match log.at_or_above(thr) {
        Some(t) => log.last_ns.saturating_sub(t) as f64 / 1000.0,
        None => 0.0,
    };
    Ok(Outcome { excess, outside_us, reported_us })
}

/// Waits until the receiver got bytes and then none for [`QUIET`].
fn wait_cut(rx: &Receiver, blaster: &mut Child) -> Result<()> {
    let start = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(10));
        let (total, last) = (rx.total.load(Ordering::Relaxed), rx.last_ns.load(Ordering::Relaxed));
        if total > 0 && mono_ns().saturating_sub(last) > QUIET.as_nanos() as u64 {
            return Ok(());
        }
        if let Ok(Some(status)) = blaster.try_wait() {
            if total == 0 {
                bail!("the sender exited ({status}) before the receiver got anything");
            }
        }
        if start.elapsed() > GIVE_UP {
            bail!("the target was never cut: the receiver still got bytes after {GIVE_UP:?} ({total} bytes)");
        }
    }
}

/// The window killpath reports for the firing on `target`: the kernel's
/// crossing → raise for a kernel raise, the firing record's window for the
/// agent, and crossing → the detector's isolate answer for the detector.
fn reported_window_us(journal: &Value, target: &str, detected_mono_ns: Option<u64>) -> Option<f64> {
    let recs: Vec<&Value> = journal["records"].as_array()?.iter().filter(|r| r["target"] == json!(target)).collect();
    if let Some(done) = detected_mono_ns {
        let crossing = recs.iter().filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("tripwire"))).find_map(|r| find_num(&r["params"], "cross"))?;
        return Some((done as f64 - crossing) / 1000.0);
    }
    recs.iter().find_map(|r| {
        let ns = find_num(&r["params"], "exposure_window_ns");
        let us = find_num(&r["params"], "exposure_window_us");
        ns.map(|n| n / 1000.0).or(us)
    })
}

/// The first number under a key containing `key`, searched depth-first.
fn find_num(v: &Value, key: &str) -> Option<f64> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, x)| if k.contains(key) { x.as_f64() } else { None }).or_else(|| m.values().find_map(|x| find_num(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_num(x, key)),
        _ => None,
    }
}

/// CLOCK_MONOTONIC in ns: the clock the kernel's timestamps use.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) with a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the receiver saw: every read as (time, cumulative payload bytes).
/// For UDP, also the highest sequence number seen: datagrams the
/// receiver's full socket buffer dropped still got out of the target.
struct RxLog {
    points: Vec<(u64, u64)>,
    total: u64,
    last_ns: u64,
    max_seq: Option<u64>,
}

impl RxLog {
    /// When the cumulative payload first reached `bytes`.
    fn at_or_above(&self, bytes: u64) -> Option<u64> {
        self.points.iter().find(|(_, c)| *c >= bytes).map(|(t, _)| *t)
    }
}

/// A receiver outside every target, counting payload bytes.
struct Receiver {
    addr: String,
    total: Arc<AtomicU64>,
    last_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<RxLog>,
}

impl Receiver {
    fn start(proto: Proto) -> Result<Self> {
        let total = Arc::new(AtomicU64::new(0));
        let last_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, l, st) = (total.clone(), last_ns.clone(), stop.clone());
        let mut log = RxLog { points: Vec::new(), total: 0, last_ns: 0, max_seq: None };
        let note = move |n: usize, log: &mut RxLog| {
            let now = mono_ns();
            log.total += n as u64;
            log.last_ns = now;
            log.points.push((now, log.total));
            t.store(log.total, Ordering::Relaxed);
            l.store(now, Ordering::Relaxed);
        };
        let (addr, thread) = match proto {
            Proto::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").context("binding the TCP receiver")?;
                let addr = listener.local_addr()?.to_string();
                listener.set_nonblocking(true)?;
                let thread = thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    let conn = loop {
                        if st.load(Ordering::Relaxed) {
                            return log;
                        }
                        match listener.accept() {
                            Ok((c, _)) => break c,
                            Err(_) => thread::sleep(Duration::from_millis(1)),
                        }
                    };
                    let mut conn = conn;
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
                    while !st.load(Ordering::Relaxed) {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => note(n, &mut log),
                            Err(_) => {}
                        }
                    }
                    log
                });
                (addr, thread)
            }
            Proto::Udp => {
                let sock = UdpSocket::bind("127.0.0.1:0").context("binding the UDP receiver")?;
                let addr = sock.local_addr()?.to_string();
                sock.set_read_timeout(Some(Duration::from_millis(20)))?;
                let thread = thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while !st.load(Ordering::Relaxed) {
                        if let Ok(n) = sock.recv(&mut buf) {
                            note(n, &mut log);
                            if let Some(seq) = buf.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) {
                                log.max_seq = log.max_seq.max(Some(seq));
                                // The timeline counts what got out (by number), not what the buffer kept.
                                let out = log.max_seq.map_or(0, |m| (m + 1) * UDP_PAYLOAD as u64);
                                if let Some(last) = log.points.last_mut() {
                                    last.1 = out;
                                }
                            }
                        }
                    }
                    log
                });
                (addr, thread)
            }
        };
        Ok(Self { addr, total, last_ns, stop, thread })
    }

    fn stop(self) -> RxLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(RxLog { points: Vec::new(), total: 0, last_ns: 0, max_seq: None })
    }
}

/// The peers' pattern: a process reading the agent's event stream that
/// calls `isolate` when it sees the rule fire.
struct Detector {
    thread: JoinHandle<Result<u64>>,
}

impl Detector {
    fn start(socket: &Path, target: &str) -> Result<Self> {
        let mut events = UnixStream::connect(socket).context("connecting the detector to the agent")?;
        events.write_all(b"{\"id\":1,\"cmd\":\"events\",\"args\":{}}\n")?;
        let mut reader = BufReader::new(events.try_clone()?);
        let mut first = String::new();
        reader.read_line(&mut first).context("reading the events subscription's answer")?;
        events.set_read_timeout(Some(GIVE_UP))?;
        let (socket, target) = (socket.to_owned(), target.to_owned());
        let thread = thread::spawn(move || -> Result<u64> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    bail!("the event stream ended before the rule fired");
                }
                let Ok(ev) = serde_json::from_str::<Value>(&line) else { continue };
                // Each event line is a response: {"id", "ok", "result": {"event": {...}}}.
                let ev = &ev["result"]["event"];
                if ev["target"] != json!(target) || !ev["action"].as_str().is_some_and(|a| a.starts_with("tripwire")) {
                    continue;
                }
                let mut ctl = UnixStream::connect(&socket)?;
                let req = json!({"id": 2, "cmd": "isolate", "args": {"name": target, "reason": "detector"}});
                ctl.write_all(format!("{req}\n").as_bytes())?;
                let mut reply = String::new();
                BufReader::new(ctl).read_line(&mut reply)?;
                let done = mono_ns();
                let v: Value = serde_json::from_str(&reply)?;
                if v["ok"] != json!(true) {
                    bail!("the detector's isolate was refused: {reply}");
                }
                return Ok(done);
            }
        });
        Ok(Self { thread })
    }

    fn join(self) -> Result<u64> {
        self.thread.join().map_err(|_| anyhow!("the detector thread panicked"))?
    }
}
