//! Tests: which hook charges each syscall class (issue 14, the bystander
//! tax). A class with a hook of its own (net, fork, exec; fs-write where
//! fexit loads) is paced there, and raw_tracepoint/sys_exit, which puts
//! every task on the host on the syscall-tracing slow path, is attached
//! only for `all` and for classes without one.
//!
//! Judged from outside the target: datagrams counted by a receiver outside
//! it, bytes appended to a file (one per fork/exec) read by the test, and
//! the kernel's own list of bpf links (bpftool) for this agent's sys_exit
//! program.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    harness::{alive, test_env, wait_until, Agent},
    support::{
        net::Server,
        process::{py, run_bg},
    },
};

/// Counts UDP datagrams on 127.0.0.1 (outside every target) into a file:
/// at most every 10 ms while they come, and after 50 ms without one (so
/// the file is exact once the sender is quiet).
pub(crate) const RECEIVER: &str = "import os, socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\ns.bind(('127.0.0.1', 0))\ns.settimeout(0.05)\n\
                        print('port', s.getsockname()[1], flush=True)\nn = 0\nlast = 0.0\nwhile True:\n    try:\n        s.recv(64)\n        n += 1\n\
                        \x20   except socket.timeout:\n        last = 0.0\n    now = time.time()\n    if now - last > 0.01:\n\
                        \x20       open(sys.argv[1] + '.tmp', 'w').write(str(n))\n        os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n        last = now\n";

/// Waits for `go`, then sends exactly argv[2] datagrams to 127.0.0.1:argv[1]
/// on a connected UDP socket, and idles.
const SEND_N: &str = "import os, socket, sys, time\nwhile not os.path.exists(sys.argv[3]):\n    time.sleep(0.05)\n\
                      s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('127.0.0.1', int(sys.argv[1])))\n\
                      for i in range(int(sys.argv[2])):\n    s.send(b'x')\ntime.sleep(300)\n";

/// Datagrams to 127.0.0.1:argv[1] in a tight loop, on a connected socket
/// (send(2): no address, so no cgroup sock_addr hook sees it).
const SEND_LOOP: &str = "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('127.0.0.1', int(sys.argv[1])))\n\
                         while True:\n    s.send(b'x')\n";

/// Bytes queued on the UDP socket bound to 127.0.0.1:`port` (rx_queue in
/// /proc/net/udp): datagrams sent but not yet read by the receiver.
pub(crate) fn udp_backlog(port: u16) -> u64 {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())).then(|| f.get(4).and_then(|q| q.split(':').nth(1)).and_then(|rx| u64::from_str_radix(rx, 16).ok()))?
        })
        .sum()
}

pub(crate) fn number_in(file: &Path) -> u64 {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0)
}

pub(crate) fn size_of(file: &Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

/// Events per second of `count` over `window`.
pub(crate) fn rate(count: impl Fn() -> u64, window: Duration) -> f64 {
    let a = count();
    let t = Instant::now();
    std::thread::sleep(window);
    (count() - a) as f64 / t.elapsed().as_secs_f64()
}

pub(crate) fn within(measured: f64, ceiling: f64, tol: f64) -> bool {
    (measured - ceiling).abs() <= tol * ceiling
}

pub(crate) fn throttle(agent: &Agent, args: &[&str]) -> Value {
    let mut a = vec!["throttle"];
    a.extend_from_slice(args);
    agent.json(&a)
}

/// This agent's pin generation.
fn generation(agent: &Agent) -> PathBuf {
    std::fs::read_dir(&agent.pin_dir).expect("pin dir").flatten().map(|e| e.path()).find(|p| p.join("progs").is_dir()).expect("a pin generation")
}

/// Whether the kernel holds a link of this agent's sys_exit throttle
/// program (by program id, so other agents on the host do not count).
pub(crate) fn sys_exit_linked(agent: &Agent) -> bool {
    let prog = generation(agent).join("progs").join("kp_throttle_sys_exit");
    let out = Command::new("bpftool").args(["-j", "prog", "show", "pinned"]).arg(&prog).output().expect("bpftool");
    assert!(out.status.success(), "bpftool prog show {}: {}", prog.display(), String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<Value>(&out.stdout).expect("bpftool JSON")["id"].as_u64().expect("prog id");
    let out = Command::new("bpftool").args(["-j", "link", "show"]).output().expect("bpftool");
    assert!(out.status.success(), "bpftool link show: {}", String::from_utf8_lossy(&out.stderr));
    let links: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    links.as_array().expect("link list").iter().any(|l| l["prog_id"].as_u64() == Some(id))
}

pub(crate) fn hook_of<'a>(answer: &'a Value, class: &str) -> &'a Value {
    answer["class_hooks"].as_array().and_then(|a| a.iter().find(|h| h["class"] == class)).unwrap_or_else(|| panic!("no {class} hook in {answer}"))
}

/// With only a `net` ceiling, the kernel holds no sys_exit link of this
/// agent: the class is charged at its own hooks, and the datagrams a
/// receiver outside counts still settle at the ceiling (sends on a
/// connected socket, which the cgroup sock_addr hooks never see). An
/// `all` ceiling then attaches sys_exit, and lifting every ceiling
/// detaches it again.
#[test]
fn class_hooks_net_ceiling_attaches_no_sys_exit() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let count_file = dir.path().join("received");
    let mut recv = Server::start(dir.path(), "udp-recv", &[py(), "-c", RECEIVER, &count_file.display().to_string()]);
    let port = recv.port().to_string();
    let received = || number_in(&count_file);
    let w = run_bg(&agent, "sender", &[py(), "-c", SEND_LOOP, &port], 1);
    wait_until(Duration::from_secs(20), || received() > 1000).unwrap_or_else(|| panic!("no datagrams: {}", recv.describe()));
    let free = rate(received, Duration::from_secs(1));
    assert!(free > 2_000.0, "the unthrottled sender is too slow to show a ceiling: {free:.0}/s");
    assert!(!sys_exit_linked(&agent), "sys_exit linked with no ceiling at all");
    // `probe` names the hook of every class here and its cost to the host.
    let p = agent.json(&["probe"]);
    let rows = p["syscall_class_hooks"].as_array().unwrap_or_else(|| panic!("no syscall_class_hooks in probe: {p}"));
    assert_eq!(rows.len(), 5, "{p}");
    let all = rows.iter().find(|r| r["class"] == "all").expect("all");
    assert_eq!(all["hook"], "raw_tracepoint sys_exit", "{all}");
    assert!(all["host_cost"].as_str().is_some_and(|c| c.contains("every syscall")), "{all}");
    assert!(p["program_types"].as_array().is_some_and(|t| t.iter().any(|t| t["program_type"] == "tracing")), "{p}");

    let ceiling = 200.0;
    let r = throttle(&agent, &["sender", "--syscall-class", "net=200/s"]);
    eprintln!("net hook: {}", hook_of(&r, "net"));
    assert_eq!(r["syscall_hook_attached"], false, "{r}");
    assert!(!sys_exit_linked(&agent), "a net ceiling attached sys_exit: {r}");
    assert_ne!(hook_of(&r, "net")["hook"], "raw_tracepoint sys_exit", "{r}");
    // The receiver first drains what the unthrottled sender queued.
    let p: u16 = port.parse().expect("port");
    wait_until(Duration::from_secs(20), || udp_backlog(p) == 0).expect("the receiver never caught up");
    std::thread::sleep(Duration::from_millis(500));
    let measured = rate(received, Duration::from_secs(4));
    eprintln!("net=200/s on send(2): the receiver counted {measured:.1}/s (unthrottled {free:.0}/s)");
    // The ceiling holds. Below it is the pacer's accuracy (freeze, thaw,
    // SIGCONT; issue 14's throttle work): measured 199.5/s in one run and
    // 26.2/s in another on the shared machine, so only starvation to
    // nothing fails here.
    assert!(measured <= 1.10 * ceiling, "net=200/s: the receiver counted {measured:.1}/s, over the ceiling");
    assert!(measured >= 0.05 * ceiling, "net=200/s: the receiver counted {measured:.1}/s, starved");
    assert!(alive(w.pid()), "the paced sender died");
    // Each datagram charged exactly once at the socket hook: a second
    // target sends exactly 300 under a ceiling it never reaches; once the
    // receiver outside counted all 300, its bucket must show 301 charges
    // (the 300 sends and the UDP connect, charged at the cgroup hook).
    let go = dir.path().join("go");
    let file2 = dir.path().join("received2");
    let mut recv2 = Server::start(dir.path(), "udp-recv2", &[py(), "-c", RECEIVER, &file2.display().to_string()]);
    let port2 = recv2.port().to_string();
    let received = || number_in(&file2);
    let _n = run_bg(&agent, "counted", &[py(), "-c", SEND_N, &port2, "300", &go.display().to_string()], 1);
    throttle(&agent, &["counted", "--syscall-class", "net=100000/s"]);
    let r0 = received();
    std::fs::write(&go, "").expect("go");
    wait_until(Duration::from_secs(20), || received() >= r0 + 300).unwrap_or_else(|| panic!("the receiver got {} of 300", received() - r0));
    std::thread::sleep(Duration::from_millis(200));
    let row = crate::support::status::target_row(&agent, "counted").map(|r| r["throttle"].clone()).unwrap_or_default();
    let net = row["buckets"].as_array().and_then(|b| b.iter().find(|b| b["class"] == "net")).cloned().unwrap_or_default();
    eprintln!("300 datagrams received outside; the net bucket charged {}", net["passed"]);
    assert_eq!(received() - r0, 300, "the receiver got more than the 300 sent (another sender?)");
    assert_eq!(net["passed"], 301, "one charge per send plus the UDP connect: {row}");
    agent.json(&["release", "counted"]);
    let received = || number_in(&count_file);

    // `all` needs sys_exit: attached now, and gone once nothing is throttled.
    let r = throttle(&agent, &["sender", "--syscalls", "100000/s"]);
    assert_eq!(r["syscall_hook_attached"], true, "{r}");
    assert!(sys_exit_linked(&agent), "an all ceiling without sys_exit: {r}");
    assert_eq!(hook_of(&r, "all")["hook"], "raw_tracepoint sys_exit", "{r}");
    agent.json(&["restore", "sender", "--to", "normal"]);
    // Detached by the agent's periodic check once unneeded for 1 s (re-attaching
    // at once would wait for an RCU grace period in the kernel).
    wait_until(Duration::from_secs(3), || !sys_exit_linked(&agent)).expect("sys_exit still linked 3 s after nothing is throttled");
    let after = rate(received, Duration::from_secs(1));
    assert!(after > 5.0 * ceiling, "restore did not lift the ceiling: {after:.0}/s");
}

/// One fork and one exec per iteration (the outer shell forks, the child
/// execs sh), each iteration appending one byte to a file the test reads.
fn fork_exec_loop(file: &Path) -> String {
    format!("while :; do sh -c 'printf x >> {0}'; done", file.display())
}

/// A fork ceiling paces at sched_process_fork and an exec ceiling at
/// sched_process_exec: the bytes appended by a fork+exec loop grow at no
/// more than the ceiling (counted by the test from the file's size), with
/// no sys_exit link on the host.
#[test]
fn class_hooks_fork_and_exec_ceilings_pace_without_sys_exit() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("iterations");
    let w = run_bg(&agent, "forker", &["sh", "-c", &fork_exec_loop(&file)], 1);
    let count = || size_of(&file);
    wait_until(Duration::from_secs(20), || count() > 50).expect("the loop never ran");
    let free = rate(count, Duration::from_secs(1));
    assert!(free > 150.0, "the unthrottled fork+exec loop is too slow to show a ceiling: {free:.0}/s");
    let ceiling = 50.0;
    for (class, hook) in [("exec", "sched_process_exec"), ("fork", "sched_process_fork")] {
        let r = throttle(&agent, &["forker", "--syscall-class", &format!("{class}=50/s")]);
        let h = hook_of(&r, class);
        eprintln!("{class} hook: {h}");
        assert!(h["hook"].as_str().is_some_and(|s| s.contains(hook)), "{r}");
        assert_eq!(r["syscall_hook_attached"], false, "{r}");
        assert!(!sys_exit_linked(&agent), "a {class} ceiling attached sys_exit");
        std::thread::sleep(Duration::from_millis(500));
        let measured = rate(count, Duration::from_secs(4));
        eprintln!("{class}=50/s: {measured:.1} fork+exec/s counted from the file (unthrottled {free:.0}/s)");
        // The ceiling holds (the upper bound is this test's point); the
        // lower bound only catches a hook that starves the loop: on this
        // shared 2-core machine the pacer's per-pause overhead (freeze,
        // thaw, SIGCONT, about two operations per pause at a burst of one)
        // measured 27.7/s in one loaded run and 47-48/s in quiet ones.
        assert!(measured <= 1.15 * ceiling, "{class}=50/s: measured {measured:.1}/s, over the ceiling");
        assert!(measured >= 0.5 * ceiling, "{class}=50/s: measured {measured:.1}/s, starved");
        assert!(alive(w.pid()), "the paced loop died");
        agent.json(&["restore", "forker", "--to", "normal"]);
        let after = rate(count, Duration::from_secs(1));
        assert!(after > 2.0 * ceiling, "restore did not lift the {class} ceiling: {after:.0}/s");
    }
}

/// VM only (the host refuses tracing programs; the VM kernel has BPF
/// trampolines): an fs-write ceiling is charged at fexit of the write
/// syscalls, sys_exit stays detached, and the bytes a write loop appends
/// grow at the ceiling; then the same with 32-bit syscalls (int 0x80),
/// fs-write and net. Named `lsm_` because that is the VM tier.
#[test]
fn lsm_vm_fs_write_ceiling_at_fexit() {
    let Some(agent) = Agent::start() else { return };
    let p = agent.json(&["probe"]);
    let tracing = p["program_types"].as_array().and_then(|t| t.iter().find(|t| t["program_type"] == "tracing")).cloned().unwrap_or(Value::Null);
    eprintln!("probe tracing: {tracing} (env {:?})", test_env());
    assert_eq!(tracing["available"], true, "fexit should load on the VM kernel: {tracing}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("written");
    let writer = format!("import os\nfd = os.open('{}', os.O_WRONLY | os.O_CREAT | os.O_APPEND)\nwhile True:\n    os.write(fd, b'x')\n", file.display());
    let w = run_bg(&agent, "writer", &[py(), "-c", &writer], 1);
    let count = || size_of(&file);
    wait_until(Duration::from_secs(30), || count() > 1000).expect("the writer never wrote");
    let free = rate(count, Duration::from_secs(1));
    assert!(free > 1_000.0, "the unthrottled writer is too slow to show a ceiling: {free:.0}/s");
    let r = throttle(&agent, &["writer", "--syscall-class", "fs-write=100/s"]);
    eprintln!("fs-write hook: {}", hook_of(&r, "fs-write"));
    assert!(hook_of(&r, "fs-write")["hook"].as_str().is_some_and(|s| s.starts_with("fexit")), "{r}");
    assert_eq!(r["syscall_hook_attached"], false, "{r}");
    assert!(!sys_exit_linked(&agent), "an fs-write ceiling attached sys_exit where fexit loads");
    std::thread::sleep(Duration::from_millis(1000));
    let measured = rate(count, Duration::from_secs(5));
    eprintln!("fs-write=100/s at fexit: {measured:.1} writes/s counted from the file size (unthrottled {free:.0}/s)");
    assert!(within(measured, 100.0, 0.15), "fs-write=100/s: measured {measured:.1}/s");
    assert!(alive(w.pid()), "the paced writer died");
    // 32-bit syscalls (int 0x80) at the fexit programs on the __ia32_*
    // entries, both classes, still without sys_exit.
    let fs = crate::int80::fs_write_ceiling_holds(&agent, dir.path());
    let net = crate::int80::net_ceiling_holds(&agent, dir.path());
    assert!(fs.starts_with("fexit") && net.starts_with("fexit"), "int 0x80: fs-write at [{fs}], net at [{net}]: fexit expected");
    assert!(!sys_exit_linked(&agent), "fexit ceilings attached sys_exit");
}
