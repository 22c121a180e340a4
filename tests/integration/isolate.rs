//! Tests: isolate (level 3). `killpath isolate NAME` cuts a target off from
//! everything outside it, enforced by the kernel; `restore --to LEVEL` lifts
//! it; `verify NAME` / `isolate --verify` probe every channel from inside.
//!
//! Real clients run inside the target (curl, nc, dig, ping, python3) against
//! real servers the test starts outside it; assertions are on the clients'
//! exit codes AND on what the servers observed.
//!
//! On a kernel without BPF LSM (the host) the unix and packet channels stay
//! OPEN by design, and every report must say so. Tests whose names start with
//! `lsm_` need BPF LSM and run in the VM (`cargo xtask test --vm-only`).
use std::{
    fs::File,
    io::Read as _,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use killpath_common::maps;
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::{
    harness::{alive, skip, wait_until, Agent},
    stop::{make_cgroup, run_bg, show, spawn_outside, stop, target_row, text},
};

// ---------------------------------------------------------------- helpers

/// Every channel `verify` reports, in its order.
const VERIFY_CHANNELS: &[&str] = &["tcp4", "tcp6", "udp", "dns", "icmp", "unix", "packet", "established-tcp"];
/// Every channel of the isolation catalog.
const CATALOG: &[&str] = &["tcp4", "tcp6", "udp", "dns", "icmp", "established-tcp", "loopback", "unix", "packet"];
/// What the HTTP servers serve.
const HELLO: &str = "killpath-hello\n";

/// The distribution's python3 (a pyenv shim may not work inside the VM).
fn py() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn bpftool() -> &'static str {
    if Path::new("/usr/sbin/bpftool").exists() {
        "/usr/sbin/bpftool"
    } else {
        "bpftool"
    }
}

/// A server (or listener) the test started OUTSIDE any target, in its own
/// process group, with stdout and stderr in files. Dropping it SIGKILLs the
/// group and reaps the leader. Shared with the degrade tests.
pub(crate) struct Server {
    child: Child,
    name: String,
    out: PathBuf,
    err: PathBuf,
}

impl Server {
    pub(crate) fn start(dir: &Path, name: &str, cmd: &[&str]) -> Server {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("server stdout file"))
            .stderr(File::create(&err).expect("server stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} {cmd:?}: {e}"));
        Server { child, name: name.to_owned(), out, err }
    }

    /// Whether the server process has exited (reaped if so).
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Lines of stdout+stderr containing `needle`.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.stdout().lines().chain(self.stderr().lines()).filter(|l| l.contains(needle)).count()
    }

    pub(crate) fn describe(&self) -> String {
        format!("server {} stdout:\n{}\nstderr:\n{}", self.name, self.stdout(), self.stderr())
    }

    /// Waits until stdout+stderr contain `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let ok = wait_until(timeout, || self.count(needle) > 0).is_some();
        if !ok {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}) before printing {needle:?}\n{}", self.name, self.describe());
            }
        }
        ok
    }

    /// The port from a "... port N ..." line (http.server and our scripts).
    pub(crate) fn port(&mut self) -> u16 {
        assert!(self.wait_for("port ", Duration::from_secs(30)), "{} never printed its port\n{}", self.name, self.describe());
        let s = self.stdout();
        let rest = &s[s.find("port ").expect("port line") + 5..];
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or_else(|e| panic!("bad port in {s:?}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion inside cgroup `cg`: a fresh `sh` moves itself
/// into the cgroup (writes 0 to cgroup.procs), then execs `cmd`, so no
/// instruction of `cmd` runs outside. Bounded by `timeout -s KILL 15`.
fn in_cgroup(cg: &Path, cmd: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "15", "sh", "-c", r#"echo 0 > "$0" && exec "$@""#])
        .arg(cg.join("cgroup.procs"))
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", cg.display()))
}

/// Runs `cmd` to completion inside target `name`'s cgroup.
fn in_target(agent: &Agent, name: &str, cmd: &[&str]) -> Output {
    in_cgroup(agent.target_cgroup(name).path(), cmd)
}

/// A client run from the test's own cgroup (outside every target).
fn outside(cmd: &[&str]) -> Output {
    Command::new("timeout").args(["-s", "KILL", "15"]).args(cmd).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free tcp port").port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free udp port").port()
}

fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A unique marker for one client call.
fn marker(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("kp-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Whether the agent's BPF LSM hooks are attached (status.isolation.lsm).
fn lsm_attached(agent: &Agent) -> bool {
    agent.json(&["status"])["isolation"]["lsm"] == "attached"
}

/// The channels this kernel cannot cut: unix and packet without BPF LSM.
fn expected_open(agent: &Agent) -> Vec<&'static str> {
    if lsm_attached(agent) {
        vec![]
    } else {
        vec!["unix", "packet"]
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")).to_owned()).collect()
}

/// `killpath --json ARGS` without asserting success: (exit success, JSON).
fn json_any(agent: &Agent, args: &[&str]) -> (Output, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = agent.kp(&a);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("killpath {args:?}: bad JSON ({e}): {}\nagent log:\n{}", show(&out), agent.log_text()));
    (out, v)
}

/// The `verify` row of `channel`.
fn row<'a>(verify: &'a Value, channel: &str) -> &'a Value {
    verify.as_array().unwrap_or_else(|| panic!("no verify rows: {verify}")).iter().find(|r| r["channel"] == channel).unwrap_or_else(|| panic!("no {channel} row in {verify}"))
}

/// Asserts that `channels` (the catalog in a response) claims a cut exactly
/// for the enforced channels and lists every other one in `open_channels`.
fn assert_catalog(r: &Value, open: &[&str]) {
    let channels = r["channels"].as_array().unwrap_or_else(|| panic!("no channels list: {r}"));
    let names: Vec<&str> = channels.iter().map(|c| c["channel"].as_str().unwrap_or("")).collect();
    assert_eq!(names, CATALOG, "the catalog names every channel isolation covers: {r}");
    for c in channels {
        let name = c["channel"].as_str().unwrap_or("");
        let enforced = !open.contains(&name);
        assert_eq!(c["enforced"], enforced, "{name}: enforced must be {enforced} on this kernel: {c}");
        let by = c["by"].as_str().unwrap_or("");
        if enforced {
            assert!(!by.contains("needs"), "{name} is enforced, by a real mechanism: {c}");
        } else {
            assert!(by.contains("BPF LSM"), "{name}: says BPF LSM is what it lacks: {c}");
        }
    }
    let mut listed = strs(&r["open_channels"]);
    listed.sort();
    let mut want: Vec<String> = open.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(listed, want, "open_channels names exactly what is not enforced: {r}");
}

/// Asserts a verify table: every channel in `open` is OPEN (with detail
/// `open_detail`), every other one is cut; tcp6 may only be skipped when
/// the host has no ::1; established-tcp as given.
fn assert_verify(verify: &Value, open: &[&str], established: &str, open_detail: Option<&str>) {
    let rows = verify.as_array().unwrap_or_else(|| panic!("no verify rows: {verify}"));
    let names: Vec<&str> = rows.iter().map(|r| r["channel"].as_str().unwrap_or("")).collect();
    assert_eq!(names, VERIFY_CHANNELS, "{verify}");
    for ch in VERIFY_CHANNELS {
        let r = row(verify, ch);
        let detail = r["detail"].as_str().unwrap_or("");
        assert!(!detail.is_empty(), "every verdict says what was seen: {r}");
        if *ch == "established-tcp" {
            assert_eq!(r["result"], established, "{r}");
        } else if *ch == "tcp6" && !ipv6_loopback() {
            assert_eq!(r["result"], "skipped", "{r}");
        } else if open.contains(ch) {
            assert_eq!(r["result"], "OPEN", "{ch} must be reported OPEN: {r}\nall rows: {verify}");
            if let Some(d) = open_detail {
                assert!(detail.contains(d), "{ch}: detail should say {d:?}: {r}");
            }
        } else {
            assert_eq!(r["result"], "cut", "{ch} must be cut: {r}\nall rows: {verify}");
        }
    }
}

// ------------------------------------------------ servers outside, clients inside

/// A directory with hello.txt for the HTTP servers.
fn www(agent: &Agent) -> PathBuf {
    let d = agent.dir.path().join("www");
    std::fs::create_dir_all(&d).expect("www dir");
    std::fs::write(d.join("hello.txt"), HELLO).expect("hello.txt");
    d
}

/// `python3 -m http.server` on `bind`, outside any target.
fn http_server(agent: &Agent, name: &str, bind: &str) -> (Server, u16) {
    let dir = www(agent);
    let mut s = Server::start(agent.dir.path(), name, &[py(), "-u", "-m", "http.server", "0", "--bind", bind, "--directory", dir.to_str().unwrap()]);
    let port = s.port();
    (s, port)
}

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

fn dns_server(agent: &Agent) -> (Server, u16) {
    let mut s = Server::start(agent.dir.path(), "dns", &[py(), "-u", "-c", DNS_PY]);
    let port = s.port();
    (s, port)
}

/// `nc -u -l -k` on 127.0.0.1 (-k: not connected to the first peer, so it
/// keeps receiving from every client), ready when it printed a datagram
/// the test sent it from outside.
fn udp_listener(agent: &Agent) -> (Server, u16) {
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
fn check_http(srv: &Server, cg: &Path, url: &str, open: bool, ctx: &str) {
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
fn check_udp(nc: &Server, port: u16, cg: &Path, open: bool, ctx: &str) {
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
fn check_dns(dns: &Server, port: u16, cg: &Path, open: bool, ctx: &str) {
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
fn check_ping(cg: &Path, open: bool, ctx: &str) {
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
fn check_inbound(port: u16, open: bool, ctx: &str) {
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let out = outside(&["curl", "-sS", "--max-time", "2", &url]);
    if open {
        assert!(out.status.success() && text(&out.stdout) == HELLO, "{ctx}: curl from outside to the target's server must work: {}", show(&out));
    } else {
        assert!(!out.status.success(), "{ctx}: a connection from outside reached the isolated target: {}", show(&out));
    }
    eprintln!("{ctx}: inbound curl: {}", out.status);
}

/// ids of our agent's level-3 programs in the kernel: programs named
/// kp_isolate* that use this agent's pinned targets map (other agents on the
/// host have their own maps).
fn our_isolate_progs(agent: &Agent) -> Vec<(u64, String)> {
    let bt = |args: &[&str]| -> Value {
        let out = Command::new(bpftool()).arg("-j").args(args).output().unwrap_or_else(|e| panic!("bpftool {args:?}: {e}"));
        assert!(out.status.success(), "bpftool {args:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?}: bad JSON {e}"))
    };
    // Pins live in one generation directory per build (`<pin-dir>/gen-*`).
    let gens: Vec<PathBuf> = std::fs::read_dir(&agent.pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path().join("maps").join(maps::TARGETS))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(gens.len(), 1, "one pin generation in {}: {gens:?}", agent.pin_dir.display());
    let pin = &gens[0];
    let map_id = bt(&["map", "show", "pinned", pin.to_str().unwrap()])["id"].as_u64().expect("map id");
    let mut ids: Vec<(u64, String)> = bt(&["prog", "show"])
        .as_array()
        .expect("prog list")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("kp_isolate")))
        .filter(|p| p["map_ids"].as_array().is_some_and(|m| m.iter().any(|x| x.as_u64() == Some(map_id))))
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect();
    ids.sort();
    ids
}

/// (prog id, attach type) of every program attached to `cg`, sorted.
fn cgroup_attachments(cg: &Path) -> Vec<(u64, String)> {
    let out = Command::new(bpftool()).args(["-j", "cgroup", "show"]).arg(cg).output().expect("bpftool cgroup show");
    assert!(out.status.success(), "bpftool cgroup show: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut a: Vec<(u64, String)> =
        v.as_array().into_iter().flatten().map(|p| (p["id"].as_u64().unwrap_or(0), p["attach_type"].as_str().unwrap_or("").to_owned())).collect();
    a.sort();
    a
}

fn level_of(agent: &Agent, name: &str) -> (Value, Value) {
    let r = target_row(agent, name).unwrap_or_else(|| panic!("status no longer lists {name}"));
    (r["level"].clone(), r["kernel_level"].clone())
}

fn assert_level(agent: &Agent, name: &str, level: &str, ctx: &str) {
    let (l, k) = level_of(agent, name);
    assert_eq!((l.as_str(), k.as_str()), (Some(level), Some(level)), "{ctx}: {name} must be {level} in the registry and in the kernel map");
}

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

// ---------------------------------------------------------------- tests (host)

/// Every channel works before isolate, is cut while isolated, and works
/// again after `restore --to normal`, with real clients inside the target
/// and real servers outside it (and a server inside, reached from outside).
#[test]
fn isolate_cuts_every_channel_and_restore_reopens() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let http6 = ipv6_loopback().then(|| http_server(&agent, "http6", "::1"));
    if http6.is_none() {
        eprintln!("no ::1 on this host: IPv6 clients not checked");
    }
    let (nc, udp_port) = udp_listener(&agent);
    let (dns, dns_port) = dns_server(&agent);
    // The target's own workload: an HTTP server, reached from outside.
    let inbound = free_tcp_port();
    let dir = www(&agent);
    let serve = format!("exec {} -m http.server {inbound} --bind 127.0.0.1 --directory {} 2>/dev/null", py(), dir.display());
    let _run = run_bg(&agent, "web", &["sh", "-c", &serve], 1);
    let url = format!("http://127.0.0.1:{inbound}/hello.txt");
    assert!(
        wait_until(Duration::from_secs(10), || outside(&["curl", "-s", "--max-time", "1", &url]).status.success()).is_some(),
        "the target's http.server never answered"
    );
    let cg = agent.target_cgroup("web");
    let cgp = cg.path();
    // Another target, never isolated: isolating "web" must not touch it.
    let _by = run_bg(&agent, "bystander", &["sleep", "1000"], 1);
    let bystander = agent.target_cgroup("bystander");

    let check_all = |open: bool, ctx: &str| {
        check_http(&http4, cgp, &format!("http://127.0.0.1:{p4}/hello.txt"), open, &format!("{ctx} tcp4"));
        if let Some((h6, p6)) = &http6 {
            check_http(h6, cgp, &format!("http://[::1]:{p6}/hello.txt"), open, &format!("{ctx} tcp6"));
        }
        check_udp(&nc, udp_port, cgp, open, &format!("{ctx} udp"));
        check_dns(&dns, dns_port, cgp, open, &format!("{ctx} dns"));
        check_ping(cgp, open, &format!("{ctx} icmp"));
        check_inbound(inbound, open, &format!("{ctx} inbound tcp4"));
    };

    check_all(true, "before isolate");
    let before = agent.json(&["status"])["isolation"].clone();

    let r = agent.json(&["isolate", "web", "--reason", "integration test"]);
    assert_eq!(r["level"], "isolate", "{r}");
    assert_level(&agent, "web", "isolate", "after isolate");
    check_all(false, "isolated");
    // Only the target: a sibling target and the test itself keep every channel.
    let (by, byp) = (bystander.path(), "bystander while web is isolated");
    check_http(&http4, by, &format!("http://127.0.0.1:{p4}/hello.txt"), true, byp);
    check_udp(&nc, udp_port, by, true, byp);
    check_dns(&dns, dns_port, by, true, byp);
    check_ping(by, true, byp);
    let out = outside(&["curl", "-sS", "--max-time", "3", &format!("http://127.0.0.1:{p4}/hello.txt")]);
    assert!(out.status.success(), "outside every target, curl must work while web is isolated: {}", show(&out));
    // The kernel did it: the programs' counters moved.
    let during = agent.json(&["status"])["isolation"].clone();
    for k in ["connects_refused", "raw_sockets_refused", "packets_dropped"] {
        assert!(during[k].as_u64() > before[k].as_u64(), "{k} must grow while isolated: {before} -> {during}");
    }
    // The workload itself is untouched: isolation is not a stop.
    assert!(alive(_run.pid()), "isolate must not kill the workload");

    let r = agent.json(&["restore", "web", "--to", "normal"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("normal"), Some("isolate")), "{r}");
    assert_level(&agent, "web", "normal", "after restore");
    check_all(true, "after restore");
}

/// `isolate --verify` on a kernel without BPF LSM: every cgroup-hook channel
/// is cut, unix and packet are OPEN (and say BPF LSM is needed), the command
/// exits non-zero, and the catalog, status and probe all name the same open
/// channels; nothing claims a cut that is not enforced.
#[test]
fn isolate_verify_reports_each_channel_and_names_the_open_ones() {
    let Some(agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let _run = run_bg(&agent, "box", &["sleep", "1000"], 1);
    let (out, r) = json_any(&agent, &["isolate", "box", "--verify"]);
    eprintln!("isolate --verify: {r}");
    assert_eq!(out.status.success(), open.is_empty(), "exit status must be non-zero iff some channel is OPEN: {}", show(&out));
    assert_eq!(r["level"], "isolate", "{r}");
    assert_catalog(&r, &open);
    assert_verify(&r["verify"], &open, "cut", Some("BPF LSM"));
    for ch in ["tcp4", "udp", "dns", "icmp"] {
        let d = row(&r["verify"], ch)["detail"].as_str().unwrap_or("").to_owned();
        assert!(d.contains("Operation not permitted"), "{ch} is refused by the kernel with EPERM: {d}");
    }
    // Cross-check catalog and verify: every channel the catalog calls
    // enforced was found cut, every one it calls open was found OPEN.
    for c in r["channels"].as_array().unwrap() {
        let ch = c["channel"].as_str().unwrap();
        if ch == "loopback" || (ch == "tcp6" && !ipv6_loopback()) {
            continue;
        }
        let want = if c["enforced"] == true { "cut" } else { "OPEN" };
        assert_eq!(row(&r["verify"], ch)["result"], want, "catalog and probe disagree on {ch}: {c}");
    }
    // status (JSON and human) names the same open channels.
    let t = agent.json(&["status", "box"]);
    let trow = &t["targets"][0];
    assert_eq!(trow["level"], "isolate", "{t}");
    assert_eq!(trow["kernel_level"], "isolate", "{t}");
    assert_eq!(trow["isolation_hooks_attached"], true, "{t}");
    assert_eq!(strs(&trow["open_channels"]), open, "status names the open channels: {t}");
    let human = text(&agent.kp(&["status"]).stdout);
    if open.is_empty() {
        assert!(!human.contains("OPEN"), "{human}");
    } else {
        assert!(human.contains("OPEN on this kernel: unix, packet"), "status says what stays open: {human}");
    }
    // probe: the isolate level names them too.
    let p = agent.json(&["probe"]);
    let lvl = p["levels"].as_array().expect("levels").iter().find(|l| l["level"] == "isolate").unwrap_or_else(|| panic!("no isolate level in probe: {p}"));
    assert_eq!(lvl["enforceable"], true, "{lvl}");
    let detail = lvl["detail"].as_str().unwrap_or("");
    if open.is_empty() {
        assert!(!detail.contains("OPEN"), "{lvl}");
    } else {
        let (_, tail) = detail.split_once("OPEN").unwrap_or_else(|| panic!("probe must say what stays OPEN: {lvl}"));
        assert!(tail.contains("unix") && tail.contains("packet") && tail.contains("BPF LSM"), "{lvl}");
        for ch in ["tcp4", "tcp6", "udp", "dns", "icmp"] {
            assert!(!tail.contains(ch), "probe lists {ch} as open: {lvl}");
        }
    }
    // Only the target: the verify probes left nothing behind in it.
    let cg = agent.target_cgroup("box");
    assert!(wait_until(Duration::from_secs(3), || cg.procs_recursive() == vec![_run.pid()]).is_some(), "probes left in the target: {:?}", cg.procs_recursive());
}

/// `isolate --verify` on a target that is already isolated (e.g. isolated
/// first, verification wanted after): still a verify table, not an error.
/// The established-connection probe cannot be opened any more, so that row
/// is "skipped" (or "cut"), never a failure of the whole command.
#[test]
fn isolate_verify_on_isolated_target_still_verifies() {
    let Some(agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let _run = run_bg(&agent, "again", &["sleep", "1000"], 1);
    agent.json(&["isolate", "again"]);
    let t0 = Instant::now();
    let out = agent.kp(&["--json", "isolate", "again", "--verify"]);
    eprintln!("second isolate --verify took {} ms: {}", t0.elapsed().as_millis(), show(&out));
    assert!(!text(&out.stderr).contains("never connected"), "re-verifying an isolated target must not fail on the established-connection probe: {}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON result ({e}): {}", show(&out)));
    assert_eq!(out.status.success(), open.is_empty(), "{}", show(&out));
    assert_catalog(&r, &open);
    let est = row(&r["verify"], "established-tcp")["result"].as_str().unwrap_or("").to_owned();
    assert!(est == "skipped" || est == "cut", "established-tcp: {r}");
    assert_verify(&r["verify"], &open, &est, Some("BPF LSM"));
    assert_level(&agent, "again", "isolate", "after the second isolate");
}

/// `verify NAME` before any isolation: the probes really get out, so every
/// channel is OPEN and the command exits non-zero. Nothing changes.
#[test]
fn verify_before_isolation_reports_every_channel_open() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "free", &["sleep", "1000"], 1);
    let (out, r) = json_any(&agent, &["verify", "free"]);
    eprintln!("verify: {r}");
    assert!(!out.status.success(), "OPEN channels make verify exit non-zero: {}", show(&out));
    assert_eq!(r["level"], "normal", "{r}");
    let all: Vec<&str> = VERIFY_CHANNELS.iter().copied().filter(|c| *c != "established-tcp").collect();
    assert_verify(&r["verify"], &all, "skipped", None);
    // verify is not an action on the target.
    assert_level(&agent, "free", "normal", "after verify");
    let cg = agent.target_cgroup("free");
    assert!(wait_until(Duration::from_secs(3), || cg.procs_recursive() == vec![run.pid()]).is_some(), "probes left in the target: {:?}", cg.procs_recursive());
    // The human table says the same.
    let out = agent.kp(&["verify", "free"]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("OPEN channels: tcp4"), "{}", show(&out));
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

/// Tasks in nested cgroups of the target (made before or after the
/// isolation) get no way out either.
#[test]
fn isolate_cuts_nested_cgroups() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let (nc, udp_port) = udp_listener(&agent);
    let _run = run_bg(&agent, "nest", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("nest");
    let inner = make_cgroup(cg.path().join("inner"));
    let deeper = make_cgroup(cg.path().join("inner").join("deeper"));
    let url = format!("http://127.0.0.1:{p4}/hello.txt");

    check_http(&http4, deeper.path(), &url, true, "before isolate, inner/deeper");
    agent.json(&["isolate", "nest"]);
    for (what, sub) in [("inner", inner.path().to_owned()), ("inner/deeper", deeper.path().to_owned())] {
        check_http(&http4, &sub, &url, false, &format!("isolated, {what}"));
        check_udp(&nc, udp_port, &sub, false, &format!("isolated, {what}"));
        check_ping(&sub, false, &format!("isolated, {what}"));
    }
    // A cgroup the workload makes after the isolation is no way out either.
    let late = make_cgroup(deeper.path().join("made-after-isolate"));
    check_http(&http4, late.path(), &url, false, "isolated, cgroup made after isolate");
    check_udp(&nc, udp_port, late.path(), false, "isolated, cgroup made after isolate");

    agent.json(&["restore", "nest", "--to", "normal"]);
    check_http(&http4, deeper.path(), &url, true, "after restore, inner/deeper");
    check_http(&http4, late.path(), &url, true, "after restore, cgroup made after isolate");
}

/// A target adopted from a cgroup inside another target: isolating the
/// inner one cuts it even though the outer one is normal (the strictest
/// level on the path wins), and isolating the outer one cuts the inner one
/// too. (Refusing such an adopt with a clear error would also be correct.)
#[test]
fn isolate_cuts_target_nested_in_another_target() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let _run = run_bg(&agent, "outer", &["sleep", "1000"], 1);
    let outer = agent.target_cgroup("outer");
    let sub = make_cgroup(outer.path().join("sub"));
    let out = agent.kp(&["--json", "adopt", "inner", "--cgroup", sub.path().to_str().unwrap()]);
    if !out.status.success() {
        assert!(text(&out.stderr).contains("outer"), "refusing a target inside a target must name it: {}", show(&out));
        return;
    }
    let url = format!("http://127.0.0.1:{p4}/hello.txt");
    check_http(&http4, sub.path(), &url, true, "nothing isolated, inner");

    agent.json(&["isolate", "inner"]);
    assert_level(&agent, "inner", "isolate", "inner isolated");
    assert_level(&agent, "outer", "normal", "inner isolated");
    check_http(&http4, sub.path(), &url, false, "inner isolated (outer normal), inner");
    check_ping(sub.path(), false, "inner isolated (outer normal), inner");
    check_http(&http4, outer.path(), &url, true, "inner isolated, outer itself");

    agent.json(&["restore", "inner", "--to", "normal"]);
    agent.json(&["isolate", "outer"]);
    check_http(&http4, outer.path(), &url, false, "outer isolated, outer itself");
    check_http(&http4, sub.path(), &url, false, "outer isolated (inner normal), inner");
}

/// SIGKILL the agent while a target is isolated: the channels stay cut with
/// no agent; the restarted agent reports the target isolated, loaded no
/// second copy of the programs, and can restore it.
#[test]
fn isolate_survives_agent_sigkill_and_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let (dns, dns_port) = dns_server(&agent);
    let _run = run_bg(&agent, "crash", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("crash");
    let url = format!("http://127.0.0.1:{p4}/hello.txt");
    check_http(&http4, cg.path(), &url, true, "before isolate");
    agent.json(&["isolate", "crash"]);
    check_http(&http4, cg.path(), &url, false, "isolated");

    let progs = our_isolate_progs(&agent);
    let attached = cgroup_attachments(cg.path());
    assert!(progs.len() >= 6, "skb, connect4/6, sendmsg4/6, sock_create at least: {progs:?}");
    let lsm_progs = progs.iter().filter(|(_, n)| n.starts_with("kp_isolate_lsm")).count();
    assert_eq!(lsm_progs, if open.is_empty() { 4 } else { 0 }, "LSM programs loaded iff BPF LSM runs: {progs:?}");
    assert_eq!(attached.len(), 7, "skb in/out, connect4/6, sendmsg4/6, sock_create on the target: {attached:?}");

    agent.kill9();
    check_http(&http4, cg.path(), &url, false, "agent dead");
    check_dns(&dns, dns_port, cg.path(), false, "agent dead");
    check_ping(cg.path(), false, "agent dead");

    agent.spawn();
    let (l, k) = level_of(&agent, "crash");
    assert_eq!((l.as_str(), k.as_str()), (Some("isolate"), Some("isolate")), "the restarted agent must report the truth\nagent log:\n{}", agent.log_text());
    let trow = target_row(&agent, "crash").unwrap();
    assert_eq!(strs(&trow["open_channels"]), open, "{trow}");
    assert_eq!(trow["isolation_hooks_attached"], true, "{trow}");
    assert_eq!(our_isolate_progs(&agent), progs, "the restart loaded a second copy of the programs (or lost one)");
    assert_eq!(cgroup_attachments(cg.path()), attached, "the restart changed what is attached to the target");
    let start = agent.journal().into_iter().rfind(|e| e["action"] == "agent-start").expect("agent-start event");
    assert_eq!(start["params"]["programs_attached_now"], json!([]), "nothing loaded or attached again: {start}");
    check_http(&http4, cg.path(), &url, false, "after restart");

    let r = agent.json(&["restore", "crash", "--to", "normal"]);
    assert_eq!(r["from"], "isolate", "{r}");
    assert_level(&agent, "crash", "normal", "after restore");
    check_http(&http4, cg.path(), &url, true, "restored by the restarted agent");
    check_dns(&dns, dns_port, cg.path(), true, "restored by the restarted agent");
}

/// Errors leave nothing changed, and the agent keeps serving.
#[test]
fn isolate_and_restore_errors_change_nothing() {
    let Some(agent) = Agent::start() else { return };
    let _a = run_bg(&agent, "alive", &["sleep", "1000"], 1);
    let _s = run_bg(&agent, "dead", &["sleep", "1000"], 1);
    stop(&agent, "dead");
    let targets_now = |agent: &Agent| {
        let mut st = agent.json(&["status"]);
        for t in st["targets"].as_array_mut().unwrap() {
            t.as_object_mut().unwrap().remove("populated");
        }
        st["targets"].clone()
    };
    let before = targets_now(&agent);
    let journal_len = agent.journal().len();

    let fails = |args: &[&str], needles: &[&str]| {
        let out = agent.kp(args);
        assert!(!out.status.success(), "killpath {args:?} must fail: {}", show(&out));
        let err = text(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "killpath {args:?}: the error should say {n:?}: {}", show(&out));
        }
        assert_eq!(targets_now(&agent), before, "killpath {args:?} changed the targets");
        assert!(agent.kp(&["status"]).status.success(), "the agent stopped serving after {args:?}");
    };
    fails(&["isolate", "no-such-target"], &["unknown-target", "no-such-target"]);
    fails(&["isolate", "no-such-target", "--verify"], &["unknown-target", "no-such-target"]);
    fails(&["restore", "no-such-target", "--to", "normal"], &["unknown-target", "no-such-target"]);
    fails(&["verify", "no-such-target"], &["unknown-target", "no-such-target"]);
    // A stopped target: nothing left to isolate; its guard stays armed.
    fails(&["isolate", "dead"], &["wrong-level", "dead", "stopped"]);
    fails(&["isolate", "dead", "--verify"], &["wrong-level", "dead"]);
    fails(&["verify", "dead"], &["wrong-level", "dead"]);
    // Bad levels, and "restore" that would go up or stay.
    fails(&["restore", "alive", "--to", "bogus"], &["bogus"]);
    fails(&["restore", "alive", "--to", "isolate"], &["restore goes down"]);
    fails(&["restore", "alive", "--to", "normal"], &["restore goes down"]);
    fails(&["restore", "dead", "--to", "stopped"], &[]);
    // Unknown-target, wrong-level and bad-level refusals journal no change.
    let recs = agent.journal();
    assert!(recs[journal_len..].iter().all(|r| r["to_level"].is_null()), "a refused request journaled a level change: {:?}", &recs[journal_len..]);
    assert_level(&agent, "dead", "stopped", "after the refusals");
    assert_level(&agent, "alive", "normal", "after the refusals");

    // On an isolated target, a bad restore keeps it isolated.
    agent.json(&["isolate", "alive"]);
    let before = targets_now(&agent);
    let fails2 = |args: &[&str], needle: &str| {
        let out = agent.kp(args);
        assert!(!out.status.success() && text(&out.stderr).contains(needle), "killpath {args:?}: {}", show(&out));
        assert_eq!(targets_now(&agent), before, "killpath {args:?} changed the targets");
    };
    fails2(&["restore", "alive", "--to", "bogus"], "bogus");
    fails2(&["restore", "alive", "--to", "isolate"], "restore goes down");
    assert_level(&agent, "alive", "isolate", "after the refused restores");
    let out = in_target(&agent, "alive", &["ping", "-c1", "-W1", "127.0.0.1"]);
    assert!(!out.status.success(), "still cut: {}", show(&out));
}

/// isolate and restore report time to effect (and the map update inside
/// it) and journal intent + result with that time.
#[test]
fn isolate_reports_time_to_effect_and_journals_it() {
    let Some(agent) = Agent::start() else { return };
    let _a = run_bg(&agent, "timed", &["sleep", "1000"], 1);
    let r = agent.json(&["isolate", "timed", "--reason", "drill-8"]);
    let tte = r["time_to_effect_us"].as_u64().unwrap_or_else(|| panic!("no time_to_effect_us: {r}"));
    let mu = r["map_update_us"].as_u64().unwrap_or_else(|| panic!("no map_update_us: {r}"));
    eprintln!("isolate: time_to_effect_us={tte} map_update_us={mu}");
    assert!(mu > 0 && tte > 0, "measured times: {r}");
    assert!(mu <= tte, "the map update is part of the time to effect: {r}");
    assert!(tte < 1_000_000, "isolate is a map update, not a second: {r}");
    let r2 = agent.json(&["restore", "timed", "--to", "normal", "--reason", "drill-8 over"]);
    let rtte = r2["time_to_effect_us"].as_u64().unwrap_or_else(|| panic!("no time_to_effect_us: {r2}"));
    assert!(rtte > 0 && rtte < 1_000_000, "{r2}");

    let recs = agent.journal();
    for (action, resp, from, to, reason) in [("isolate", &r, 0, 3, "drill-8"), ("restore", &r2, 3, 0, "drill-8 over")] {
        let intent = recs
            .iter()
            .find(|e| e["action"] == action && e["phase"] == "intent" && e["target"] == "timed")
            .unwrap_or_else(|| panic!("no {action} intent in {recs:?}"));
        assert_eq!(intent["params"]["reason"], reason, "{intent}");
        assert_eq!(intent["from_level"], from, "{intent}");
        let result = recs
            .iter()
            .find(|e| e["action"] == action && e["phase"] == "result" && e["intent_seq"] == intent["seq"])
            .unwrap_or_else(|| panic!("no {action} result for intent {intent}"));
        assert_eq!(result["outcome"], "ok", "{result}");
        assert_eq!(result["to_level"], to, "{result}");
        assert_eq!(result["time_to_effect_us"], resp["time_to_effect_us"], "journal and response agree: {result} vs {resp}");
        assert_eq!(result["seq"], resp["journal_seq"], "the response names its journal record: {resp}");
        assert!(intent["seq"].as_u64() < result["seq"].as_u64());
    }
    let v = agent.json(&["journal", "--verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

// ---------------------------------------------------------------- tests (VM, BPF LSM)

/// A docker.sock-style unix listener outside the target: prints every
/// complete line it receives as `got <line>`, answers one-shot clients.
const UNIX_SERVER_PY: &str = r#"
import os, socket, sys, threading
path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
print("listening", flush=True)
def serve(c):
    buf = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        buf += d
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            print("got", line.decode(errors="replace"), flush=True)
            if not line.startswith(b"tick"):
                c.sendall(b"ok\n")
    c.close()
while True:
    c, _ = s.accept()
    print("accepted", flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Inside the target: one connection, a tick every 20 ms carrying its send
/// time (CLOCK_MONOTONIC), send errors ignored (it must survive the
/// isolation and resume after restore).
const UNIX_TICKER_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
while True:
    try:
        s.sendall(b"tick %.6f\n" % time.monotonic())
    except OSError:
        pass
    time.sleep(0.02)
"#;

/// CLOCK_MONOTONIC in seconds (python's time.monotonic()).
fn mono() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain clock_gettime into a local.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The send time of the last tick the unix server received.
fn last_tick(srv: &Server) -> f64 {
    srv.stdout().lines().filter_map(|l| l.strip_prefix("got tick ")?.trim().parse::<f64>().ok()).fold(0.0, f64::max)
}

/// Skips (fails under KILLPATH_TEST_STRICT) when BPF LSM hooks are not attached.
fn need_lsm(agent: &Agent) -> bool {
    lsm_attached(agent) || skip("needs BPF LSM hooks attached (runs in the VM: cargo xtask test --vm-only)")
}

fn check_unix(srv: &Server, agent: &Agent, name: &str, sock: &Path, open: bool, ctx: &str) {
    // nc -U, a real client.
    let m = marker("unix");
    let out = in_target(agent, name, &["sh", "-c", r#"printf '%s\n' "$1" | nc -U -N -w2 "$2""#, "sh", &m, sock.to_str().unwrap()]);
    if open {
        assert!(out.status.success(), "{ctx}: nc -U from inside must work: {}", show(&out));
        assert!(wait_until(Duration::from_secs(3), || srv.count(&m) > 0).is_some(), "{ctx}: the unix listener never got {m}\n{}", srv.describe());
    } else {
        assert!(!out.status.success(), "{ctx}: nc -U from an isolated target must fail: {}", show(&out));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(srv.count(&m), 0, "{ctx}: the unix listener got data from the isolated target\n{}", srv.describe());
    }
    if open {
        eprintln!("{ctx}: unix client ok");
        return;
    }
    // python3, while cut: the errno.
    let m = marker("unixpy");
    let code = format!("import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect(sys.argv[1])\ns.sendall(b'{m}\\n')\nprint(s.recv(16))\n");
    let out = in_target(agent, name, &[py(), "-c", &code, sock.to_str().unwrap()]);
    assert!(!out.status.success(), "{ctx}: python unix client from an isolated target must fail: {}", show(&out));
    assert!(text(&out.stderr).contains("[Errno 1] Operation not permitted"), "{ctx}: refused with EPERM: {}", show(&out));
    assert_eq!(srv.count(&m), 0, "{ctx}\n{}", srv.describe());
    eprintln!("{ctx}: unix clients refused");
}

fn check_packet(agent: &Agent, name: &str, open: bool, ctx: &str) {
    let out = in_target(agent, name, &[py(), "-c", "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)"]);
    if open {
        assert!(out.status.success(), "{ctx}: a packet socket must open: {}", show(&out));
    } else {
        assert!(!out.status.success(), "{ctx}: an isolated target opened a packet socket: {}", show(&out));
        assert!(text(&out.stderr).contains("[Errno 1] Operation not permitted"), "{ctx}: refused with EPERM: {}", show(&out));
    }
    eprintln!("{ctx}: packet socket: {}", out.status);
}

/// With BPF LSM, `isolate --verify` reports every channel cut and exits 0;
/// unix clients (one-shot and an established connection) and packet
/// sockets are cut; after restore everything works again.
#[test]
fn lsm_isolate_cuts_unix_and_packet() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let sock = agent.dir.path().join("docker.sock");
    let mut srv = Server::start(agent.dir.path(), "unix-server", &[py(), "-u", "-c", UNIX_SERVER_PY, sock.to_str().unwrap()]);
    assert!(srv.wait_for("listening", Duration::from_secs(10)), "unix server not listening\n{}", srv.describe());
    let ticker = run_bg(&agent, "box", &[py(), "-c", UNIX_TICKER_PY, sock.to_str().unwrap()], 1);
    let ticks = || srv.count("got tick");
    assert!(wait_until(Duration::from_secs(10), || ticks() > 5).is_some(), "the established unix connection never carried data\n{}", srv.describe());
    check_unix(&srv, &agent, "box", &sock, true, "before isolate");
    check_packet(&agent, "box", true, "before isolate");
    let denials = agent.json(&["status"])["isolation"]["lsm_denials"].as_u64().unwrap_or(0);

    let t0 = mono();
    let (out, r) = json_any(&agent, &["isolate", "box", "--verify"]);
    let returned = mono();
    eprintln!("isolate --verify: {r}");
    assert!(out.status.success(), "with BPF LSM every channel is cut, so exit 0: {}", show(&out));
    assert_catalog(&r, &[]);
    assert_verify(&r["verify"], &[], "cut", None);

    // The established unix connection stops carrying data: no tick sent
    // after the command returned ever arrives, and none arrive for 1.5 s.
    let mut n = ticks();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(1500) {
        thread::sleep(Duration::from_millis(20));
        if ticks() != n {
            (n, quiet_since) = (ticks(), Instant::now());
        }
        assert!(mono() - returned < 8.0, "the established unix connection never went quiet\n{}", srv.describe());
    }
    let last = last_tick(&srv);
    eprintln!(
        "established unix connection: isolate --verify issued at t=0, returned at {:.1} ms (verify_setup_us {}); last tick that got through was sent at {:.1} ms",
        (returned - t0) * 1e3,
        r["verify_setup_us"],
        (last - t0) * 1e3
    );
    assert!(last <= returned, "a tick sent {:.1} ms after isolate returned crossed the boundary", (last - returned) * 1e3);
    check_unix(&srv, &agent, "box", &sock, false, "isolated");
    check_packet(&agent, "box", false, "isolated");
    // The LSM hooks are host-wide: they must refuse only the isolated target.
    let _by = run_bg(&agent, "bystander", &["sleep", "1000"], 1);
    check_unix(&srv, &agent, "bystander", &sock, true, "bystander while box is isolated");
    check_packet(&agent, "bystander", true, "bystander while box is isolated");
    let after = agent.json(&["status"])["isolation"]["lsm_denials"].as_u64().unwrap_or(0);
    assert!(after > denials, "the LSM hooks did the refusing: {denials} -> {after}");
    assert!(alive(ticker.pid()));

    agent.json(&["restore", "box", "--to", "normal"]);
    assert!(wait_until(Duration::from_secs(5), || ticks() > n).is_some(), "the established unix connection did not resume after restore\n{}", srv.describe());
    check_unix(&srv, &agent, "box", &sock, true, "after restore");
    check_packet(&agent, "box", true, "after restore");
}

/// With BPF LSM, nothing stays open: the isolate response, status and probe
/// list no open channel, and the four LSM programs are loaded.
#[test]
fn lsm_status_reports_no_open_channels() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let _run = run_bg(&agent, "quiet", &["sleep", "1000"], 1);
    let r = agent.json(&["isolate", "quiet"]);
    assert_catalog(&r, &[]);
    let check = |agent: &Agent, ctx: &str| {
        let st = agent.json(&["status"]);
        assert_eq!(st["isolation"]["lsm"], "attached", "{ctx}: {st}");
        let t = target_row(agent, "quiet").unwrap();
        assert_eq!(t["level"], "isolate", "{ctx}: {t}");
        assert_eq!(t["kernel_level"], "isolate", "{ctx}: {t}");
        assert_eq!(t["open_channels"], json!([]), "{ctx}: nothing is open with BPF LSM: {t}");
        let human = text(&agent.kp(&["status"]).stdout);
        assert!(!human.contains("OPEN"), "{ctx}: {human}");
        let p = agent.json(&["probe"]);
        let lvl = p["levels"].as_array().unwrap().iter().find(|l| l["level"] == "isolate").cloned().unwrap();
        let d = lvl["detail"].as_str().unwrap_or("");
        assert!(!d.contains("OPEN") && d.contains("unix") && d.contains("packet"), "{ctx}: {lvl}");
    };
    check(&agent, "isolated");
    let progs = our_isolate_progs(&agent);
    assert!(progs.len() >= 10, "6 cgroup + 4 LSM programs at least: {progs:?}");
    assert_eq!(progs.iter().filter(|(_, n)| n.starts_with("kp_isolate_lsm")).count(), 4, "{progs:?}");
    check_packet(&agent, "quiet", false, "isolated");
    // Restored: still nothing listed (nothing is isolated), and it works.
    agent.json(&["restore", "quiet", "--to", "normal"]);
    let t = target_row(&agent, "quiet").unwrap();
    assert_eq!((t["level"].as_str(), t["open_channels"].clone()), (Some("normal"), json!([])), "{t}");
    check_packet(&agent, "quiet", true, "restored");
}

