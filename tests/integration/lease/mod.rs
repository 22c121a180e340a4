//! Tests: the dead-man lease. Judged from outside the target: a UDP
//! receiver outside it records the kernel clock (CLOCK_MONOTONIC, the
//! clock the lease deadline is on) of every datagram the target's sender
//! gets out, and /proc says which of the target's pids are alive.
mod expiry;
mod input;

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::Agent,
    support::process::{run_bg, Reaped},
};

/// CLOCK_MONOTONIC in ns (bpf_ktime_get_ns's clock).
pub(crate) fn ktime_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// A UDP receiver on 127.0.0.1, outside every target: counts datagrams and
/// keeps the latest send time among them (the sender writes its
/// CLOCK_MONOTONIC into each, so a datagram read late is not mistaken for
/// one sent late).
pub(crate) struct Receiver {
    pub port: u16,
    count: Arc<AtomicU64>,
    last_ns: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let s = UdpSocket::bind("127.0.0.1:0").expect("udp receiver");
        let port = s.local_addr().expect("local addr").port();
        s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let (count, last_ns, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (c, l, d) = (count.clone(), last_ns.clone(), done.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !d.load(Ordering::SeqCst) {
                if let Ok(n) = s.recv(&mut buf) {
                    // The sender's CLOCK_MONOTONIC at the send (the
                    // deadline's clock): what got out, and when it left.
                    if let Some(sent) = std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.strip_prefix("kp-lease ")).and_then(|t| t.parse::<u64>().ok()) {
                        l.fetch_max(sent, Ordering::SeqCst);
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Receiver { port, count, last_ns, done }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Send time (CLOCK_MONOTONIC) of the latest datagram received.
    pub(crate) fn last_ns(&self) -> u64 {
        self.last_ns.load(Ordering::SeqCst)
    }

    /// Waits until datagrams arrive (the sender runs).
    pub(crate) fn assert_flowing(&self, what: &str) {
        let c0 = self.count();
        let ok = crate::harness::wait_until(Duration::from_secs(10), || self.count() > c0 + 20).is_some();
        assert!(ok, "{what}: the receiver gets nothing (count {})", self.count());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Runs target `name`: a UDP sender to `port`, one datagram per ms
/// (errors ignored, so a refused send does not end it).
pub(crate) fn sender(agent: &Agent, name: &str, port: u16) -> Reaped {
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nwhile True:\n    try: s.sendto(b'kp-lease %d' % time.monotonic_ns(),('127.0.0.1',{port}))\n    except OSError: pass\n    time.sleep(0.001)\n"
    );
    run_bg(agent, name, &["python3", "-c", &script], 1)
}

/// The lease of `name` in `status`.
pub(crate) fn lease(agent: &Agent, name: &str) -> Value {
    let st = agent.json(&["status", name]);
    st["targets"][0]["lease"].clone()
}

/// Kernel-raise records of the journal for `name`.
pub(crate) fn lease_raises(agent: &Agent, name: &str) -> Vec<Value> {
    agent.journal().into_iter().filter(|e| e["action"] == "kernel-raise" && e["target"] == name).collect()
}

/// The pids in `name`'s cgroup now.
pub(crate) fn pids(agent: &Agent, name: &str) -> Vec<i32> {
    agent.target_cgroup(name).procs_recursive()
}
