//! Audit mode (dry run) of degrade and isolate: a real workload inside the
//! target reaches real listeners outside it (counted there, by the test),
//! while the kernel counts exactly what the level would have refused; then
//! the real level cuts the same workload, seen from the same receivers.
//! `lsm_*` tests need BPF LSM (the VM).
use std::{
    io::Read as _,
    net::{TcpListener, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{wait_until, Agent},
    support::{
        cgroup::in_cgroup_within,
        process::{py, show, text},
        status::target_row,
    },
};

mod bad_input;
mod degrade;
mod drill;
mod isolate;
mod lsm;
mod restart;

/// TCP and UDP receivers on 127.0.0.1, outside every target: connections
/// accepted, bytes read, datagrams and bytes received.
pub(super) struct Receivers {
    pub tcp_port: u16,
    pub udp_port: u16,
    pub conns: Arc<AtomicU64>,
    pub tcp_bytes: Arc<AtomicU64>,
    pub datagrams: Arc<AtomicU64>,
    pub udp_bytes: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Receivers {
    pub(super) fn start() -> Receivers {
        let l = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
        l.set_nonblocking(true).unwrap();
        let u = UdpSocket::bind("127.0.0.1:0").expect("udp receiver");
        u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let r = Receivers {
            tcp_port: l.local_addr().unwrap().port(),
            udp_port: u.local_addr().unwrap().port(),
            conns: Default::default(),
            tcp_bytes: Default::default(),
            datagrams: Default::default(),
            udp_bytes: Default::default(),
            done: Default::default(),
        };
        let (done, conns, bytes) = (r.done.clone(), r.conns.clone(), r.tcp_bytes.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        conns.fetch_add(1, Ordering::SeqCst);
                        let (done, bytes) = (done.clone(), bytes.clone());
                        thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                            let mut buf = [0u8; 4096];
                            while !done.load(Ordering::SeqCst) {
                                match s.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        bytes.fetch_add(n as u64, Ordering::SeqCst);
                                    }
                                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let (done, dgrams, bytes) = (r.done.clone(), r.datagrams.clone(), r.udp_bytes.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::SeqCst) {
                if let Ok(n) = u.recv(&mut buf) {
                    dgrams.fetch_add(1, Ordering::SeqCst);
                    bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        });
        r
    }

    /// (connections, TCP bytes, datagrams, UDP bytes) so far.
    pub(super) fn counts(&self) -> (u64, u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        (g(&self.conns), g(&self.tcp_bytes), g(&self.datagrams), g(&self.udp_bytes))
    }

    /// Waits until the receivers counted at least `want`, or 5 s.
    pub(super) fn wait_for(&self, want: (u64, u64, u64, u64)) -> (u64, u64, u64, u64) {
        let _ = wait_until(Duration::from_secs(5), || {
            let c = self.counts();
            c.0 >= want.0 && c.1 >= want.1 && c.2 >= want.2 && c.3 >= want.3
        });
        self.counts()
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Bytes per TCP connection and per datagram the workload sends.
pub(super) const TCP_PAYLOAD: u64 = 100;
pub(super) const UDP_PAYLOAD: u64 = 50;

/// The workload, run inside the target: `n_tcp` TCP connections (each
/// sends TCP_PAYLOAD bytes and closes), then `n_udp` datagrams sent with
/// sendto on one unconnected socket. Prints `ok_tcp ok_udp [errnos]`.
const WORKLOAD: &str = r#"
import socket, sys
host, tp, up, nt, nu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ok_t = ok_u = 0
errs = set()
for i in range(nt):
    try:
        s = socket.create_connection((host, tp), timeout=2)
        s.sendall(b'x' * 100)
        s.close()
        ok_t += 1
    except OSError as e:
        errs.add(e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(nu):
    try:
        u.sendto(b'y' * 50, (host, up))
        ok_u += 1
    except OSError as e:
        errs.add(e.errno)
print(ok_t, ok_u, sorted(errs))
"#;

/// Runs the workload inside cgroup `cg`; (TCP connections made, datagrams sent, errnos).
pub(super) fn workload(cg: &Path, r: &Receivers, n_tcp: u32, n_udp: u32) -> (u64, u64, String) {
    let out = in_cgroup_within(
        60,
        cg,
        &[py(), "-c", WORKLOAD, "127.0.0.1", &r.tcp_port.to_string(), &r.udp_port.to_string(), &n_tcp.to_string(), &n_udp.to_string()],
    );
    assert!(out.status.success(), "workload: {}", show(&out));
    let line = text(&out.stdout);
    let mut it = line.trim().splitn(3, ' ');
    let ok_t = it.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("workload output {line:?}"));
    let ok_u = it.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("workload output {line:?}"));
    (ok_t, ok_u, it.next().unwrap_or_default().to_owned())
}

/// The target's status row.
pub(super) fn row(agent: &Agent, name: &str) -> Value {
    target_row(agent, name).unwrap_or_else(|| panic!("no status row for {name}"))
}

/// Would-be refusals of `name` counted under `key` (0 when absent).
pub(super) fn would(agent: &Agent, name: &str, key: &str) -> u64 {
    row(agent, name)["would_have_refused"][key].as_u64().unwrap_or(0)
}

/// Real denials of `name` for capability `cap` (0 when absent).
pub(super) fn denials(agent: &Agent, name: &str, cap: &str) -> u64 {
    row(agent, name)["denials"][cap]["total"].as_u64().unwrap_or(0)
}

/// A `killpath` command that must fail; its stderr.
pub(super) fn refused(agent: &Agent, args: &[&str]) -> String {
    let out = agent.kp(args);
    assert!(!out.status.success(), "killpath {args:?} should fail: {}", show(&out));
    text(&out.stderr)
}
