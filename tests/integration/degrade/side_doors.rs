//! `net.connect` and `net.raw` against a workload that goes around the
//! connect hooks: a raw IPv4 socket (root) sending hand-made UDP, a TCP
//! connection made before the revocation, and raw sockets with `net.raw`
//! revoked where there is no BPF LSM. Judged from outside the target: a
//! UDP receiver counting datagrams, TCP receivers counting bytes, and the
//! errno a real python client got from socket(2).
use std::{
    io::Read as _,
    net::{TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    clients::{connect_errno, tcp_sink, udp_errno},
    denials,
    events::Events,
    in_cgroup, row, EPERM,
};
use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        net::free_tcp_port,
        process::{py, run_bg, show},
        status::{lsm_attached, need_lsm, strs},
    },
};

/// EAFNOSUPPORT: no IPv6 on this kernel (then the IPv6 raw socket is not checked).
const EAFNOSUPPORT: i64 = 97;

/// Python: tries socket(2) for a raw IPv4 socket, a raw IPv6 socket and a
/// packet socket; prints `{"inet": errno, "inet6": errno, "packet": errno}`
/// (0 = created). A raw IPv4 socket that was created sends one hand-made
/// UDP datagram to 127.0.0.1:PORT.
const RAW_CREATE_PY: &str = r#"
import json, socket, struct, sys
port = int(sys.argv[1])
res = {}
for name, fam, ty, proto in [("inet", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
                             ("inet6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP),
                             ("packet", socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))]:
    try:
        s = socket.socket(fam, ty, proto)
        res[name] = 0
        if name == "inet":
            p = b"killpath-raw"
            try:
                s.sendto(struct.pack("!HHHH", 40001, port, 8 + len(p), 0) + p, ("127.0.0.1", 0))
            except OSError as e:
                res["send"] = e.errno
        s.close()
    except OSError as e:
        res[name] = e.errno
print(json.dumps(res))
"#;

/// Python: opens a raw IPv4 socket (IPPROTO_UDP: the kernel writes the IP
/// header, the script the UDP header, checksum 0), then sends a datagram
/// to 127.0.0.1:PORT every 10 ms forever; send errors are ignored.
const RAW_SENDER_PY: &str = r#"
import socket, struct, sys, time
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
p = b"killpath-raw"
pkt = struct.pack("!HHHH", 40000, port, 8 + len(p), 0) + p
while True:
    try:
        s.sendto(pkt, ("127.0.0.1", 0))
    except OSError:
        pass
    time.sleep(0.01)
"#;

/// Python: one thread per PORT, each connects to 127.0.0.1:PORT and sends
/// 16 KiB chunks (1 ms apart) forever; send errors are retried.
const TCP_SENDERS_PY: &str = r#"
import socket, sys, threading, time
def send(port):
    s = socket.create_connection(("127.0.0.1", port))
    b = b"x" * 16384
    while True:
        try:
            s.sendall(b)
        except OSError:
            pass
        time.sleep(0.001)
for p in sys.argv[1:]:
    threading.Thread(target=send, args=(int(p),), daemon=True).start()
while True:
    time.sleep(1)
"#;

/// Python: a TCP server on 127.0.0.1:PORT that, for every connection it
/// accepts, sends 16 KiB chunks (1 ms apart) until the peer goes away.
const SERVER_PY: &str = r#"
import socket, sys, threading, time
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1])))
l.listen(8)
def serve(c):
    b = b"y" * 16384
    while True:
        try:
            c.sendall(b)
        except OSError:
            return
        time.sleep(0.001)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A counter fed by a receiver thread in this test process (outside every
/// target), with the time of the last arrival.
#[derive(Clone)]
struct Counter {
    base: Instant,
    count: Arc<AtomicU64>,
    last_us: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Counter {
    fn new() -> Counter {
        Counter { base: Instant::now(), count: Arc::default(), last_us: Arc::default(), done: Arc::default() }
    }

    fn add(&self, n: u64) {
        self.last_us.store(self.base.elapsed().as_micros() as u64, Ordering::SeqCst);
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (at most `max`) until nothing arrived for `quiet`; returns
    /// whether it got quiet.
    fn wait_quiet(&self, quiet: Duration, max: Duration) -> bool {
        let t0 = self.base.elapsed().as_micros() as u64;
        wait_until(max, || self.base.elapsed().as_micros() as u64 - self.last_us.load(Ordering::SeqCst).max(t0) >= quiet.as_micros() as u64).is_some()
    }

    fn assert_moving(&self, what: &str) {
        let c0 = self.get();
        assert!(wait_until(Duration::from_secs(10), || self.get() > c0 + 10).is_some(), "{what}: not moving (count {})", self.get());
    }
}

impl Drop for Counter {
    /// The test's handle going away stops the receiver thread.
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// A UDP receiver on 127.0.0.1 counting datagrams that carry `killpath-raw`.
fn udp_receiver() -> (u16, Counter) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp receiver");
    let port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let c = Counter::new();
    let c2 = c.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !c2.done.load(Ordering::SeqCst) {
            if let Ok(n) = s.recv(&mut buf) {
                if buf[..n].ends_with(b"killpath-raw") {
                    c2.add(1);
                }
            }
        }
    });
    (port, c)
}

/// A TCP receiver on 127.0.0.1 accepting one connection and counting its bytes.
fn tcp_receiver() -> (u16, Counter) {
    let l = TcpListener::bind("127.0.0.1:0").expect("tcp receiver");
    let port = l.local_addr().unwrap().port();
    let c = Counter::new();
    let c2 = c.clone();
    thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        count_reads(s, &c2);
    });
    (port, c)
}

/// Reads `s` until EOF, an error or `c.done`, adding every byte to `c`.
fn count_reads(mut s: std::net::TcpStream, c: &Counter) {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while !c.done.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => c.add(n as u64),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A TCP client outside every target: connects to 127.0.0.1:PORT (retrying
/// for up to 10 s while the server starts) and counts the bytes it reads.
fn tcp_client(port: u16) -> Counter {
    let c = Counter::new();
    let c2 = c.clone();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        };
        count_reads(s, &c2);
    });
    c
}

/// RAW_CREATE_PY inside `cg`, parsed.
fn raw_create(cg: &std::path::Path, port: u16) -> Value {
    let out = in_cgroup(cg, &[py(), "-c", RAW_CREATE_PY, &port.to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("raw_create output ({e}): {}", show(&out)))
}

/// Attack: a root workload in a target with `net.connect` revoked (and an
/// allow-list that does not match) sends hand-made UDP through a raw IPv4
/// socket. A raw socket opened before the revocation keeps sending until
/// the revoke, then the receiver outside sees nothing more; a new raw
/// socket is refused at socket(2) with EPERM. Restored, the same old raw
/// socket's datagrams arrive again.
#[test]
fn degrade_net_connect_raw_socket_attack() {
    let Some(agent) = Agent::start() else { return };
    let (port, rx) = udp_receiver();
    let other = tcp_sink();
    let sender = run_bg(&agent, "rawsend", &[py(), "-c", RAW_SENDER_PY, &port.to_string()], 1);
    let cg = agent.target_cgroup("rawsend").path().to_owned();
    rx.assert_moving("raw datagrams from inside before the revoke");
    let r = raw_create(&cg, port);
    assert_eq!((r["inet"].as_i64(), r["send"].as_i64()), (Some(0), None), "before the revoke, raw sockets work: {r}");

    let events = Events::start(&agent);
    let allow = format!("127.0.0.1:{other}");
    let t0 = Instant::now();
    let r = agent.json(&["degrade", "rawsend", "--revoke", "net.connect", "--allow-connect", &allow]);
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    assert!(rx.wait_quiet(Duration::from_millis(1500), Duration::from_secs(6)), "raw datagrams kept arriving after the revoke");
    let c0 = rx.get();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.get(), c0, "the raw socket opened before the revoke still reaches the receiver");
    assert!(alive(sender.pid()), "a refusal never kills the workload");

    // A new raw socket: refused at creation (the receiver sees nothing).
    let r = raw_create(&cg, port);
    eprintln!("raw sockets with net.connect revoked: {r}");
    assert_eq!(r["inet"].as_i64(), Some(EPERM), "raw IPv4 socket with net.connect revoked: {r}");
    if r["inet6"].as_i64() != Some(EAFNOSUPPORT) {
        assert_eq!(r["inet6"].as_i64(), Some(EPERM), "raw IPv6 socket with net.connect revoked: {r}");
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.get(), c0, "nothing reached the receiver");
    let d = denials(&agent, "rawsend", "net.connect");
    assert!(d >= 3, "refused packets and sockets are counted as net.connect denials: {}", row(&agent, "rawsend")["denials"]);
    // Sampled, not flooded: at most 20 events a second per target and
    // capability, each naming the destination of the dropped packet.
    events.settle(Duration::from_millis(500));
    let secs = t0.elapsed().as_secs() + 1;
    let sampled = events.of("rawsend", "denial");
    eprintln!("net.connect denials after {secs} s of raw sending: {d} counted, {} sampled as events", sampled.len());
    let dest = format!("127.0.0.1:{port}");
    assert!(
        sampled.iter().any(|e| e["capability"] == "net.connect" && e["what"] == "egress packet" && e["destination"] == dest.as_str()),
        "a dropped packet is sampled with its destination: {:?}",
        sampled.first()
    );
    assert!(sampled.len() as u64 <= 20 * (secs + 1), "{} events in {secs} s: the sampling is rate-limited", sampled.len());
    assert!(d > sampled.len() as u64, "every dropped packet is counted, only some sampled");
    drop(events);

    // Given back: the same old socket's datagrams arrive again.
    agent.json(&["restore", "rawsend", "--to", "normal"]);
    rx.assert_moving("restored: the old raw socket sends again");
    drop(sender);
}

/// Attack: TCP connections opened BEFORE `net.connect` is revoked, one to
/// a destination the allow-list lets through and one it does not. After
/// the revoke (and a settle), the receiver of the refused destination gets
/// no more bytes while the allowed one keeps receiving; the sender lives.
/// Restored, the same refused connection carries data again (it was held,
/// not reset; TCP retransmits with backoff, hence the long wait).
#[test]
fn degrade_net_connect_cuts_connections_made_before_revoke() {
    let Some(agent) = Agent::start() else { return };
    let (p_ok, ok) = tcp_receiver();
    let (p_cut, cut) = tcp_receiver();
    let sender = run_bg(&agent, "early", &[py(), "-c", TCP_SENDERS_PY, &p_ok.to_string(), &p_cut.to_string()], 1);
    ok.assert_moving("allowed destination, before the revoke");
    cut.assert_moving("refused destination, before the revoke");

    let allow = format!("127.0.0.1:{p_ok}");
    let t0 = Instant::now();
    let r = agent.json(&["degrade", "early", "--revoke", "net.connect", "--allow-connect", &allow]);
    assert_eq!(strs(&r["allow_connect"]), [allow.as_str()], "{r}");
    assert!(cut.wait_quiet(Duration::from_millis(1500), Duration::from_secs(8)), "the connection to a refused destination kept carrying data after the revoke");
    eprintln!("refused destination quiet {} ms after the revoke was issued", t0.elapsed().as_millis());
    let (c0, o0) = (cut.get(), ok.get());
    thread::sleep(Duration::from_secs(3));
    let (c1, o1) = (cut.get(), ok.get());
    eprintln!("over 3 s after settling: refused destination +{} bytes, allowed destination +{} bytes", c1 - c0, o1 - o0);
    assert_eq!(c1, c0, "a connection made before the revoke still carries data to a destination outside the allow-list");
    assert!(o1 - o0 > 1 << 16, "the allowed connection must keep flowing (+{} bytes in 3 s)", o1 - o0);
    assert!(alive(sender.pid()), "a refusal never kills the workload");
    assert!(denials(&agent, "early", "net.connect") > 0, "dropped packets are counted: {}", row(&agent, "early")["denials"]);
    // A new connect to the allowed destination still works; to another one, EPERM.
    let cg = agent.target_cgroup("early").path().to_owned();
    assert_eq!(connect_errno(&cg, "127.0.0.1", p_cut), EPERM, "a new connect to the refused destination");

    let t1 = Instant::now();
    agent.json(&["restore", "early", "--to", "normal"]);
    let resumed = wait_until(Duration::from_secs(60), || cut.get() > c1);
    eprintln!("after restore, the held connection moved data again after {} ms", t1.elapsed().as_millis());
    assert!(resumed.is_some(), "the held connection never resumed after restore");
    drop(sender);
}

/// The per-packet check holds outbound traffic only: connections the
/// target ACCEPTED are not connects. With `net.connect` revoked (no
/// allow-list) a server inside keeps sending to a client outside that
/// connected before the revoke, and accepts and serves a new one after it
/// (its SYN-ACK and data pass); its own outbound connect is refused.
#[test]
fn degrade_net_connect_keeps_serving_accepted_connections() {
    let Some(agent) = Agent::start() else { return };
    let port = free_tcp_port();
    let server = run_bg(&agent, "server", &[py(), "-c", SERVER_PY, &port.to_string()], 1);
    let early = tcp_client(port);
    early.assert_moving("client connected before the revoke");
    let r = agent.json(&["degrade", "server", "--revoke", "net.connect"]);
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    thread::sleep(Duration::from_secs(1));
    let e0 = early.get();
    thread::sleep(Duration::from_secs(2));
    let e1 = early.get();
    eprintln!("accepted before the revoke: +{} bytes in 2 s after it", e1 - e0);
    assert!(e1 - e0 > 1 << 16, "a connection the target accepted must keep flowing (+{} bytes in 2 s)", e1 - e0);
    let late = tcp_client(port);
    late.assert_moving("client connected after the revoke");
    let cg = agent.target_cgroup("server").path().to_owned();
    assert_eq!(connect_errno(&cg, "127.0.0.1", tcp_sink()), EPERM, "the server's own outbound connect is refused");
    assert_eq!(denials(&agent, "server", "net.connect"), 1, "served packets are not denials: {}", row(&agent, "server")["denials"]);
    drop(server);
}

/// `net.raw` where the cgroup sock_create hook is (also without BPF LSM):
/// `capabilities` and `probe` report it enforceable, and without BPF LSM
/// say packet sockets stay OPEN. Revoked, raw IPv4/IPv6 sockets are
/// refused with EPERM; a packet socket is refused where BPF LSM runs and,
/// as reported, created where it does not. Connects and UDP are untouched.
#[test]
fn degrade_net_raw_refuses_raw_ip_sockets() {
    let Some(agent) = Agent::start() else { return };
    let lsm = lsm_attached(&agent);
    let caps = agent.json(&["capabilities"]);
    let c = caps["capabilities"].as_array().unwrap().iter().find(|c| c["name"] == "net.raw").cloned().unwrap_or_else(|| panic!("{caps}"));
    assert_eq!(c["enforceable"], true, "net.raw is enforceable where cgroup sock_create is: {c}");
    let conn = caps["capabilities"].as_array().unwrap().iter().find(|c| c["name"] == "net.connect").cloned().unwrap();
    for c in [&c, &conn] {
        let detail = c["detail"].as_str().unwrap_or("");
        if lsm {
            assert!(c["open"].is_null() && !detail.contains("OPEN"), "with BPF LSM nothing is open: {c}");
        } else {
            assert!(detail.contains("OPEN without BPF LSM") && detail.contains("AF_PACKET"), "without BPF LSM packet sockets are reported open: {c}");
            assert!(c["open"].as_str().is_some_and(|o| o.contains("AF_PACKET")), "{c}");
        }
    }
    assert_eq!(agent.json(&["probe"])["capabilities"], caps["capabilities"], "probe and capabilities agree");
    let human = String::from_utf8_lossy(&agent.kp(&["capabilities"]).stdout).into_owned();
    let line = human.lines().find(|l| l.starts_with("net.raw ")).unwrap_or_else(|| panic!("{human}"));
    assert!(line.contains(if lsm { "yes" } else { "yes, partly" }), "{line}");

    let (port, rx) = udp_receiver();
    let sink = tcp_sink();
    let _t = run_bg(&agent, "noraw", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("noraw").path().to_owned();
    let r = raw_create(&cg, port);
    assert_eq!((r["inet"].as_i64(), r["packet"].as_i64()), (Some(0), Some(0)), "before the revoke: {r}");
    assert!(wait_until(Duration::from_secs(5), || rx.get() >= 1).is_some(), "the raw datagram sent before the revoke arrived");

    let events = Events::start(&agent);
    agent.json(&["degrade", "noraw", "--revoke", "net.raw"]);
    let before = rx.get();
    let r = raw_create(&cg, port);
    eprintln!("net.raw revoked (BPF LSM: {lsm}): {r}");
    // The denial says which capability refused what.
    let want = if lsm { "raw IP socket" } else { "raw socket AF_INET" };
    events.wait(Duration::from_secs(10), "a sampled net.raw denial of the raw socket", |evs| {
        evs.iter().any(|e| e["target"] == "noraw" && e["type"] == "denial" && e["capability"] == "net.raw" && e["what"] == want)
    });
    drop(events);
    assert_eq!(r["inet"].as_i64(), Some(EPERM), "raw IPv4 socket: {r}");
    let mut refused = 1;
    if r["inet6"].as_i64() != Some(EAFNOSUPPORT) {
        assert_eq!(r["inet6"].as_i64(), Some(EPERM), "raw IPv6 socket: {r}");
        refused += 1;
    }
    if lsm {
        assert_eq!(r["packet"].as_i64(), Some(EPERM), "with BPF LSM packet sockets are refused: {r}");
        refused += 1;
    } else {
        assert_eq!(r["packet"].as_i64(), Some(0), "without BPF LSM a packet socket is created, as reported (OPEN): {r}");
    }
    assert_eq!(denials(&agent, "noraw", "net.raw"), refused, "one denial per refused socket: {}", row(&agent, "noraw")["denials"]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.get(), before, "no raw datagram arrived");
    assert_eq!(connect_errno(&cg, "127.0.0.1", sink), 0, "net.raw does not touch connects");
    assert_eq!(udp_errno(&cg, "127.0.0.1", port), 0, "nor UDP sockets");

    agent.json(&["restore", "noraw", "--grant", "net.raw"]);
    let r = raw_create(&cg, port);
    assert_eq!(r["inet"].as_i64(), Some(0), "granted back: {r}");
}

/// With BPF LSM (in the VM): packet sockets, which no cgroup hook sees, are
/// refused under `net.connect` (and `net.raw`), with raw IP sockets;
/// each refusal is one denial of the capability that refused it.
#[test]
fn lsm_degrade_net_connect_refuses_packet_sockets() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let (port, rx) = udp_receiver();
    let _t = run_bg(&agent, "nopacket", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("nopacket").path().to_owned();
    assert_eq!(raw_create(&cg, port)["packet"].as_i64(), Some(0), "before the revoke");
    for cap in ["net.connect", "net.raw"] {
        agent.json(&["degrade", "nopacket", "--revoke", cap]);
        let before = rx.get();
        let r = raw_create(&cg, port);
        eprintln!("{cap} revoked: {r}");
        assert_eq!(r["packet"].as_i64(), Some(EPERM), "{cap}: packet socket: {r}");
        assert_eq!(r["inet"].as_i64(), Some(EPERM), "{cap}: raw IPv4 socket: {r}");
        let inet6 = r["inet6"].as_i64() == Some(EPERM);
        assert!(inet6 || r["inet6"].as_i64() == Some(EAFNOSUPPORT), "{cap}: raw IPv6 socket: {r}");
        assert_eq!(denials(&agent, "nopacket", cap), 2 + u64::from(inet6), "{cap}: one denial per refused socket: {}", row(&agent, "nopacket")["denials"]);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(rx.get(), before, "{cap}: nothing reached the receiver");
        agent.json(&["restore", "nopacket", "--to", "normal"]);
        assert_eq!(raw_create(&cg, port)["packet"].as_i64(), Some(0), "{cap} given back");
    }
}
