//! Clients inside a target (or outside every target) whose outcome the
//! degrade tests assert: python connect loops that report each errno, one
//! UDP send, curl against a server outside; and a TCP sink to connect to.
use std::{net::TcpListener, path::Path, process::Output, thread, time::Duration};

use serde_json::Value;

use super::{in_cgroup, outside};
use crate::{
    harness::wait_until,
    support::{
        net::{Server, HELLO},
        process::{py, show, text},
    },
};

/// Python: `HOST PORT N` connect attempts (TCP, one socket reused after a
/// refusal), prints `{"pid", "errnos": {errno: count}, "elapsed"}`.
const CONNECT_PY: &str = r#"
import collections, json, os, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
c = collections.Counter()
t0 = time.monotonic()
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)
for i in range(n):
    try:
        s.connect((host, port))
        c[0] += 1
    except OSError as e:
        c[e.errno if e.errno is not None else -1] += 1
        if e.errno == 1:
            continue
    s.close()
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
s.close()
print(json.dumps({"pid": os.getpid(), "errnos": {str(k): v for k, v in c.items()}, "elapsed": time.monotonic() - t0}))
"#;

/// Python: one UDP datagram to `HOST PORT`; prints the errno (0 = sent).
const UDP_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"killpath", (sys.argv[1], int(sys.argv[2])))
    print(0)
except OSError as e:
    print(e.errno)
"#;

/// Runs CONNECT_PY with `run` (inside a cgroup, or outside) and parses it.
pub(super) fn connect_loop(run: impl FnOnce(&[&str]) -> Output, host: &str, port: u16, n: u32) -> Value {
    let (p, n) = (port.to_string(), n.to_string());
    let out = run(&[py(), "-c", CONNECT_PY, host, &p, &n]);
    assert!(out.status.success(), "connect loop to {host}:{port} did not finish: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("connect loop output ({e}): {}", show(&out)))
}

/// The errno of one TCP connect from a fresh process in `cg` (0 = connected).
pub(super) fn connect_errno(cg: &Path, host: &str, port: u16) -> i64 {
    let r = connect_loop(|c| in_cgroup(cg, c), host, port, 1);
    let e = r["errnos"].as_object().unwrap();
    assert_eq!(e.len(), 1, "{r}");
    e.keys().next().unwrap().parse().unwrap()
}

/// The errno of one TCP connect from a process outside every target.
pub(super) fn connect_errno_outside(host: &str, port: u16) -> i64 {
    let r = connect_loop(outside, host, port, 1);
    r["errnos"].as_object().unwrap().keys().next().unwrap().parse().unwrap()
}

pub(super) fn udp_errno(cg: &Path, host: &str, port: u16) -> i64 {
    let out = in_cgroup(cg, &[py(), "-c", UDP_PY, host, &port.to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    text(&out.stdout).trim().parse().unwrap_or_else(|e| panic!("udp errno ({e}): {}", show(&out)))
}

/// A TCP listener outside any target that accepts (and drops) every
/// connection, so any number of connects can succeed.
pub(super) fn tcp_sink() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

/// curl from inside `cg`: fetches hello.txt and the server logged it, or
/// fails and the server saw nothing.
pub(super) fn check_curl(srv: &Server, cg: &Path, host: &str, port: u16, works: bool, ctx: &str) {
    let url = format!("http://{host}:{port}/hello.txt");
    let before = srv.count("GET /hello.txt");
    let out = in_cgroup(cg, &["curl", "-sS", "--noproxy", "*", "--max-time", "5", &url]);
    if works {
        assert!(out.status.success() && text(&out.stdout) == HELLO, "{ctx}: curl {url} from inside must work: {}\n{}", show(&out), srv.describe());
        assert!(
            wait_until(Duration::from_secs(5), || srv.count("GET /hello.txt") > before).is_some(),
            "{ctx}: the server never logged the request\n{}",
            srv.describe()
        );
    } else {
        // curl exit 7: could not connect.
        assert_eq!(out.status.code(), Some(7), "{ctx}: curl {url} must be refused at connect: {}", show(&out));
        thread::sleep(Duration::from_millis(200));
        assert_eq!(srv.count("GET /hello.txt"), before, "{ctx}: the server saw a request it should not have\n{}", srv.describe());
    }
    eprintln!("{ctx}: curl {url}: {}", out.status);
}
