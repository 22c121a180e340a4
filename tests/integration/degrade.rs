//! Tests: degrade (level 2). `killpath degrade NAME --revoke CAP[,CAP...]`
//! takes capabilities away from a running target, kernel-enforced, with
//! allow-lists; `restore --grant CAP` / `--to LEVEL` gives them back. Every
//! refusal is counted exactly and sampled (rate-limited) onto the event
//! stream; every degrade step raises an alert (journal, `killpath events`,
//! the operator's hook).
//!
//! Real clients run inside the target (curl, python3) against real servers
//! the test starts outside it; errnos are read from python, which reports
//! exactly what the syscall returned.
//!
//! On a kernel without BPF LSM (the host) only `net.connect` is enforceable
//! (cgroup sock_addr hooks). Tests whose names start with `lsm_` need BPF LSM
//! and run in the VM (`cargo xtask test --vm-only`): there a long-lived
//! python helper inside the target performs each operation on request (read
//! from a FIFO), since with `exec` or `fork` revoked no new helper could be
//! started inside it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    os::unix::{fs::OpenOptionsExt as _, net::UnixListener, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use killpath_common::DENIAL_EVENTS_PER_SEC;
use nix::{
    sys::{
        signal::{killpg, Signal},
        stat::Mode,
    },
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::{
    isolate::Server,
    harness::{alive, skip, wait_until, Agent},
    stop::{make_cgroup, run_bg, show, spawn_outside, stop, target_row, text, Reaped},
};

// ---------------------------------------------------------------- helpers

/// The capability catalog, in its order.
const CAPS: &[&str] = &["net.connect", "net.listen", "net.raw", "net.unix", "fs.write", "exec", "fork", "signal", "ptrace", "mount", "bpf", "module", "setid"];
/// Capabilities whose hooks follow kernel pointers (offsets from the
/// kernel's BTF): with BPF LSM, enforceable only if the BTF has the fields.
const BTF_CAPS: &[&str] = &["fs.write", "signal"];
const EPERM: i64 = 1;
const ECONNREFUSED: i64 = 111;
/// What the HTTP servers serve.
const HELLO: &str = "killpath-degrade-hello\n";

/// The distribution's python3 (a pyenv shim may not work inside the VM).
fn py() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs `cmd` to completion inside cgroup `cg`: a fresh `sh` moves itself
/// into the cgroup, then execs `cmd`, so no instruction of `cmd` runs
/// outside. Bounded by `timeout -s KILL 60` (the VM is slow).
fn in_cgroup(cg: &Path, cmd: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "60", "sh", "-c", r#"echo 0 > "$0" && exec "$@""#])
        .arg(cg.join("cgroup.procs"))
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", cg.display()))
}

/// A client run from the test's own cgroup (outside every target).
fn outside(cmd: &[&str]) -> Output {
    Command::new("timeout").args(["-s", "KILL", "60"]).args(cmd).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Whether the agent's BPF LSM hooks are attached.
fn lsm_attached(agent: &Agent) -> bool {
    agent.json(&["status"])["isolation"]["lsm"] == "attached"
}

/// Skips (fails under KILLPATH_TEST_STRICT) when BPF LSM hooks are not attached.
fn need_lsm(agent: &Agent) -> bool {
    lsm_attached(agent) || skip("needs BPF LSM hooks attached (runs in the VM: cargo xtask test --vm-only)")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")).to_owned()).collect()
}

/// The status row of `name`.
fn row(agent: &Agent, name: &str) -> Value {
    target_row(agent, name).unwrap_or_else(|| panic!("status does not list {name}"))
}

/// `denials.<cap>.total` of `name` (0 when never denied).
fn denials(agent: &Agent, name: &str, cap: &str) -> u64 {
    let r = row(agent, name);
    match &r["denials"][cap] {
        Value::Null => 0,
        d => d["total"].as_u64().unwrap_or_else(|| panic!("denials.{cap} without a total: {r}")),
    }
}

/// Asserts level, revoked capabilities and allow-list of `name` in status,
/// in the registry and in the kernel map.
fn assert_state(agent: &Agent, name: &str, level: &str, revoked: &[&str], allow: &[&str], ctx: &str) {
    let r = row(agent, name);
    assert_eq!(r["level"], level, "{ctx}: level: {r}");
    assert_eq!(r["kernel_level"], level, "{ctx}: the kernel map agrees: {r}");
    assert_eq!(strs(&r["revoked"]), revoked, "{ctx}: revoked capabilities: {r}");
    assert_eq!(strs(&r["allow_connect"]), allow, "{ctx}: allow-list: {r}");
}

/// `killpath ARGS` must fail, saying each of `needles` on stderr.
fn assert_fails(agent: &Agent, args: &[&str], needles: &[&str]) {
    let out = agent.kp(args);
    assert!(!out.status.success(), "killpath {args:?} must fail: {}", show(&out));
    let err = text(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "killpath {args:?}: the error should say {n:?}: {}", show(&out));
    }
}

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
fn connect_loop(run: impl FnOnce(&[&str]) -> Output, host: &str, port: u16, n: u32) -> Value {
    let (p, n) = (port.to_string(), n.to_string());
    let out = run(&[py(), "-c", CONNECT_PY, host, &p, &n]);
    assert!(out.status.success(), "connect loop to {host}:{port} did not finish: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("connect loop output ({e}): {}", show(&out)))
}

/// The errno of one TCP connect from a fresh process in `cg` (0 = connected).
fn connect_errno(cg: &Path, host: &str, port: u16) -> i64 {
    let r = connect_loop(|c| in_cgroup(cg, c), host, port, 1);
    let e = r["errnos"].as_object().unwrap();
    assert_eq!(e.len(), 1, "{r}");
    e.keys().next().unwrap().parse().unwrap()
}

/// The errno of one TCP connect from a process outside every target.
fn connect_errno_outside(host: &str, port: u16) -> i64 {
    let r = connect_loop(outside, host, port, 1);
    r["errnos"].as_object().unwrap().keys().next().unwrap().parse().unwrap()
}

fn udp_errno(cg: &Path, host: &str, port: u16) -> i64 {
    let out = in_cgroup(cg, &[py(), "-c", UDP_PY, host, &port.to_string()]);
    assert!(out.status.success(), "{}", show(&out));
    text(&out.stdout).trim().parse().unwrap_or_else(|e| panic!("udp errno ({e}): {}", show(&out)))
}

/// A TCP listener outside any target that accepts (and drops) every
/// connection, so any number of connects can succeed.
fn tcp_sink() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}


/// `python3 -m http.server` on `bind`, outside any target, serving hello.txt.
fn http_server(agent: &Agent, name: &str, bind: &str) -> (Server, u16) {
    let d = agent.dir.path().join("www");
    std::fs::create_dir_all(&d).expect("www dir");
    std::fs::write(d.join("hello.txt"), HELLO).expect("hello.txt");
    let mut s = Server::start(agent.dir.path(), name, &[py(), "-u", "-m", "http.server", "0", "--bind", bind, "--directory", d.to_str().unwrap()]);
    let port = s.port();
    (s, port)
}

/// curl from inside `cg`: fetches hello.txt and the server logged it, or
/// fails and the server saw nothing.
fn check_curl(srv: &Server, cg: &Path, host: &str, port: u16, works: bool, ctx: &str) {
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

/// `killpath --json events`, spawned with stdout piped; a thread collects
/// every line. Dropping it kills the subscriber.
struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    _sentinel: Reaped,
}

impl Events {
    /// Subscribes, and returns once the subscription is known to be live:
    /// a sentinel target is degraded (with a unique reason) until its alert
    /// shows up on the stream, so nothing after this call can be missed.
    fn start(agent: &Agent) -> Events {
        let sentinel = run_bg(agent, "events-sentinel", &["sleep", "1000"], 1);
        let mut child = agent
            .cmd(&["--json", "events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn killpath events");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| json!({"unparsed": line, "error": e.to_string()}));
                l2.lock().unwrap().push(v);
            }
        });
        let ev = Events { child, lines, _sentinel: sentinel };
        for i in 0..100 {
            let reason = format!("events-sentinel-{i}");
            agent.json(&["degrade", "events-sentinel", "--revoke", "net.connect", "--reason", &reason]);
            if wait_until(Duration::from_millis(500), || ev.all().iter().any(|e| e["type"] == "alert" && e["reason"] == reason.as_str())).is_some() {
                return ev;
            }
        }
        panic!("the events subscriber never received an alert: {:?}\nagent log:\n{}", ev.all(), agent.log_text());
    }

    fn all(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Events about target `name` of type `ty`.
    fn of(&self, name: &str, ty: &str) -> Vec<Value> {
        self.all().into_iter().filter(|e| e["target"] == name && e["type"] == ty).collect()
    }

    /// Waits until `f` holds for the collected events.
    fn wait(&self, timeout: Duration, what: &str, f: impl Fn(&[Value]) -> bool) {
        if wait_until(timeout, || f(&self.all())).is_none() {
            panic!("events: never saw {what}; got {:?}", self.all());
        }
    }

    /// Waits until no new event arrived for `quiet`.
    fn settle(&self, quiet: Duration) {
        let mut n = self.all().len();
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            thread::sleep(Duration::from_millis(50));
            let m = self.all().len();
            if m != n {
                (n, since) = (m, Instant::now());
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-lived python process that performs one operation per request
/// line read from a FIFO and appends `{"id", "op", "errno", "detail"}` to
/// an output file. Started before anything is revoked, it keeps working
/// when `exec` or `fork` no longer can start anything new.
const HELPER_PY: &str = r#"
import ctypes, errno, json, os, signal as sig, socket, struct, subprocess, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

def check(r):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

def sc(nr, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    return check(libc.syscall(ctypes.c_long(nr), *args))

def connect(a):
    host = a["host"]
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, a["port"]))
    finally:
        s.close()

def fork_connect(a):
    # A child forked now (after the revocation) connects; its exit code is the errno.
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            connect(a)
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 254
        os._exit(code)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    if code:
        raise OSError(code, "child %d: %s" % (pid, os.strerror(code)))
    return "child %d connected" % pid

SPAWN = "import socket, sys\ns = socket.socket()\ns.settimeout(5)\ntry:\n    s.connect((sys.argv[1], int(sys.argv[2])))\nexcept OSError as e:\n    sys.exit(e.errno or 255)\n"

def spawn_connect(a):
    # A new program (fork + exec) connects; its exit code is the errno.
    r = subprocess.run([sys.executable, "-c", SPAWN, a["host"], str(a["port"])], timeout=60)
    if r.returncode:
        raise OSError(r.returncode, "spawned program: %s" % os.strerror(r.returncode))
    return "spawned program connected"

def exec_(a):
    r = subprocess.run(["/bin/true"], timeout=60)
    if r.returncode:
        raise OSError(255, "/bin/true exited %d" % r.returncode)

def fork(a):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def thread(a):
    box = []
    t = threading.Thread(target=lambda: box.append(1))
    t.start()
    t.join()
    if box != [1]:
        raise OSError(255, "thread did not run")

def sock(family, type_, proto=0):
    socket.socket(family, type_, proto).close()

def unix(a):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(a["path"])
    finally:
        s.close()

def listen(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
    finally:
        s.close()

def setid(a):
    os.setgid(os.getgid())
    os.setuid(os.getuid())

def ptrace(a):
    pid = a["pid"]
    ctypes.set_errno(0)
    check(libc.ptrace(16, pid, None, None))  # PTRACE_ATTACH
    os.waitpid(pid, 0x40000000)  # __WALL: the attach stop
    ctypes.set_errno(0)
    check(libc.ptrace(17, pid, None, None))  # PTRACE_DETACH

def mount(a):
    d = a["dir"].encode()
    ctypes.set_errno(0)
    check(libc.mount(b"killpath-test", d, b"tmpfs", 0, None))
    ctypes.set_errno(0)
    check(libc.umount2(d, 0))

def bpf(a):
    # BPF_MAP_CREATE of a one-entry array.
    attr = ctypes.create_string_buffer(struct.pack("IIII", 2, 4, 4, 1), 128)
    os.close(sc(321, 0, attr, 128))

def module(a):
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        try:
            sc(313, fd, b"", 0)  # finit_module
        except OSError as e:
            if e.errno == errno.EEXIST:
                return "already loaded"
            raise
    finally:
        os.close(fd)
    sc(176, a["name"].encode(), os.O_NONBLOCK)  # delete_module
    return "loaded and unloaded"

def read(a):
    with open(a["path"], "rb") as f:
        return "%d bytes" % len(f.read())

def write(a):
    # Open for write (append: no truncation), one write.
    with open(a["path"], "a") as f:
        f.write("written from inside\n")

def create(a):
    with open(a["path"], "x"):
        pass
    os.unlink(a["path"])

def mkdir(a):
    os.mkdir(a["path"])
    os.rmdir(a["path"])

def rename(a):
    os.rename(a["path"], a["path"] + ".renamed")
    os.rename(a["path"] + ".renamed", a["path"])

def link(a):
    os.link(a["path"], a["to"])
    os.unlink(a["to"])

def symlink(a):
    os.symlink("somewhere", a["to"])
    os.unlink(a["to"])

def link_write(a):
    # Hard-link a file into a directory, then write through the new name.
    os.link(a["path"], a["to"])
    with open(a["to"], "a") as f:
        f.write("ESCAPED through a hard link\n")

OPS = {
    "connect": connect, "fork_connect": fork_connect, "spawn_connect": spawn_connect,
    "exec": exec_, "fork": fork, "thread": thread,
    "packet": lambda a: sock(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)),
    "rawip": lambda a: sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "netlink": lambda a: sock(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "udp": lambda a: sock(socket.AF_INET, socket.SOCK_DGRAM),
    "unix": unix, "listen": listen, "setid": setid, "ptrace": ptrace, "mount": mount,
    "bpf": bpf, "module": module, "read": read, "write": write,
    "create": create, "mkdir": mkdir, "unlink": lambda a: os.unlink(a["path"]), "rename": rename,
    "chmod": lambda a: os.chmod(a["path"], 0o644), "truncate": lambda a: os.truncate(a["path"], 0),
    "link": link, "symlink": symlink, "link_write": link_write,
    "signal": lambda a: os.kill(a["pid"], sig.SIGCONT),
    "signal0": lambda a: os.kill(a["pid"], 0),
    "signal_self": lambda a: os.kill(os.getpid(), sig.SIGCONT),
}

fifo, out = sys.argv[1], sys.argv[2]
inp = os.fdopen(os.open(fifo, os.O_RDWR), "r")
res = open(out, "a", buffering=1)
res.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
res.flush()
for line in inp:
    req = json.loads(line)
    r = {"id": req["id"], "op": req["op"], "errno": 0}
    try:
        d = OPS[req["op"]](req)
        if d is not None:
            r["detail"] = str(d)
    except OSError as e:
        r["errno"] = e.errno if e.errno else -1
        r["detail"] = str(e)
    except Exception as e:
        r["errno"] = -1
        r["detail"] = repr(e)
    res.write(json.dumps(r) + "\n")
    res.flush()
"#;

struct Helper {
    name: String,
    fifo: PathBuf,
    out: PathBuf,
    next: u64,
    pid: i32,
    /// The `killpath run` child or the spawned process; SIGKILLed on drop.
    _proc: Reaped,
}

impl Helper {
    fn paths(agent: &Agent, name: &str) -> (PathBuf, PathBuf) {
        let (fifo, out) = (agent.dir.path().join(format!("{name}.fifo")), agent.dir.path().join(format!("{name}.ops")));
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap_or_else(|e| panic!("mkfifo {}: {e}", fifo.display()));
        (fifo, out)
    }

    /// Starts the helper as target `name` (`killpath run NAME -- python3 ...`).
    fn run(agent: &Agent, name: &str) -> Helper {
        let (fifo, out) = Self::paths(agent, name);
        let proc = run_bg(agent, name, &[py(), "-c", HELPER_PY, fifo.to_str().unwrap(), out.to_str().unwrap()], 1);
        Self::ready(name, fifo, out, proc)
    }

    /// Starts the helper inside an existing cgroup `cg`.
    fn spawn_in(agent: &Agent, name: &str, cg: &Path) -> Helper {
        let (fifo, out) = Self::paths(agent, name);
        let child = Command::new("sh")
            .args(["-c", r#"echo 0 > "$0" && exec "$@""#])
            .arg(cg.join("cgroup.procs"))
            .args([py(), "-c", HELPER_PY, fifo.to_str().unwrap(), out.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn helper");
        Self::ready(name, fifo, out, Reaped(child))
    }

    fn ready(name: &str, fifo: PathBuf, out: PathBuf, proc: Reaped) -> Helper {
        let lines = || std::fs::read_to_string(&out).unwrap_or_default();
        if wait_until(Duration::from_secs(90), || lines().contains("\"ready\"")).is_none() {
            panic!("helper {name} never became ready: {:?}", lines());
        }
        let first: Value = serde_json::from_str(lines().lines().next().unwrap()).unwrap();
        let pid = first["pid"].as_i64().unwrap() as i32;
        Helper { name: name.to_owned(), fifo, out, next: 1, pid, _proc: proc }
    }

    /// Performs `op` inside the helper; returns its response.
    fn op(&mut self, op: &str, args: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut req = if args.is_null() { json!({}) } else { args };
        req["id"] = json!(id);
        req["op"] = json!(op);
        // `prepare`: a file the test (outside the target) makes sure exists first.
        if let Some(p) = req.get("prepare").and_then(Value::as_str) {
            if !Path::new(p).exists() {
                std::fs::write(p, "prepared\n").unwrap_or_else(|e| panic!("preparing {p}: {e}"));
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.fifo)
            .unwrap_or_else(|e| panic!("helper {}: opening its FIFO (is it alive?): {e}", self.name));
        writeln!(f, "{req}").expect("write request");
        drop(f);
        let mut resp = None;
        let found = wait_until(Duration::from_secs(90), || {
            let s = std::fs::read_to_string(&self.out).unwrap_or_default();
            resp = s.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["id"] == id);
            resp.is_some()
        });
        assert!(found.is_some(), "helper {}: no answer to {req} (alive: {})", self.name, alive(self.pid));
        resp.unwrap()
    }

    /// Asserts the errno of `op`.
    fn expect(&mut self, op: &str, args: Value, want: i64, ctx: &str) {
        let r = self.op(op, args);
        assert_eq!(r["errno"], want, "{ctx}: {op} in helper {} must end with errno {want}: {r}", self.name);
        eprintln!("{ctx}: {op}: errno {} {}", r["errno"], r["detail"].as_str().unwrap_or(""));
    }
}

// ---------------------------------------------------------------- tests (host)

/// `capabilities` lists the 13 capabilities, enforceable or not with a
/// reason; revoking one that cannot be enforced here, an unknown one, or
/// using `--allow-write`, is an error naming it that changes nothing: no
/// level, no revoked bit (not even the enforceable ones requested with
/// it), no allow-list entry, no journal level change, no alert.
#[test]
fn degrade_capabilities_and_refusals_change_nothing() {
    let Some(agent) = Agent::start() else { return };
    let lsm = lsm_attached(&agent);
    let caps = agent.json(&["capabilities"]);
    let list = caps["capabilities"].as_array().unwrap_or_else(|| panic!("no capabilities list: {caps}"));
    let names: Vec<&str> = list.iter().map(|c| c["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, CAPS, "13 capabilities, in catalog order: {caps}");
    let mut unenforceable = Vec::new();
    for c in list {
        let name = c["name"].as_str().unwrap();
        let enforceable = c["enforceable"].as_bool().unwrap_or_else(|| panic!("{c}"));
        if !lsm || !BTF_CAPS.contains(&name) {
            // Without BPF LSM only the cgroup hooks of net.connect remain.
            let want = name == "net.connect" || lsm;
            assert_eq!(enforceable, want, "{name}: enforceable must be {want} here (BPF LSM: {lsm}): {c}");
        }
        let detail = c["detail"].as_str().unwrap_or("");
        if enforceable {
            assert!(!detail.contains("not enforceable"), "{c}");
        } else {
            unenforceable.push(name);
            assert!(detail.contains("not enforceable on this kernel"), "{name}: says why: {c}");
            if !lsm {
                assert!(detail.contains("BPF LSM"), "{name}: the reason is the missing BPF LSM: {c}");
            }
        }
    }
    // `probe` lists the same capabilities.
    let probe = agent.json(&["probe"]);
    assert_eq!(probe["capabilities"], caps["capabilities"], "probe and capabilities agree");
    let human = text(&agent.kp(&["capabilities"]).stdout);
    for c in CAPS {
        assert!(human.lines().any(|l| l.starts_with(&format!("{c} "))), "human output lists {c}:\n{human}");
    }
    assert!(human.lines().any(|l| l.starts_with("net.connect ") && l.contains("yes")), "{human}");
    assert!(human.lines().any(|l| l.starts_with("fs.write ") && l.contains("no")), "{human}");

    let port = tcp_sink();
    let _box = run_bg(&agent, "box", &["sleep", "1000"], 1);
    let _dead = run_bg(&agent, "dead", &["sleep", "1000"], 1);
    stop(&agent, "dead");
    let cg = agent.target_cgroup("box").path().to_owned();
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0, "connects work before anything");
    let journal_len = agent.journal().len();
    let p = port.to_string();
    let allow = format!("127.0.0.1:{p}");

    let unchanged = |args: &[&str]| {
        assert_state(&agent, "box", "normal", &[], &[], &format!("after the refused {args:?}"));
        assert_eq!(row(&agent, "box")["denials"], json!({}), "nothing was denied");
        assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0, "after the refused {args:?}: net.connect is not revoked in the kernel either");
    };
    let refuse = |args: &[&str], needles: &[&str]| {
        assert_fails(&agent, args, needles);
        unchanged(args);
    };
    // Not enforceable here: named, nothing half-applied (also not the
    // enforceable net.connect asked for in the same request, whichever
    // comes first, and not its allow-list).
    let first = unenforceable[0];
    refuse(&["degrade", "box", "--revoke", first], &[first, "not enforceable"]);
    let both = format!("net.connect,{first}");
    refuse(&["degrade", "box", "--revoke", &both, "--allow-connect", &allow], &[first, "not enforceable"]);
    let both = format!("{first},net.connect");
    refuse(&["degrade", "box", "--revoke", &both], &[first]);
    for c in &unenforceable {
        refuse(&["degrade", "box", "--revoke", &format!("net.connect,{c}")], &[c, "not enforceable"]);
    }
    // Unknown capability.
    refuse(&["degrade", "box", "--revoke", "net.connect,net.teleport"], &["net.teleport", "unknown capability"]);
    refuse(&["degrade", "box", "--revoke", "net.teleport"], &["net.teleport"]);
    // --allow-write without fs.write revoked (on the host fs.write cannot
    // be revoked at all: see the loop above).
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-write", "/tmp"], &["--allow-write", "fs.write"]);
    // A bad allow-list entry.
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-connect", "127.0.0.1:0"], &["--allow-connect", "127.0.0.1:0"]);
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-connect", "10.0.0.0/33"], &["10.0.0.0/33"]);
    // Wrong target or level; restore of what is not revoked.
    refuse(&["degrade", "nobody", "--revoke", "net.connect"], &["unknown-target", "nobody"]);
    assert_fails(&agent, &["degrade", "dead", "--revoke", "net.connect"], &["dead", "stopped"]);
    assert_eq!(row(&agent, "dead")["level"], "stopped");
    refuse(&["restore", "box", "--grant", "net.connect"], &["net.connect"]);
    refuse(&["restore", "box", "--grant", "net.teleport"], &["net.teleport"]);

    let recs = agent.journal();
    let new = &recs[journal_len..];
    assert!(new.iter().all(|r| r["to_level"].is_null()), "a refused request journaled a level change: {new:?}");
    assert!(new.iter().all(|r| r["action"] != "alert"), "a refused request raised an alert: {new:?}");
    assert!(new.iter().all(|r| r["action"] != "degrade"), "a refused degrade was journaled as an action: {new:?}");

    // No allow-list entry was left behind by the refused requests: with
    // net.connect revoked for real, 127.0.0.1:PORT is refused.
    let r = agent.json(&["degrade", "box", "--revoke", "net.connect"]);
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    assert_eq!(r["allow_connect"], json!([]), "{r}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), EPERM, "a refused request left an allow-list entry behind");
    assert_eq!(denials(&agent, "box", "net.connect"), 1);
    agent.json(&["restore", "box", "--to", "normal"]);
    assert_state(&agent, "box", "normal", &[], &[], "restored");
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0);
}

/// net.connect with an allow-list: allowed destinations (a port on a CIDR,
/// an address on any port, the same destination spelled v4-mapped) pass; a
/// neighbour port, a neighbour address, IPv6 loopback and UDP to a
/// neighbour are refused with EPERM; unrelated operations are untouched;
/// `restore --grant` gives everything back and drops the allow-list.
#[test]
fn degrade_net_connect_allow_list_and_restore() {
    let Some(agent) = Agent::start() else { return };
    let (s1, p1) = http_server(&agent, "allowed", "0.0.0.0");
    let (s2, p2) = http_server(&agent, "neighbour", "127.0.0.1");
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    let file = agent.dir.path().join("data.txt");
    std::fs::write(&file, "read me\n").unwrap();

    for (host, srv, port) in [("127.0.0.1", &s1, p1), ("127.0.0.2", &s1, p1), ("127.0.0.1", &s2, p2)] {
        check_curl(srv, &cg, host, port, true, "before degrade");
    }

    let a1 = format!("127.0.0.0/8:{p1}");
    let r = agent.json(&["degrade", "web", "--revoke", "net.connect", "--allow-connect", &a1, "--allow-connect", "127.0.0.3", "--reason", "allow-list drill"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("degrade"), Some("normal")), "{r}");
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    assert_eq!(strs(&r["allow_connect"]), [a1.as_str(), "127.0.0.3"], "{r}");
    assert!(r["time_to_effect_us"].as_u64().is_some_and(|t| t > 0 && t < 1_000_000), "{r}");
    assert_state(&agent, "web", "degrade", &["net.connect"], &[&a1, "127.0.0.3"], "degraded");
    let mut refused = 0u64;

    // Allowed: the port on every address of the prefix, and any port of 127.0.0.3.
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "allowed 127.0.0.0/8:P1");
    check_curl(&s1, &cg, "127.0.0.2", p1, true, "allowed 127.0.0.0/8:P1 (another address in the prefix)");
    check_curl(&s1, &cg, "127.0.0.3", p1, true, "allowed 127.0.0.3 (any port)");
    // 127.0.0.3 on P2: killpath lets it through; nothing listens there
    // (the neighbour server is bound to 127.0.0.1 only): ECONNREFUSED, not EPERM.
    assert_eq!(connect_errno(&cg, "127.0.0.3", p2), ECONNREFUSED, "127.0.0.3 is allowed on any port");
    // The same destination spelled as a v4-mapped IPv6 address is allowed too.
    assert_eq!(connect_errno(&cg, "::ffff:127.0.0.1", p1), 0, "v4-mapped allowed destination");

    // Refused: the neighbour port, neighbour addresses, IPv6, UDP.
    check_curl(&s2, &cg, "127.0.0.1", p2, false, "neighbour port");
    refused += 1;
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM, "neighbour port: EPERM");
    assert_eq!(connect_errno(&cg, "127.0.0.2", p2), EPERM, "neighbour port on another address of the prefix");
    assert_eq!(connect_errno(&cg, "128.0.0.1", p1), EPERM, "allowed port, address just outside 127.0.0.0/8");
    assert_eq!(connect_errno(&cg, "::ffff:127.0.0.1", p2), EPERM, "v4-mapped spelling of a refused destination");
    refused += 4;
    if ipv6_loopback() {
        assert_eq!(connect_errno(&cg, "::1", p1), EPERM, "::1 is not in the IPv4 allow-list");
        refused += 1;
    }
    assert_eq!(udp_errno(&cg, "127.0.0.1", p2), EPERM, "UDP to a neighbour port");
    assert_eq!(udp_errno(&cg, "127.0.0.2", p1), 0, "UDP to an allowed destination");
    refused += 1;
    // Python's errno and message, as the workload sees it.
    let out = in_cgroup(&cg, &[py(), "-c", "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)", &p2.to_string()]);
    assert!(text(&out.stderr).contains("[Errno 1] Operation not permitted"), "refused with EPERM: {}", show(&out));
    refused += 1;

    // Unrelated things still work: files, listening, a process outside.
    let out = in_cgroup(&cg, &["sh", "-c", r#"cat "$1" && echo written > "$1.out" && cat "$1.out""#, "sh", file.to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stdout) == "read me\nwritten\n", "files: {}", show(&out));
    let out = in_cgroup(&cg, &[py(), "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); print('listening')"]);
    assert!(out.status.success(), "listen inside the target: {}", show(&out));
    assert_eq!(connect_errno_outside("127.0.0.1", p2), 0, "outside the target nothing is refused");

    let r = row(&agent, "web");
    assert_eq!(r["denials"]["net.connect"]["total"], refused, "one denial per refused attempt: {r}");
    assert_eq!(r["denials"]["net.connect"]["last_minute"], refused, "{r}");
    let human = text(&agent.kp(&["status", "web"]).stdout);
    assert!(human.contains("DEGRADED: revoked net.connect") && human.contains(&format!("net.connect: {refused}")), "{human}");

    // Restore: everything works again, the level is normal.
    let r = agent.json(&["restore", "web", "--grant", "net.connect", "--reason", "drill over"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("normal"), Some("degrade")), "{r}");
    assert_eq!(r["revoked"], json!([]), "{r}");
    assert_eq!(strs(&r["granted"]), ["net.connect"], "{r}");
    assert_state(&agent, "web", "normal", &[], &[], "after restore --grant");
    check_curl(&s2, &cg, "127.0.0.1", p2, true, "restored: neighbour port");
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "restored: allowed port");
    assert_eq!(connect_errno(&cg, "127.0.0.2", p2), ECONNREFUSED, "restored: a neighbour address is no longer refused by killpath");
    assert_eq!(udp_errno(&cg, "127.0.0.1", p2), 0);
    assert!(!text(&agent.kp(&["status", "web"]).stdout).contains("DEGRADED"));

    // The allow-list went with the grant: revoked again without one, even
    // the formerly allowed destination is refused.
    agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    assert_state(&agent, "web", "degrade", &["net.connect"], &[], "degraded again, no allow-list");
    check_curl(&s1, &cg, "127.0.0.1", p1, false, "the old allow-list is gone");
    assert_eq!(connect_errno(&cg, "127.0.0.3", p2), EPERM, "the old any-port entry is gone");
    let r = agent.json(&["restore", "web", "--to", "normal"]);
    assert_eq!(r["level"], "normal", "{r}");
    assert_state(&agent, "web", "normal", &[], &[], "after restore --to normal");
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "restored --to normal");
    check_curl(&s2, &cg, "127.0.0.1", p2, true, "restored --to normal");

    // Journal: degrade and restore, intent and result, with levels.
    let recs = agent.journal();
    let results: Vec<(String, u64)> = recs
        .iter()
        .filter(|e| e["target"] == "web" && e["phase"] == "result" && (e["action"] == "degrade" || e["action"] == "restore"))
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["to_level"].as_u64().unwrap()))
        .collect();
    assert_eq!(results, [("degrade".into(), 2), ("restore".into(), 0), ("degrade".into(), 2), ("restore".into(), 0)], "{recs:?}");
    let intent = recs.iter().find(|e| e["target"] == "web" && e["phase"] == "intent" && e["action"] == "degrade").unwrap();
    assert_eq!(intent["params"]["reason"], "allow-list drill", "{intent}");
    assert_eq!(intent["params"]["allow_connect"], json!([a1, "127.0.0.3"]), "{intent}");
}

/// Denial counts are exact and sampled events match what the workload
/// attempted: 50 refused connects count 50 and stream denial events naming
/// the pid, comm and destination; 100,000 retries count exactly 100,000
/// more while the events stay within the kernel's rate limit and the
/// journal does not grow with them.
#[test]
fn degrade_denials_counted_exactly_and_events_rate_limited() {
    let Some(agent) = Agent::start() else { return };
    let port = tcp_sink();
    let _t = run_bg(&agent, "retry", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("retry").path().to_owned();
    let cgroup_id = row(&agent, "retry")["cgroup_id"].clone();
    let ev = Events::start(&agent);
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 3);
    assert_eq!(r["errnos"], json!({"0": 3}), "connects work before degrade: {r}");
    assert_eq!(row(&agent, "retry")["denials"], json!({}), "nothing counted before degrade");

    let t_degrade = Instant::now();
    let d = agent.json(&["degrade", "retry", "--revoke", "net.connect", "--reason", "retry drill"]);
    ev.wait(Duration::from_secs(10), "the alert for the degrade step", |e| e.iter().any(|e| e["type"] == "alert" && e["target"] == "retry"));
    let alerts = ev.of("retry", "alert");
    assert_eq!(alerts.len(), 1, "one alert per degrade step: {alerts:?}");
    let a = &alerts[0];
    assert_eq!((a["priority"].as_str(), a["action"].as_str(), a["reason"].as_str(), a["level"].as_str()), (Some("high"), Some("degrade"), Some("retry drill"), Some("degrade")), "{a}");
    assert_eq!(a["revoked"], d["revoked"], "{a}");

    // 50 refused connects.
    let r50 = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 50);
    let burst_end = Instant::now();
    assert_eq!(r50["errnos"], json!({"1": 50}), "every attempt refused with EPERM: {r50}");
    let pid50 = r50["pid"].as_i64().unwrap();
    let r = row(&agent, "retry");
    assert_eq!(r["denials"]["net.connect"]["total"], 50, "exactly 50 denials counted: {r}");
    assert_eq!(r["denials"]["net.connect"]["last_minute"], 50, "{r}");
    assert_eq!(r["denials"].as_object().unwrap().len(), 1, "only net.connect was denied: {r}");
    let of_pid = |pid: i64| -> Vec<Value> { ev.of("retry", "denial").into_iter().filter(|e| e["pid"] == pid).collect() };
    ev.wait(Duration::from_secs(10), "20 denial events of the 50-connect burst", |_| of_pid(pid50).len() >= DENIAL_EVENTS_PER_SEC as usize);
    ev.settle(Duration::from_millis(1500));
    let e50 = of_pid(pid50);
    assert!(e50.len() <= 50, "never more events than denials: {}", e50.len());
    let dest = format!("127.0.0.1:{port}");
    for e in &e50 {
        assert_eq!(e["capability"], "net.connect", "{e}");
        assert_eq!(e["destination"], dest.as_str(), "{e}");
        assert_eq!(e["cgroup_id"], cgroup_id, "{e}");
        assert!(e["comm"].as_str().is_some_and(|c| c.starts_with("python")), "comm names the program: {e}");
    }
    let all_denials = ev.of("retry", "denial");
    assert_eq!(all_denials.len(), e50.len(), "every denial event so far is from the 50-connect workload: {all_denials:?}");
    eprintln!("50 refused connects: {} sampled events", e50.len());

    // A fresh rate window for the retry loop.
    thread::sleep(Duration::from_millis(1200).saturating_sub(burst_end.elapsed()));
    let journal_before = agent.journal().len();
    let t0 = Instant::now();
    let r100k = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 100_000);
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(r100k["errnos"], json!({"1": 100_000}), "every retry refused with EPERM: {r100k}");
    let pid100k = r100k["pid"].as_i64().unwrap();
    let r = row(&agent, "retry");
    assert_eq!(r["denials"]["net.connect"]["total"], 100_050, "exactly 50 + 100,000 denials counted: {r}");
    ev.wait(Duration::from_secs(10), "denial events of the retry loop", |_| !of_pid(pid100k).is_empty());
    ev.settle(Duration::from_millis(2000));
    let e100k = of_pid(pid100k);
    let bound = (DENIAL_EVENTS_PER_SEC as f64 * (elapsed + 2.0)) as usize;
    eprintln!("100,000 refused connects in {elapsed:.2} s: {} sampled events (bound {bound})", e100k.len());
    assert!(e100k.len() <= bound, "events must be rate-limited: {} events for a {elapsed:.2} s loop (bound {bound})", e100k.len());
    for e in &e100k {
        assert_eq!((e["capability"].as_str(), e["destination"].as_str()), (Some("net.connect"), Some(dest.as_str())), "{e}");
    }
    let total_events = ev.of("retry", "denial").len();
    let overall = (DENIAL_EVENTS_PER_SEC as f64 * (t_degrade.elapsed().as_secs_f64() + 2.0)) as usize;
    assert!(total_events <= overall, "{total_events} denial events since the degrade (bound {overall})");
    assert_eq!(total_events, e50.len() + e100k.len(), "no denial events from anyone else");
    assert!(ev.all().iter().all(|e| e["type"] != "lagged"), "the stream never lagged");
    let new = agent.journal().len() - journal_before;
    assert!(new < 10, "denials must not flood the journal: {new} new records");

    // Still counted after restore; nothing more is denied.
    agent.json(&["restore", "retry", "--grant", "net.connect"]);
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", port, 5);
    assert_eq!(r["errnos"], json!({"0": 5}), "{r}");
    assert_eq!(denials(&agent, "retry", "net.connect"), 100_050);
}

/// Every degrade step raises an alert: a high-priority journal record, a
/// line on the event stream, and the operator's hook with the alert as
/// JSON on stdin, all three the same alert. A refused degrade raises none.
#[test]
fn degrade_alert_journal_events_and_hook() {
    let hook_dir = tempfile::tempdir().expect("tempdir");
    let hook_file = hook_dir.path().join("alerts.jsonl");
    let hook = format!("cat >> '{}'", hook_file.display());
    let Some(agent) = Agent::start_with(&["--alert-hook", &hook]) else { return };
    let _t = run_bg(&agent, "alarm", &["sleep", "1000"], 1);
    let ev = Events::start(&agent);
    let hooked = |reason: &str| -> Vec<Value> {
        std::fs::read_to_string(&hook_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("hook got a line that is not JSON ({e}): {l:?}")))
            .filter(|a| a["target"] == "alarm" && a["reason"] == reason)
            .collect()
    };

    let steps: [(&str, &[&str]); 2] = [("drill-42", &[]), ("drill-43", &["--allow-connect", "127.0.0.1:80"])];
    for (reason, extra) in steps {
        let mut args = vec!["degrade", "alarm", "--revoke", "net.connect", "--reason", reason];
        args.extend_from_slice(extra);
        let r = agent.json(&args);
        assert!(
            wait_until(Duration::from_secs(10), || !hooked(reason).is_empty()).is_some(),
            "the alert hook never received the {reason} alert; hook file: {:?}\nagent log:\n{}",
            std::fs::read_to_string(&hook_file),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
        let h = hooked(reason);
        assert_eq!(h.len(), 1, "one hook run per alert: {h:?}");
        let a = &h[0];
        assert_eq!(a["type"], "alert", "{a}");
        assert_eq!(a["priority"], "high", "{a}");
        assert_eq!(a["action"], "degrade", "{a}");
        assert_eq!(a["level"], "degrade", "{a}");
        assert_eq!(a["revoked"], json!(["net.connect"]), "{a}");
        assert_eq!(a["allow_connect"], r["allow_connect"], "{a}");
        assert!(a["message"].as_str().is_some_and(|m| m.contains("alarm") && m.contains("net.connect")), "{a}");
        assert!(a["time_unix_us"].as_u64().is_some_and(|t| t > 0), "{a}");

        // The journal: a high-priority alert record after the degrade result.
        let recs = agent.journal();
        let j: Vec<&Value> = recs.iter().filter(|e| e["action"] == "alert" && e["target"] == "alarm" && e["params"]["reason"] == reason).collect();
        assert_eq!(j.len(), 1, "one journaled alert per step: {j:?}");
        assert_eq!(j[0]["phase"], "event", "{}", j[0]);
        assert_eq!(j[0]["high_priority"], true, "{}", j[0]);
        assert_eq!(&j[0]["params"], a, "the journal and the hook got the same alert");
        assert!(j[0]["seq"].as_u64() > r["journal_seq"].as_u64(), "the alert follows the degrade result: {} vs {r}", j[0]);

        // The event stream: the same alert.
        ev.wait(Duration::from_secs(10), "the alert on the stream", |e| e.iter().any(|e| e["target"] == "alarm" && e["reason"] == reason));
        let s: Vec<Value> = ev.of("alarm", "alert").into_iter().filter(|e| e["reason"] == reason).collect();
        assert_eq!(s, std::slice::from_ref(a), "the stream and the hook got the same alert");
    }
    assert_eq!(hooked("drill-43")[0]["allow_connect"], json!(["127.0.0.1:80"]));

    // A refused degrade raises no alert anywhere.
    let lines = std::fs::read_to_string(&hook_file).unwrap_or_default().lines().count();
    let journal_alerts = agent.journal().iter().filter(|e| e["action"] == "alert").count();
    let stream = ev.all().len();
    assert_fails(&agent, &["degrade", "alarm", "--revoke", "net.teleport", "--reason", "drill-44"], &["net.teleport"]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&hook_file).unwrap_or_default().lines().count(), lines, "no hook run for a refused degrade");
    assert_eq!(agent.journal().iter().filter(|e| e["action"] == "alert").count(), journal_alerts);
    assert_eq!(ev.all().len(), stream, "no event for a refused degrade");
    let v = agent.json(&["journal", "--verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// Degrade follows cgroup membership: the running process, a child it
/// forks afterwards, a program it starts afterwards, a process in a nested
/// cgroup and a fresh process there are all refused; processes outside the
/// target (the test's own cgroup, a sibling cgroup, a process moved out)
/// are not.
#[test]
fn degrade_reaches_children_and_nested_cgroups_only() {
    let Some(agent) = Agent::start() else { return };
    let port = tcp_sink();
    let c = json!({"host": "127.0.0.1", "port": port});
    let mut main = Helper::run(&agent, "fam");
    let tcg = agent.target_cgroup("fam").path().to_owned();
    let deeper = make_cgroup(tcg.join("inner").join("deeper"));
    let sibling = make_cgroup(agent.cgroup_parent.join("not-a-target"));
    let mut nested = Helper::spawn_in(&agent, "nested", deeper.path());
    assert!(crate::stop::cgroup_line(nested.pid).is_some_and(|l| l.ends_with("/fam/inner/deeper")), "the nested helper runs in fam/inner/deeper");
    for (h, ctx) in [(&mut main, "before, target"), (&mut nested, "before, nested")] {
        h.expect("connect", c.clone(), 0, ctx);
        h.expect("fork_connect", c.clone(), 0, ctx);
    }
    assert_eq!(connect_errno(sibling.path(), "127.0.0.1", port), 0);

    agent.json(&["degrade", "fam", "--revoke", "net.connect"]);
    let mut refused = 0;
    main.expect("connect", c.clone(), EPERM, "the target's own process (started before)");
    main.expect("fork_connect", c.clone(), EPERM, "a child forked after the degrade");
    main.expect("spawn_connect", c.clone(), EPERM, "a program started (fork + exec) after the degrade");
    nested.expect("connect", c.clone(), EPERM, "a process in a nested cgroup (started before)");
    nested.expect("fork_connect", c.clone(), EPERM, "its child");
    refused += 5;
    assert_eq!(connect_errno(&tcg.join("inner"), "127.0.0.1", port), EPERM, "a fresh process in fam/inner");
    assert_eq!(connect_errno(deeper.path(), "127.0.0.1", port), EPERM, "a fresh process in fam/inner/deeper");
    refused += 2;
    // Outside the target: untouched.
    assert_eq!(connect_errno_outside("127.0.0.1", port), 0, "the test's own cgroup");
    assert_eq!(connect_errno(sibling.path(), "127.0.0.1", port), 0, "a sibling cgroup under the same parent");
    // A process moved out of the target is no longer degraded.
    sibling.move_pid(nested.pid).unwrap();
    nested.expect("connect", c.clone(), 0, "moved out of the target");
    nested.expect("fork_connect", c.clone(), 0, "moved out of the target, its child");
    assert_eq!(denials(&agent, "fam", "net.connect"), refused, "one denial per refused attempt, nested ones counted for the target");

    agent.json(&["restore", "fam", "--grant", "net.connect"]);
    main.expect("connect", c.clone(), 0, "restored");
    main.expect("fork_connect", c.clone(), 0, "restored");
    main.expect("spawn_connect", c.clone(), 0, "restored");
    assert_eq!(connect_errno(deeper.path(), "127.0.0.1", port), 0, "restored, nested");
    drop(nested);
    drop(main);
    let _ = sibling.remove();
}

/// SIGKILL the agent while a target is degraded: the revocation and its
/// allow-list stay enforced (and counted) without it; the restarted agent
/// shows the revoked capabilities, the allow-list and the denials, and can
/// give them back.
#[test]
fn degrade_survives_agent_sigkill_and_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (p1, p2) = (tcp_sink(), tcp_sink());
    let _t = run_bg(&agent, "hold", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("hold").path().to_owned();
    let allow = format!("127.0.0.1:{p1}");
    agent.json(&["degrade", "hold", "--revoke", "net.connect", "--allow-connect", &allow]);
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM);
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0);

    let pid = agent.pid();
    agent.kill9();
    assert!(!alive(pid), "agent still alive after SIGKILL");
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", p2, 3);
    assert_eq!(r["errnos"], json!({"1": 3}), "still refused with the agent dead: {r}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0, "the allow-list still works with the agent dead");

    agent.spawn();
    assert_state(&agent, "hold", "degrade", &["net.connect"], &[&allow], "after restart");
    assert_eq!(denials(&agent, "hold", "net.connect"), 4, "the denials made while the agent was dead are counted");
    let human = text(&agent.kp(&["status", "hold"]).stdout);
    assert!(human.contains("DEGRADED: revoked net.connect"), "{human}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM, "still enforced after restart");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0);

    agent.json(&["restore", "hold", "--grant", "net.connect"]);
    assert_state(&agent, "hold", "normal", &[], &[], "restored after restart");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), 0);
}

// ---------------------------------------------------------------- tests (VM, BPF LSM)

/// A kernel module file the VM can load and unload (inert library modules).
fn test_module() -> (String, String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_owned();
    for name in ["crc8", "crc7", "crc-itu-t"] {
        let p = format!("/lib/modules/{release}/kernel/lib/{name}.ko");
        if Path::new(&p).exists() {
            return (p, name.replace('-', "_"));
        }
    }
    panic!("no loadable test module under /lib/modules/{release}/kernel/lib");
}

/// Content of a file, for "was it written?" checks.
fn content(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// With BPF LSM, each of the 13 capabilities is refused with EPERM once
/// revoked, works before and after `restore --grant`, and revoking it
/// leaves every other capability working; denials are counted exactly (one
/// per refused operation). `--allow-write` keeps one directory writable,
/// and neither `..`, a symlink, a hard link nor a bind mount leads around
/// it. All revoked at once, the helper (already running) still reads and
/// starts threads, and `restore --to normal` gives everything back.
#[test]
fn lsm_degrade_each_capability() {
    let started = Instant::now();
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    eprintln!("agent ready in {:.1} s", started.elapsed().as_secs_f64());
    let caps = agent.json(&["capabilities"]);
    let list = caps["capabilities"].as_array().unwrap();
    assert_eq!(list.len(), 13, "{caps}");
    for c in list {
        assert_eq!(c["enforceable"], true, "with BPF LSM (and BTF) every capability is enforceable: {c}");
    }
    eprintln!("{}", text(&agent.kp(&["capabilities"]).stdout));

    // What the operations need, all made outside the target.
    let dir = agent.dir.path();
    let tcp = tcp_sink();
    let sock_path = dir.join("ctl.sock");
    let ul = UnixListener::bind(&sock_path).expect("unix listener");
    thread::spawn(move || {
        for c in ul.incoming() {
            drop(c);
        }
    });
    let tracee = spawn_outside(&["sleep", "1000"]);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (module_path, module_name) = test_module();
    let data = dir.join("data.txt");
    std::fs::write(&data, "data\n").unwrap();
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let sp = |n: &str| scratch.join(n).to_str().unwrap().to_owned();
    std::fs::write(sp("existing"), "existing\n").unwrap();
    let fs_ops = |p: &dyn Fn(&str) -> String| -> Vec<(&'static str, Value)> {
        vec![
            ("write", json!({"path": p("existing")})),
            ("create", json!({"path": p("new")})),
            ("mkdir", json!({"path": p("newdir")})),
            ("unlink", json!({"path": p("victim"), "prepare": p("victim")})),
            ("rename", json!({"path": p("existing")})),
            ("chmod", json!({"path": p("existing")})),
            ("truncate", json!({"path": p("existing")})),
            ("link", json!({"path": p("existing"), "to": p("hard")})),
            ("symlink", json!({"to": p("sym")})),
        ]
    };

    // (capability, the operations it governs); each refused operation is one denial.
    let ops: Vec<(&str, Vec<(&str, Value)>)> = vec![
        ("net.connect", vec![("connect", json!({"host": "127.0.0.1", "port": tcp}))]),
        ("net.listen", vec![("listen", json!({}))]),
        ("net.raw", vec![("packet", json!({})), ("rawip", json!({}))]),
        ("net.unix", vec![("unix", json!({"path": sock_path}))]),
        ("fs.write", fs_ops(&sp)),
        ("exec", vec![("exec", json!({}))]),
        ("fork", vec![("fork", json!({}))]),
        ("signal", vec![("signal", json!({"pid": tracee.pid()}))]),
        ("ptrace", vec![("ptrace", json!({"pid": tracee.pid()}))]),
        ("mount", vec![("mount", json!({"dir": mnt}))]),
        ("bpf", vec![("bpf", json!({}))]),
        ("module", vec![("module", json!({"path": module_path, "name": module_name}))]),
        ("setid", vec![("setid", json!({}))]),
    ];
    let names: Vec<&str> = ops.iter().map(|(c, _)| *c).collect();
    assert_eq!(names, CAPS, "every capability is exercised");
    // Operations no capability governs: never refused.
    let unrelated: Vec<(&str, Value)> = vec![
        ("read", json!({"path": data})),
        ("thread", json!({})),
        ("udp", json!({})),
        // Signal 0 (an existence check) and signals inside the target.
        ("signal0", json!({"pid": tracee.pid()})),
        ("signal_self", json!({})),
        // A netlink socket is SOCK_RAW but not raw network access (`ip`,
        // glibc's getaddrinfo use it): not net.raw.
        ("netlink", json!({})),
    ];
    let mut h = Helper::run(&agent, "caps");
    for (_, list) in &ops {
        for (op, args) in list {
            h.expect(op, args.clone(), 0, "before any degrade");
        }
    }
    // Wrong verdicts that should not stop the rest of the test: operations
    // refused although no revoked capability governs them, and writes that
    // got around the allow-list. Asserted empty at the end.
    let mut overreach: Vec<String> = Vec::new();
    let check_unrelated = |h: &mut Helper, ctx: &str, overreach: &mut Vec<String>| {
        for (op, args) in &unrelated {
            let r = h.op(op, args.clone());
            eprintln!("{ctx}: unrelated {op}: errno {} {}", r["errno"], r["detail"].as_str().unwrap_or(""));
            if r["errno"] != 0 {
                overreach.push(format!("{ctx}: {op} refused: {r}"));
            }
        }
    };
    check_unrelated(&mut h, "before any degrade", &mut overreach);

    for (cap, list) in &ops {
        let before = denials(&agent, "caps", cap);
        let r = agent.json(&["degrade", "caps", "--revoke", cap]);
        assert_eq!(strs(&r["revoked"]), [*cap], "{r}");
        assert_state(&agent, "caps", "degrade", &[cap], &[], &format!("{cap} revoked"));
        for (op, args) in list {
            h.expect(op, args.clone(), EPERM, &format!("{cap} revoked"));
        }
        let r = row(&agent, "caps");
        assert_eq!(denials(&agent, "caps", cap) - before, list.len() as u64, "{cap}: one denial per refused operation: {}", r["denials"]);
        // Every other capability is untouched (one operation each: the VM
        // is slow). exec needs a fork first, so it cannot be checked while
        // fork is revoked.
        for (other, olist) in &ops {
            if other == cap || (*cap == "fork" && *other == "exec") {
                continue;
            }
            let (op, args) = &olist[0];
            h.expect(op, args.clone(), 0, &format!("{cap} revoked, {other} untouched"));
        }
        check_unrelated(&mut h, &format!("{cap} revoked"), &mut overreach);
        assert!(alive(h.pid), "a refusal never kills the workload");
        let r = agent.json(&["restore", "caps", "--grant", cap]);
        assert_eq!(r["level"], "normal", "{r}");
        assert_state(&agent, "caps", "normal", &[], &[], &format!("{cap} granted back"));
        for (op, args) in list {
            h.expect(op, args.clone(), 0, &format!("{cap} granted back"));
        }
    }

    // --allow-write: given with `..` in it, resolved to the real directory.
    let allowed = dir.join("allowed");
    let elsewhere = dir.join("elsewhere");
    for d in [&allowed, &elsewhere, &allowed.join("bound")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret = scratch.join("secret");
    std::fs::write(&secret, "secret\n").unwrap();
    std::os::unix::fs::symlink(&secret, allowed.join("to-secret")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, allowed.join("to-elsewhere")).unwrap();
    nix::mount::mount(Some(&elsewhere), &allowed.join("bound"), None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).expect("bind mount");
    let spelled = dir.join("scratch").join("..").join("allowed");
    let real = std::fs::canonicalize(&allowed).unwrap();
    let r = agent.json(&["degrade", "caps", "--revoke", "fs.write", "--allow-write", spelled.to_str().unwrap()]);
    assert_eq!(r["allow_write"], json!([real.to_str().unwrap()]), "the allow-list holds the resolved directory: {r}");
    assert_eq!(row(&agent, "caps")["allow_write"], r["allow_write"]);
    let ap = |n: &str| allowed.join(n).to_str().unwrap().to_owned();
    for (op, args) in fs_ops(&ap) {
        h.expect(op, args, 0, "fs.write revoked, below the allowed directory");
    }
    h.expect("mkdir", json!({"path": ap("sub")}), 0, "allowed: a new subdirectory");
    std::fs::create_dir_all(allowed.join("deep/er")).unwrap();
    h.expect("write", json!({"path": ap("deep/er/file")}), 0, "allowed: deeper below the allowed directory");
    let before = denials(&agent, "caps", "fs.write");
    let escapes: Vec<(&str, Value)> = vec![
        ("write", json!({"path": sp("existing")})),
        ("write", json!({"path": ap("../scratch/existing")})),
        ("create", json!({"path": ap("../scratch/new")})),
        ("write", json!({"path": ap("to-secret")})),
        ("create", json!({"path": ap("to-elsewhere/new")})),
        ("create", json!({"path": ap("bound/new")})),
        ("write", json!({"path": allowed.join("bound").join("..").join("..").join("scratch").join("secret")})),
    ];
    for (op, args) in &escapes {
        h.expect(op, args.clone(), EPERM, &format!("fs.write revoked, escape {args}"));
    }
    assert_eq!(denials(&agent, "caps", "fs.write") - before, escapes.len() as u64, "one denial per refused escape");
    // A hard link of an outside file into the allowed directory must not
    // make the outside file writable.
    let r = h.op("link_write", json!({"path": secret, "to": ap("hard-secret")}));
    eprintln!("hard link escape: {r}");
    if content(&secret) != "secret\n" || r["errno"] == 0 {
        overreach.push(format!(
            "fs.write revoked with --allow-write {}: hard-linking the outside file {} into it and writing through the link succeeded ({r}); the file now reads {:?}",
            real.display(),
            secret.display(),
            content(&secret)
        ));
    }
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing was created in the bind-mounted outside directory");
    nix::mount::umount(&allowed.join("bound")).expect("umount");
    let r = agent.json(&["restore", "caps", "--grant", "fs.write"]);
    assert_eq!(r["level"], "normal", "{r}");
    assert_eq!(row(&agent, "caps")["allow_write"], json!([]), "the write allow-list went with the grant");

    // Everything at once.
    let all = names.join(",");
    let r = agent.json(&["degrade", "caps", "--revoke", &all, "--reason", "everything"]);
    assert_eq!(strs(&r["revoked"]), names, "{r}");
    for (cap, list) in &ops {
        for (op, args) in list {
            h.expect(op, args.clone(), EPERM, &format!("all revoked ({cap})"));
        }
    }
    check_unrelated(&mut h, "all revoked", &mut overreach);
    let human = text(&agent.kp(&["status", "caps"]).stdout);
    assert!(human.contains("DEGRADED: revoked net.connect, net.listen"), "{human}");
    let r = agent.json(&["restore", "caps", "--to", "normal"]);
    assert_eq!(r["level"], "normal", "{r}");
    assert_state(&agent, "caps", "normal", &[], &[], "restored --to normal");
    for (_, list) in &ops {
        for (op, args) in list {
            h.expect(op, args.clone(), 0, "restored --to normal");
        }
    }
    drop(h);
    drop(tracee);
    assert!(overreach.is_empty(), "wrong verdicts:\n{}", overreach.join("\n"));
}

/// A real read-only job (a bash script: builtins only once it runs) keeps
/// running with `fs.write` and `exec` revoked and finishes its work, writing
/// its progress below the one `--allow-write` directory; its exec and its
/// writes elsewhere are refused with EPERM, and counted.
#[test]
fn lsm_degrade_readonly_job() {
    let started = Instant::now();
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    eprintln!("agent ready in {:.1} s", started.elapsed().as_secs_f64());
    let d = agent.dir.path().join("job");
    for sub in ["data", "progress"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let mut expected = 0;
    for i in 0..100 {
        let mut s = String::new();
        for j in 0..20 {
            if (i * 20 + j) % 7 == 0 {
                s.push_str(&format!("line {j} has the needle\n"));
                expected += 1;
            } else {
                s.push_str(&format!("line {j} is hay\n"));
            }
        }
        std::fs::write(d.join("data").join(format!("f{i:03}.txt")), s).unwrap();
    }
    std::fs::write(d.join("notes.txt"), "original\n").unwrap();
    nix::unistd::mkfifo(&d.join("tick"), Mode::from_bits_truncate(0o600)).unwrap();
    let out = d.join("progress").join("out.txt");
    // Waits use `read -t` on a FIFO: no /bin/sleep (exec) needed.
    let script = r#"
D=$1
OUT=$D/progress/out.txt
exec 9<>"$D/tick"
if /bin/true; then echo "exec-before ok" >> "$OUT"; fi
while [ ! -e "$D/go" ]; do read -t 0.05 -u 9 || :; done
if /bin/true 2>>"$OUT"; then echo "exec-after ok" >> "$OUT"; else echo "exec-after refused $?" >> "$OUT"; fi
if { echo changed > "$D/notes.txt"; } 2>>"$OUT"; then echo "write-outside WRITTEN" >> "$OUT"; else echo "write-outside refused" >> "$OUT"; fi
if { echo new > "$D/progress/../new.txt"; } 2>>"$OUT"; then echo "dotdot WRITTEN" >> "$OUT"; else echo "dotdot refused" >> "$OUT"; fi
files=0; matches=0
for f in "$D"/data/*.txt; do
    while IFS= read -r line; do
        case $line in *needle*) matches=$((matches + 1));; esac
    done < "$f"
    files=$((files + 1))
    echo "progress $files" > "$D/progress/current"
done
echo "done files=$files matches=$matches" >> "$OUT"
while [ ! -e "$D/stop" ]; do read -t 0.05 -u 9 || :; done
echo "exiting" >> "$OUT"
"#;
    let mut job = run_bg(&agent, "job", &["bash", "-c", script, "bash", d.to_str().unwrap()], 1);
    let o = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || o().contains("exec-before ok")).is_some(), "the job never started: {:?}", o());
    let ev = Events::start(&agent);

    let progress = d.join("progress");
    let r = agent.json(&["degrade", "job", "--revoke", "fs.write,exec", "--allow-write", progress.to_str().unwrap(), "--reason", "read-only from here"]);
    assert_eq!(strs(&r["revoked"]), ["fs.write", "exec"], "{r}");
    std::fs::write(d.join("go"), "").unwrap();
    let done = format!("done files=100 matches={expected}");
    assert!(wait_until(Duration::from_secs(180), || o().contains("done files=")).is_some(), "the job did not finish its read-only work: {:?}", o());
    let t = o();
    eprintln!("job output:\n{t}");
    assert!(t.contains(&done), "the job's result is complete: want {done:?}: {t:?}");
    assert_eq!(content(&d.join("progress").join("current")), "progress 100\n", "progress written below the allowed directory");
    assert!(t.contains("exec-after refused 126"), "the exec was refused (bash: 126): {t:?}");
    assert!(t.contains("write-outside refused") && t.contains("dotdot refused"), "writes outside the allowed directory refused: {t:?}");
    assert!(t.contains("Operation not permitted"), "with EPERM: {t:?}");
    assert!(!t.contains("WRITTEN") && !t.contains("exec-after ok"), "{t:?}");
    assert_eq!(content(&d.join("notes.txt")), "original\n");
    assert!(!d.join("new.txt").exists());
    assert!(alive(job.pid()), "the job keeps running with fs.write and exec revoked");
    let r = row(&agent, "job");
    assert_eq!(r["denials"]["exec"]["total"], 1, "the one refused exec is counted: {r}");
    assert_eq!(r["denials"]["fs.write"]["total"], 2, "the two refused writes are counted: {r}");
    assert_state(&agent, "job", "degrade", &["fs.write", "exec"], &[], "while the job runs");
    // The sampled denials say who and what: the program for exec, the file for fs.write.
    ev.wait(Duration::from_secs(20), "3 denial events of the job", |_| ev.of("job", "denial").len() >= 3);
    let evs = ev.of("job", "denial");
    eprintln!("job denial events: {evs:?}");
    let find = |cap: &str, what: &str| evs.iter().find(|e| e["capability"] == cap && e["what"] == what).cloned();
    let e = find("exec", "/bin/true").unwrap_or_else(|| panic!("no exec denial naming /bin/true: {evs:?}"));
    assert_eq!(e["comm"], "bash", "{e}");
    for f in ["notes.txt", "new.txt"] {
        let e = find("fs.write", f).unwrap_or_else(|| panic!("no fs.write denial naming {f}: {evs:?}"));
        assert_eq!((e["pid"].as_i64(), e["comm"].as_str()), (Some(job.pid() as i64), Some("bash")), "{e}");
    }
    assert_eq!(evs.len(), 3, "one event per denial: {evs:?}");

    std::fs::write(d.join("stop"), "").unwrap();
    let st = job.0.wait().expect("wait job");
    assert!(st.success(), "the job exited cleanly: {st}; output {:?}", o());
    assert!(o().contains("exiting"));
    agent.json(&["restore", "job", "--to", "normal"]);
    let cg = agent.target_cgroup("job").path().to_owned();
    let r = in_cgroup(&cg, &["sh", "-c", r#"/bin/true && echo restored > "$0/notes.txt""#, d.to_str().unwrap()]);
    assert!(r.status.success(), "exec and writes work again after restore: {}", show(&r));
    assert_eq!(content(&d.join("notes.txt")), "restored\n");
}
