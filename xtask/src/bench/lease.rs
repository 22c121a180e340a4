//! Benchmark: dead-man lease expiry to effect with the agent SIGKILLed
//! before the deadline. The kernel alone enforces it (a pinned perf_event
//! tick, killpath-ebpf/src/deadman.rs).
//!
//! - **active** workload: a UDP sender inside the target sending as fast
//!   as it can to a receiver here, outside it; the lease expires to
//!   isolate. Effect: the last datagram the receiver got, on the deadline's
//!   clock (CLOCK_MONOTONIC): every later one was refused.
//! - **idle** workload: `sleep 1000`, the lease expires to stop. Effect: the
//!   level raised in the kernel's map, as the kernel recorded it in the same
//!   program run (`KP_RAISES`, journaled by the restarted agent).
use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};

use super::{
    common::{check_interrupted, spawn_in_cgroup},
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};
use crate::proc;

const REPS: usize = 10;
const TTL_MS: u64 = 500;

/// CLOCK_MONOTONIC in ns (bpf_ktime_get_ns's clock).
fn ktime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn sleep_until(t: u64) {
    let now = ktime_ns();
    if t > now {
        thread::sleep(Duration::from_nanos(t - now));
    }
}

/// Signed µs from `deadline` to `t`.
fn after_us(t: u64, deadline: u64) -> f64 {
    (t as f64 - deadline as f64) / 1e3
}

pub(super) fn lease(sb: &mut Sandbox, _p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Dead-man lease: expiry to effect, agent SIGKILLed before the deadline".into();
    s.description = format!(
        "{REPS} repetitions, active and idle alternating. A lease of {TTL_MS} ms is armed over the socket and \
         renewed once 2.0–2.9 ms later (so the deadline falls at a different point of the tick's period in \
         each run), then the agent is SIGKILLed at once (before the deadline); the kernel's tick (perf_event cpu-clock, 1 ms, \
         pinned) enforces it alone. **active**: a UDP sender inside the target sends as fast as it can to a \
         receiver outside; lease to isolate; each datagram carries its send time \
         (CLOCK_MONOTONIC, the deadline's clock); sample = send time of the latest datagram the receiver \
         got, minus the deadline (every later one was refused; negative: the sender, starved of CPU, sent \
         nothing in the last moments before the deadline). **idle**: `sleep 1000`; lease to stop; sample = the \
         kernel's own record of when it raised the level (`KP_RAISES`: raise time minus deadline, journaled \
         by the restarted agent). Goal: within 10 ms (10000 µs) of the deadline. The agent is restarted after \
         each repetition (it journals the expiry); an idle task of a stopped target is killed when it next \
         runs or by the restarted agent (not measured here)."
    );
    for rep in 0..REPS {
        for active in if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            check_interrupted()?;
            sb.start_agent()?;
            let name = format!("lease-{}-{rep}", if active { "active" } else { "idle" });
            sb.call("create", json!({"name": name}))?;
            let cg = sb.parent().join(&name);
            let rx = if active {
                Some(Receiver::start()?)
            } else {
                None
            };
            let mut child = match &rx {
                Some(r) => spawn_in_cgroup(&cg, &["python3", "-c", &sender(r.port)])?,
                None => spawn_in_cgroup(&cg, &["sleep", "1000"])?,
            };
            let measured = (|| -> Result<(u64, Option<u64>)> {
                if let Some(r) = &rx {
                    r.wait_flowing()?;
                }
                let level = if active { "isolate" } else { "stop" };
                sb.call(
                    "lease",
                    json!({"name": name, "ttl": format!("{TTL_MS}ms"), "on_expiry": level}),
                )?;
                // The tick is attached with the first lease, so its phase
                // follows the arm; one renewal at a varying offset puts the
                // deadline anywhere within the tick's 1 ms period.
                thread::sleep(Duration::from_micros(2_000 + 97 * rep as u64));
                let (_, armed) = sb.call("lease", json!({"name": name, "renew": true}))?;
                let deadline = armed["lease"]["deadline_ktime_ns"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no deadline in {armed}"))?;
                sb.kill_agent();
                if ktime_ns() >= deadline {
                    return Err(anyhow!("the agent died after the deadline: sample void"));
                }
                sleep_until(deadline + 300_000_000);
                Ok((deadline, rx.as_ref().map(Receiver::last_ns)))
            })();
            proc::terminate(&mut child, Duration::from_secs(1));
            sb.start_agent()?;
            let (deadline, last) = measured?;
            let window_ns = raise_window(sb, &name)?;
            match last {
                Some(last) => {
                    s.push(
                        "active_last_datagram",
                        "active (isolate): last datagram that got out, sent after the deadline",
                        Unit::Micros,
                        after_us(last, deadline),
                    );
                    s.push(
                        "active_kernel_raise",
                        "active (isolate): kernel raise after the deadline (KP_RAISES)",
                        Unit::Micros,
                        window_ns as f64 / 1e3,
                    );
                }
                None => s.push(
                    "idle_kernel_raise",
                    "idle (stop): kernel raise after the deadline (KP_RAISES)",
                    Unit::Micros,
                    window_ns as f64 / 1e3,
                ),
            }
            sb.call("release", json!({"name": name}))?;
        }
    }
    Ok(())
}

/// The restarted agent's kernel-raise record for `name`: raise - deadline.
fn raise_window(sb: &mut Sandbox, name: &str) -> Result<u64> {
    for _ in 0..100 {
        let (_, j) = sb.call("journal", json!({"after": 0}))?;
        let found = j["records"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r: &&Value| r["action"] == "kernel-raise" && r["target"] == name);
        if let Some(r) = found {
            return r["params"]["exposure_window_ns"]
                .as_u64()
                .ok_or_else(|| anyhow!("no exposure window in {r}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "the restarted agent journaled no kernel-raise for {name}"
    ))
}

fn sender(port: u16) -> String {
    format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nwhile True:\n    try: s.sendto(b'kp-lease %d' % time.monotonic_ns(),('127.0.0.1',{port}))\n    except OSError: pass\n"
    )
}

/// A UDP receiver outside every target: the send time (CLOCK_MONOTONIC,
/// written by the sender) of the latest datagram that got through.
struct Receiver {
    port: u16,
    count: Arc<AtomicU64>,
    last_ns: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let s = UdpSocket::bind("127.0.0.1:0").context("udp receiver")?;
        let port = s.local_addr()?.port();
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        let (count, last_ns, done) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, l, d) = (count.clone(), last_ns.clone(), done.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !d.load(Ordering::SeqCst) {
                if let Ok(n) = s.recv(&mut buf) {
                    // The sender's own CLOCK_MONOTONIC at the send: a
                    // datagram queued before the deadline and read late
                    // here does not count as one that got out after it.
                    if let Some(sent) = std::str::from_utf8(&buf[..n])
                        .ok()
                        .and_then(|t| t.strip_prefix("kp-lease "))
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        l.fetch_max(sent, Ordering::SeqCst);
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Ok(Self {
            port,
            count,
            last_ns,
            done,
        })
    }

    fn wait_flowing(&self) -> Result<()> {
        for _ in 0..500 {
            if self.count.load(Ordering::SeqCst) > 100 {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Err(anyhow!("the sender's datagrams never reached the receiver"))
    }

    fn last_ns(&self) -> u64 {
        self.last_ns.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}
