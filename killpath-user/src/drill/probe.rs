//! `killpath drill-probe` (internal): joins a target's cgroup and tries one
//! operation per capability, reporting whether the kernel refused it.
//!
//! It is started outside the target and moves itself in (writing its own
//! pid to `cgroup.procs`) after its exec, so it can probe even a target
//! with `exec` revoked. Each operation is harmless if it is allowed: a
//! connect to the drill's own listener, a file in a scratch directory, a
//! tmpfs mounted and unmounted, an ELF-less module image the kernel
//! rejects after the LSM check, setuid to the uid it already has, SIGWINCH
//! (ignored) to the drill's own outside process.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    degrade::Capability,
    error::{Error, Result},
};

const EPERM: i32 = libc::EPERM;
const EACCES: i32 = libc::EACCES;

/// How an attempt went.
fn verdict(cap: &str, r: std::result::Result<(), i32>) -> Value {
    match r {
        Ok(()) => json!({"cap": cap, "result": "allowed"}),
        Err(e) if e == EPERM || e == EACCES => json!({"cap": cap, "result": "denied", "errno": e}),
        Err(e) => {
            json!({"cap": cap, "result": "error", "errno": e, "detail": std::io::Error::from_raw_os_error(e).to_string()})
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn io_err(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Runs the probes; one JSON row per capability.
///
/// `exec` is probed last, by this process exec'ing itself: a probe that
/// forked first could not tell a refused exec from a refused fork. If the
/// exec succeeds, the new image (`continuation`: the rows so far) reports
/// exec allowed.
pub fn run(cgroup: &Path, caps: &[String], connect: Option<SocketAddr>, outside_pid: Option<i32>, scratch: &Path, continuation: Option<&str>) -> Result<Value> {
    if let Some(rows) = continuation {
        let mut rows: Vec<Value> = serde_json::from_str(rows).map_err(|e| Error::InvalidRequest(format!("bad continuation: {e}")))?;
        rows.push(json!({"cap": "exec", "result": "allowed"}));
        return Ok(json!({"pid": std::process::id(), "probes": rows}));
    }
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).map_err(Error::cgroup(cgroup))?;
    let mut rows: Vec<Value> = caps.iter().filter(|c| *c != "exec").map(|c| probe(c, connect, outside_pid, scratch)).collect();
    if caps.iter().any(|c| c == "exec") {
        let refused = exec_self(cgroup, scratch, &rows);
        rows.push(verdict("exec", Err(refused)));
    }
    Ok(json!({"pid": std::process::id(), "probes": rows}))
}

/// Execs this binary as `drill-probe --exec-continuation ROWS`; returns
/// only if the exec failed, with its errno.
fn exec_self(cgroup: &Path, scratch: &Path, rows: &[Value]) -> i32 {
    use std::ffi::CString;
    let arg = |s: &std::ffi::OsStr| CString::new(s.as_encoded_bytes()).ok();
    let rows = Value::Array(rows.to_vec()).to_string();
    let argv: Option<Vec<CString>> = [
        arg("killpath".as_ref()),
        arg("drill-probe".as_ref()),
        arg("--cgroup".as_ref()),
        arg(cgroup.as_os_str()),
        arg("--scratch".as_ref()),
        arg(scratch.as_os_str()),
        arg("--exec-continuation".as_ref()),
        arg(rows.as_ref()),
    ]
    .into_iter()
    .collect();
    let (Some(argv), Ok(exe)) = (argv, CString::new("/proc/self/exe")) else {
        return libc::EINVAL;
    };
    match nix::unistd::execv(&exe, &argv) {
        Err(e) => e as i32,
        Ok(never) => match never {},
    }
}

fn probe(cap: &str, connect: Option<SocketAddr>, outside_pid: Option<i32>, scratch: &Path) -> Value {
    let Ok(c) = Capability::parse(cap) else {
        return json!({"cap": cap, "result": "not-checked", "detail": "unknown capability"});
    };
    // One arm per capability: a new one does not compile until it has a probe.
    let r: std::result::Result<(), i32> = match c {
        Capability::NetConnect => match connect {
            Some(a) => TcpStream::connect_timeout(&a, Duration::from_secs(2)).map(drop).map_err(io_err),
            None => return json!({"cap": cap, "result": "not-checked", "detail": "no listener given"}),
        },
        Capability::NetListen => TcpListener::bind("127.0.0.1:0").map(drop).map_err(io_err),
        // A raw IP socket: refused on every kernel that enforces net.raw
        // (packet sockets only where BPF LSM runs).
        Capability::NetRaw => raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        Capability::NetUnix => raw_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        Capability::FsWrite => std::fs::write(scratch.join("drill-fs-write"), b"x").map_err(io_err),
        // Probed last, by exec'ing this binary (see `run`).
        Capability::Exec => return json!({"cap": cap, "result": "not-checked", "detail": "exec is probed by exec'ing the probe itself"}),
        Capability::Fork => fork_and_reap(),
        Capability::Signal => match outside_pid {
            // SIGWINCH: a real signal (the hook sees it), ignored by default
            // by the drill's outside `sleep`.
            Some(p) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGWINCH).map_err(|e| e as i32),
            None => return json!({"cap": cap, "result": "not-checked", "detail": "no outside process given"}),
        },
        Capability::Ptrace => match outside_pid {
            // PTRACE_SEIZE does not stop the tracee; the attachment ends
            // when this probe exits.
            Some(p) => nix::sys::ptrace::seize(nix::unistd::Pid::from_raw(p), nix::sys::ptrace::Options::empty()).map_err(|e| e as i32),
            None => return json!({"cap": cap, "result": "not-checked", "detail": "no outside process given"}),
        },
        Capability::Mount => mount_tmpfs(scratch),
        Capability::Bpf => bpf_map_create(),
        Capability::Module => init_module_garbage(),
        Capability::Setid => nix::unistd::setuid(nix::unistd::getuid()).map_err(|e| e as i32),
    };
    verdict(cap, r)
}

fn raw_socket(family: i32, ty: i32, protocol: i32) -> std::result::Result<(), i32> {
    // SAFETY: plain socket(2); the fd is closed right away.
    let fd = unsafe { libc::socket(family, ty, protocol) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

fn fork_and_reap() -> std::result::Result<(), i32> {
    // SAFETY: the child only calls _exit.
    match unsafe { libc::fork() } {
        -1 => Err(errno()),
        0 => {
            // SAFETY: async-signal-safe exit of the child.
            unsafe { libc::_exit(0) }
        }
        pid => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Ok(())
        }
    }
}

fn mount_tmpfs(scratch: &Path) -> std::result::Result<(), i32> {
    // Made by the drill outside the target: with fs.write revoked this
    // probe could not create it.
    let dir = scratch.join("drill-mount");
    nix::mount::mount(Some("none"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).map_err(|e| e as i32)?;
    let _ = nix::mount::umount(&dir);
    Ok(())
}

fn bpf_map_create() -> std::result::Result<(), i32> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries (u32 each), the rest zero.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(2) with a zeroed, correctly sized attr; the fd is closed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn init_module_garbage() -> std::result::Result<(), i32> {
    // 64 zero bytes: long enough to reach security_kernel_load_data(),
    // which refuses when `module` is revoked; otherwise the ELF check
    // rejects it (ENOEXEC) and nothing is loaded.
    let image = [0u8; 64];
    let params = c"";
    // SAFETY: init_module(2) on a local buffer.
    let r = unsafe { libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len(), params.as_ptr()) };
    match (r, errno()) {
        (0, _) => Ok(()),
        (_, e) if e == EPERM || e == EACCES => Err(e),
        // Anything else (ENOEXEC, EINVAL): the kernel got past the LSM check.
        _ => Ok(()),
    }
}
