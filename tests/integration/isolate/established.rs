//! Connections that are already open when isolate comes: a long-lived TCP
//! transfer stops (and resumes after restore), also when it was opened
//! before the workload was adopted.
use std::{
    io::Read as _,
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    harness::{alive, wait_until, Agent},
    support::process::{py, run_bg, spawn_outside},
};

/// A TCP receiver in this test process (outside every target) that counts
/// bytes and records when the last ones arrived.
struct Receiver {
    port: u16,
    base: Instant,
    bytes: Arc<AtomicU64>,
    last_rx_us: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let base = Instant::now();
        let bytes = Arc::new(AtomicU64::new(0));
        let last_rx_us = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (b, l, d) = (bytes.clone(), last_rx_us.clone(), done.clone());
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < deadline && !d.load(Ordering::SeqCst) => thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while !d.load(Ordering::SeqCst) {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        l.store(base.elapsed().as_micros() as u64, Ordering::SeqCst);
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        Receiver { port, base, bytes, last_rx_us, done, thread: Some(thread) }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn assert_moving(&self, ctx: &str) {
        assert!(wait_until(Duration::from_secs(10), || self.bytes() > 1 << 20).is_some(), "{ctx}: the transfer never started");
        let b0 = self.bytes();
        assert!(wait_until(Duration::from_secs(2), || self.bytes() > b0 + (1 << 16)).is_some(), "{ctx}: the transfer is not moving");
    }

    /// Isolates `name` and waits until no byte arrived for 1.5 s (at most
    /// 6 s). Returns (µs from issuing isolate to the last byte, bytes).
    /// Asserts the transfer stayed quiet for at least 1 s.
    fn isolate_and_measure(&self, agent: &Agent, name: &str, what: &str) -> (u64, u64) {
        let at_issue = self.bytes();
        let t0 = self.now_us();
        let r = agent.json(&["isolate", name]);
        let returned_us = self.now_us() - t0;
        let at_return = self.bytes();
        let quiet_us = || self.now_us() - self.last_rx_us.load(Ordering::SeqCst).max(t0);
        let _ = wait_until(Duration::from_secs(6), || quiet_us() >= 1_500_000);
        let last = self.last_rx_us.load(Ordering::SeqCst);
        let stopped_after_us = last.saturating_sub(t0);
        let total = self.bytes();
        eprintln!(
            "{what}: isolate issued at t=0; command returned at {returned_us} µs (agent time_to_effect_us {}); \
             last data received at {stopped_after_us} µs; {} bytes arrived after issue ({} after the command returned); quiet since for {} ms",
            r["time_to_effect_us"],
            total - at_issue,
            total - at_return,
            quiet_us() / 1000
        );
        assert!(quiet_us() >= 1_000_000, "{what}: data still moving after isolate (last at {stopped_after_us} µs, {} bytes after issue)", total - at_issue);
        (stopped_after_us, total)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A python sender: ~16 MB/s to 127.0.0.1:PORT, forever; send errors are
/// retried (it never exits on its own).
fn sender_py(port: u16) -> String {
    format!("import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\nb = b'x' * 16384\nwhile True:\n    try:\n        s.sendall(b)\n    except OSError:\n        pass\n    time.sleep(0.001)\n")
}

/// A long-lived TCP transfer from inside the target to a receiver outside
/// stops moving data within a measured time after isolate, stays stopped,
/// and (same connection) moves again after restore.
#[test]
fn isolate_stops_long_lived_tcp_transfer() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let run = run_bg(&agent, "xfer", &[py(), "-c", &sender_py(rx.port)], 1);
    rx.assert_moving("before isolate");
    let (stopped_after_us, total) = rx.isolate_and_measure(&agent, "xfer", "long-lived TCP transfer");
    assert!(stopped_after_us <= 2_000_000, "data kept arriving {stopped_after_us} µs after isolate");
    assert!(alive(run.pid()), "isolation must not kill the sender");

    // Restore: the same connection carries data again (TCP retransmits).
    let t1 = Instant::now();
    agent.json(&["restore", "xfer", "--to", "normal"]);
    let resumed = wait_until(Duration::from_secs(10), || rx.bytes() > total);
    eprintln!("after restore, the same connection moved data again after {} ms", t1.elapsed().as_millis());
    assert!(resumed.is_some(), "the established connection never resumed after restore");
}

/// A connection the workload opened BEFORE it became a target (`adopt
/// --pid` of a running process: its socket still belongs to the cgroup it
/// was created in) must be cut by isolate too.
#[test]
fn isolate_cuts_connection_opened_before_adopt() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::start();
    let sender = spawn_outside(&[py(), "-c", &sender_py(rx.port)]);
    rx.assert_moving("before adopt");
    agent.json(&["adopt", "adopted", "--pid", &sender.pid().to_string()]);
    let cg = agent.target_cgroup("adopted");
    assert_eq!(cg.procs_recursive(), vec![sender.pid()], "the sender is in the target");
    rx.assert_moving("adopted, before isolate");
    // The socket was created in the test's cgroup: cgroup_skb and sock_addr
    // hooks key on the socket's cgroup and do not see it as the target's.
    // Only BPF LSM (socket_sendmsg/recvmsg) cuts it; without BPF LSM the
    // product must say that channel stays OPEN, never claim it.
    let probe = agent.json(&["probe"]);
    if probe["lsm_available"] == true {
        let (stopped_after_us, _) = rx.isolate_and_measure(&agent, "adopted", "connection opened before adopt");
        assert!(stopped_after_us <= 2_000_000, "data kept arriving {stopped_after_us} µs after isolate");
    } else {
        let r = agent.json(&["isolate", "adopted"]);
        let open: Vec<&str> = r["open_channels"].as_array().expect("open_channels").iter().filter_map(|v| v.as_str()).collect();
        assert!(open.contains(&"pre-adopt-sockets"), "an adopted target's pre-existing sockets are not cut without BPF LSM and must be reported OPEN: {r}");
        let ch = r["channels"].as_array().expect("channels").iter().find(|c| c["channel"] == "pre-adopt-sockets").cloned().expect("channel listed");
        assert_eq!(ch["enforced"], false, "{ch}");
        let st = agent.json(&["status", "adopted"]);
        assert!(st["targets"][0]["open_channels"].to_string().contains("pre-adopt-sockets"), "{st}");
        rx.assert_moving("adopted and isolated without BPF LSM: reported OPEN, and it is");
    }
    assert!(alive(sender.pid()), "isolation must not kill the sender");
}
