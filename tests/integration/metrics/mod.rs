//! Tests: `killpath agent --metrics ADDR` (Prometheus metrics), judged by
//! the real Prometheus tools: `promtool check metrics` on a scrape, a real
//! `prometheus` server that scrapes the agent and answers queries over its
//! HTTP API, and `promtool check rules` / `promtool test rules` on
//! `deploy/prometheus/killpath-rules.yml`. The values are checked against
//! what the test itself sees from outside: connects refused as the
//! workload's own syscalls report them, connections a listener outside
//! accepted, processes alive.
mod lsm;
mod prometheus;
mod rules;
mod scrape;

use std::{
    io::{ErrorKind, Read as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{
    harness::{skip, Agent},
    support::{
        cgroup::in_cgroup_within,
        net::free_tcp_port,
        process::{py, show},
    },
};

/// `promtool`, or None (the test skips; a failure under KILLPATH_TEST_STRICT).
fn promtool() -> Option<PathBuf> {
    which("promtool").or_else(|| {
        skip("promtool is not installed (`cargo xtask setup` installs Debian's prometheus package)");
        None
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// An agent serving metrics on a free port of 127.0.0.1, and that address.
fn agent_with_metrics() -> Option<(Agent, String)> {
    let addr = format!("127.0.0.1:{}", free_tcp_port());
    let agent = Agent::start_with(&["--metrics", &addr])?;
    Some((agent, addr))
}

/// GET `url` with curl (bounded): (HTTP status, body).
fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url]).stdin(Stdio::null()).output().expect("run curl");
    assert!(out.status.success(), "curl {url}: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    (code.trim().parse().expect("HTTP status"), body.to_owned())
}

/// One scrape of the agent's `/metrics`.
fn scrape(addr: &str) -> String {
    let (code, body) = http_get(&format!("http://{addr}/metrics"));
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// The value of the one sample of `name` whose labels include `labels`
/// (None: no such sample; two such samples fail the test).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter(|(series, _)| labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\""))))
        .map(|(_, v)| v.parse().expect("sample value"))
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} matches {} samples:\n{text}", found.len());
    found.first().copied()
}

/// Runs `promtool ARGS` with `stdin` piped in.
fn promtool_run(promtool: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(promtool).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run promtool");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// Python: `N` TCP connects to 127.0.0.1:PORT; prints how many failed with EPERM.
const CONNECT_PY: &str = r#"
import errno, socket, sys
port, n, refused = int(sys.argv[1]), int(sys.argv[2]), 0
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as e:
        if e.errno == errno.EPERM:
            refused += 1
    s.close()
print(refused)
"#;

/// A listener outside every target: the connects that reached it.
struct Sink(TcpListener);

impl Sink {
    fn new() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        l.set_nonblocking(true).expect("nonblocking");
        Self(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("sink address").port()
    }

    /// Connections accepted so far (each is read to its end and dropped).
    fn accepted(&self) -> usize {
        let mut n = 0;
        loop {
            match self.0.accept() {
                Ok((mut s, _)) => {
                    n += 1;
                    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                    let _ = s.read(&mut [0u8; 16]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

/// `n` connects from inside `cg` to `sink`: how many the workload's own
/// syscalls saw refused with EPERM.
fn refused_connects(cg: &Path, sink: &Sink, n: u32) -> u64 {
    let out = in_cgroup_within(60, cg, &[py(), "-c", CONNECT_PY, &sink.port().to_string(), &n.to_string()]);
    assert!(out.status.success(), "connect loop: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("refused count")
}
