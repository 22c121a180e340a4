//! Real clients inside a target (curl, nc, dig, ping) against servers the
//! test started outside it, and a client outside against a server inside:
//! each check asserts on the client's exit code AND on what the server saw.
use std::{net::UdpSocket, path::Path, time::Duration};

use super::{in_cgroup, marker, outside};
use crate::{
    harness::{wait_until, Agent},
    support::{
        net::{free_udp_port, Server, HELLO},
        process::{py, show, text},
    },
};

/// A UDP DNS responder outside any target: answers every query with an
/// empty NOERROR response (id echoed, QR set) and logs `query <id>`.
const DNS_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("port", s.getsockname()[1], flush=True)
while True:
    d, a = s.recvfrom(4096)
    if len(d) < 12:
        continue
    i = 12
    while i < len(d) and d[i] != 0:
        i += 1 + d[i]
    q = d[12:i + 5]
    print("query", d[:2].hex(), flush=True)
    s.sendto(d[:2] + bytes([0x80 | (d[2] & 0x79), 0x80]) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + q, a)
"#;

pub(super) fn dns_server(agent: &Agent) -> (Server, u16) {
    let mut s = Server::start(agent.dir.path(), "dns", &[py(), "-u", "-c", DNS_PY]);
    let port = s.port();
    (s, port)
}

/// `nc -u -l -k` on 127.0.0.1 (-k: not connected to the first peer, so it
/// keeps receiving from every client), ready when it printed a datagram
/// the test sent it from outside.
pub(super) fn udp_listener(agent: &Agent) -> (Server, u16) {
    let port = free_udp_port();
    let s = Server::start(agent.dir.path(), "nc-udp", &["nc", "-u", "-l", "-k", "127.0.0.1", &port.to_string()]);
    let probe = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let ready = wait_until(Duration::from_secs(10), || {
        let _ = probe.send_to(b"ready\n", ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(50));
        s.count("ready") > 0
    });
    assert!(ready.is_some(), "nc -u -l never received from outside\n{}", s.describe());
    (s, port)
}

/// curl from inside `cg` to `url` (served by `srv`): works and the server
/// logged the request, or fails and the server saw nothing.
pub(super) fn check_http(srv: &Server, cg: &Path, url: &str, open: bool, ctx: &str) {
    let before = srv.count("GET /hello.txt");
    let out = in_cgroup(cg, &["curl", "-sS", "--max-time", "3", url]);
    if open {
        assert!(out.status.success() && text(&out.stdout) == HELLO, "{ctx}: curl {url} from inside must work: {}\n{}", show(&out), srv.describe());
        assert!(
            wait_until(Duration::from_secs(3), || srv.count("GET /hello.txt") > before).is_some(),
            "{ctx}: the server never logged the request\n{}",
            srv.describe()
        );
    } else {
        assert!(!out.status.success(), "{ctx}: curl {url} went through from an isolated target: {}", show(&out));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(srv.count("GET /hello.txt"), before, "{ctx}: the server saw a request from the isolated target\n{}", srv.describe());
    }
    eprintln!("{ctx}: curl {url}: {}", out.status);
}

/// nc -u from inside `cg`: the datagram reaches the listener, or the send
/// fails and the listener got nothing.
pub(super) fn check_udp(nc: &Server, port: u16, cg: &Path, open: bool, ctx: &str) {
    let m = marker("udp");
    let out = in_cgroup(cg, &["sh", "-c", r#"printf '%s\n' "$1" | nc -u -w1 127.0.0.1 "$2""#, "sh", &m, &port.to_string()]);
    if open {
        assert!(out.status.success(), "{ctx}: nc -u from inside must work: {}", show(&out));
        assert!(wait_until(Duration::from_secs(3), || nc.count(&m) > 0).is_some(), "{ctx}: the listener never got {m}\n{}", nc.describe());
    } else {
        assert!(!out.status.success(), "{ctx}: nc -u from an isolated target must fail: {}", show(&out));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(nc.count(&m), 0, "{ctx}: the listener got a datagram from the isolated target\n{}", nc.describe());
    }
    eprintln!("{ctx}: nc -u: {}", out.status);
}

/// dig from inside `cg` against the local responder.
pub(super) fn check_dns(dns: &Server, port: u16, cg: &Path, open: bool, ctx: &str) {
    let before = dns.count("query");
    let out = in_cgroup(cg, &["dig", "@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=1", "killpath.test", "A"]);
    if open {
        assert!(out.status.success() && text(&out.stdout).contains("status: NOERROR"), "{ctx}: dig from inside must work: {}\n{}", show(&out), dns.describe());
        assert!(wait_until(Duration::from_secs(3), || dns.count("query") > before).is_some(), "{ctx}: the responder saw no query\n{}", dns.describe());
    } else {
        assert!(!out.status.success(), "{ctx}: dig from an isolated target got an answer: {}", show(&out));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(dns.count("query"), before, "{ctx}: the responder saw a query from the isolated target\n{}", dns.describe());
    }
    eprintln!("{ctx}: dig: {}", out.status);
}

/// ping 127.0.0.1 from inside `cg`.
pub(super) fn check_ping(cg: &Path, open: bool, ctx: &str) {
    let out = in_cgroup(cg, &["ping", "-c1", "-W1", "127.0.0.1"]);
    if open {
        assert!(out.status.success() && text(&out.stdout).contains(" 1 received"), "{ctx}: ping from inside must work: {}", show(&out));
    } else {
        assert!(!out.status.success(), "{ctx}: ping from an isolated target got a reply: {}", show(&out));
        assert!(!text(&out.stdout).contains(" 1 received"), "{}", show(&out));
    }
    eprintln!("{ctx}: ping: {}", out.status);
}

/// curl from OUTSIDE (the test's cgroup) to a server inside the target.
pub(super) fn check_inbound(port: u16, open: bool, ctx: &str) {
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let out = outside(&["curl", "-sS", "--max-time", "2", &url]);
    if open {
        assert!(out.status.success() && text(&out.stdout) == HELLO, "{ctx}: curl from outside to the target's server must work: {}", show(&out));
    } else {
        assert!(!out.status.success(), "{ctx}: a connection from outside reached the isolated target: {}", show(&out));
    }
    eprintln!("{ctx}: inbound curl: {}", out.status);
}
