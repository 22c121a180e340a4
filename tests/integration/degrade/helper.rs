//! A long-lived python helper inside a target that performs one operation
//! per request, so operations can be tried after `exec` or `fork` is
//! revoked.
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::stat::Mode;
use serde_json::{json, Value};

use crate::{
    harness::{alive, wait_until, Agent},
    support::process::{py, run_bg, Reaped},
};

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

pub(super) struct Helper {
    name: String,
    fifo: PathBuf,
    out: PathBuf,
    next: u64,
    pub(super) pid: i32,
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
    pub(super) fn run(agent: &Agent, name: &str) -> Helper {
        let (fifo, out) = Self::paths(agent, name);
        let proc = run_bg(agent, name, &[py(), "-c", HELPER_PY, fifo.to_str().unwrap(), out.to_str().unwrap()], 1);
        Self::ready(name, fifo, out, proc)
    }

    /// Starts the helper inside an existing cgroup `cg`.
    pub(super) fn spawn_in(agent: &Agent, name: &str, cg: &Path) -> Helper {
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
    pub(super) fn op(&mut self, op: &str, args: Value) -> Value {
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
    pub(super) fn expect(&mut self, op: &str, args: Value, want: i64, ctx: &str) {
        let r = self.op(op, args);
        assert_eq!(r["errno"], want, "{ctx}: {op} in helper {} must end with errno {want}: {r}", self.name);
        eprintln!("{ctx}: {op}: errno {} {}", r["errno"], r["detail"].as_str().unwrap_or(""));
    }
}
