//! Tests: 32-bit syscalls (`int 0x80` from a 64-bit process, which needs
//! no 32-bit program or library) are charged to their class like the
//! x86_64 ones. Without it they were a side door out of a class ceiling:
//! sys_exit looked their i386 numbers up in the x86_64 table (write is 4,
//! x86_64's stat) and fexit watched only the `__x64_sys_*` functions.
//!
//! Judged from outside the target: bytes the writer appended to a file,
//! datagrams a receiver outside every target counted.
use std::{path::Path, time::Duration};

use crate::{
    class_hooks::{hook_of, number_in, rate, size_of, throttle, udp_backlog, within, RECEIVER},
    harness::{alive, wait_until, Agent},
    support::{
        net::Server,
        process::{py, run_bg},
    },
};

/// The workload: `write PATH` or `sendto PORT`, each call through int 0x80.
const INT80: &str = include_str!("int80.py");

/// An fs-write ceiling holds for a writer that writes through int 0x80.
/// Returns the hook the class was charged at.
pub(crate) fn fs_write_ceiling_holds(agent: &Agent, dir: &Path) -> String {
    let file = dir.join("written32");
    let w = run_bg(agent, "writer32", &[py(), "-c", INT80, "write", &file.display().to_string()], 1);
    let count = || size_of(&file);
    wait_until(Duration::from_secs(30), || count() > 1000).expect("the int 0x80 writer never wrote");
    let free = rate(count, Duration::from_secs(1));
    assert!(free > 1_000.0, "the unthrottled int 0x80 writer is too slow to show a ceiling: {free:.0}/s");
    let r = throttle(agent, &["writer32", "--syscall-class", "fs-write=100/s"]);
    let hook = hook_of(&r, "fs-write")["hook"].as_str().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(1000));
    let measured = rate(count, Duration::from_secs(5));
    eprintln!("fs-write=100/s, writes through int 0x80 at [{hook}]: {measured:.1}/s from the file size (unthrottled {free:.0}/s)");
    assert!(within(measured, 100.0, 0.15), "fs-write=100/s with int 0x80 writes: measured {measured:.1}/s");
    assert!(alive(w.pid()), "the paced writer died");
    agent.json(&["release", "writer32"]);
    hook
}

/// A net ceiling holds for a sender that sends through int 0x80
/// socketcall(SYS_SENDTO), the entry older 32-bit C libraries use for
/// every socket call. Returns the hook the class was charged at.
pub(crate) fn net_ceiling_holds(agent: &Agent, dir: &Path) -> String {
    let count_file = dir.join("received32");
    let mut recv = Server::start(dir, "udp-recv", &[py(), "-c", RECEIVER, &count_file.display().to_string()]);
    let port = recv.port();
    let received = || number_in(&count_file);
    let w = run_bg(agent, "sender32", &[py(), "-c", INT80, "sendto", &port.to_string()], 1);
    wait_until(Duration::from_secs(20), || received() > 1000).unwrap_or_else(|| panic!("no datagrams: {}", recv.describe()));
    let free = rate(received, Duration::from_secs(1));
    assert!(free > 1_000.0, "the unthrottled int 0x80 sender is too slow to show a ceiling: {free:.0}/s");
    let r = throttle(agent, &["sender32", "--syscall-class", "net=200/s"]);
    let hook = hook_of(&r, "net")["hook"].as_str().unwrap_or_default().to_owned();
    wait_until(Duration::from_secs(20), || udp_backlog(port) == 0).expect("the receiver never caught up");
    std::thread::sleep(Duration::from_millis(500));
    let measured = rate(received, Duration::from_secs(4));
    eprintln!("net=200/s, socketcall(sendto) through int 0x80 at [{hook}]: the receiver counted {measured:.1}/s (unthrottled {free:.0}/s)");
    assert!(measured <= 1.10 * 200.0, "net=200/s with int 0x80 sends: the receiver counted {measured:.1}/s, over the ceiling");
    assert!(measured >= 0.05 * 200.0, "net=200/s with int 0x80 sends: the receiver counted {measured:.1}/s, starved");
    assert!(alive(w.pid()), "the paced sender died");
    agent.json(&["release", "sender32"]);
    hook
}

/// On this host: fs-write is charged at sys_exit (no fexit), net at the
/// socket tracepoints. In the VM, where both are at fexit, the same checks
/// run in `class_hooks::lsm_vm_fs_write_ceiling_at_fexit` (one agent and
/// one load of the fexit programs for both: loading them takes minutes
/// under emulation).
#[test]
fn int80_syscalls_cannot_escape_class_ceilings() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    fs_write_ceiling_holds(&agent, dir.path());
    net_ceiling_holds(&agent, dir.path());
}
