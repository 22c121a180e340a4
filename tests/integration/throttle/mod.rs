//! Tests: throttle (level 1). `killpath throttle NAME ...` caps a running
//! target's syscalls (per class), egress bytes/packets and live tasks;
//! running it again dials the ceilings live; `restore --to normal` lifts
//! them. With `--netdev` the egress ceiling also polices a container's veth
//! at TC.
//!
//! Rates are measured from outside the target, never reported by the
//! workload: read syscalls from /proc/PID/io (`syscr`), connections from
//! a server's accept count, TCP bytes from the iperf3 server's own JSON
//! report, tasks from the cgroup's task list.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

mod attacks;
mod pid_reuse;
mod starvation;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        net::{free_tcp_port, Server},
        process::{py, run_bg, show, syscall_rate, syscr, text},
        status::target_row,
        veth::Veth,
    },
};

/// A tight loop of one cheap syscall: read(2) of 0 bytes from /dev/zero.
/// Every syscall it makes in the loop is a read, which the kernel counts
/// in /proc/PID/io `syscr` — readable from outside the target.
pub(super) const READ_LOOP: &str = "import os\nfd = os.open('/dev/zero', os.O_RDONLY)\nwhile True:\n    os.read(fd, 0)\n";

/// Waits (up to 30 s) until the workload wrote `n` numbers to `path`
/// (it may be seen created but still empty); the text and the numbers.
fn numbers(path: &str, n: usize) -> (String, Vec<u64>) {
    let mut got = (String::new(), Vec::new());
    wait_until(Duration::from_secs(30), || {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        let v: Vec<u64> = t.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let done = v.len() == n;
        got = (t, v);
        done
    })
    .unwrap_or_else(|| panic!("{path} never held {n} numbers: {:?}", got.0));
    got
}

fn within(measured: f64, ceiling: f64, tol: f64) -> bool {
    (measured - ceiling).abs() <= ceiling * tol
}

fn throttle(agent: &Agent, args: &[&str]) -> Value {
    let mut a = vec!["throttle"];
    a.extend_from_slice(args);
    agent.json(&a)
}

fn throttle_row(agent: &Agent, name: &str) -> Value {
    target_row(agent, name).map(|r| r["throttle"].clone()).unwrap_or(Value::Null)
}

fn bucket<'a>(row: &'a Value, class: &str) -> &'a Value {
    row["buckets"].as_array().and_then(|b| b.iter().find(|b| b["class"] == class)).unwrap_or_else(|| panic!("no {class} bucket in {row}"))
}

/// Ceiling of 100, 1,000 and 10,000 syscalls/s on a tight syscall loop:
/// the loop runs at the ceiling ±10% (measured from outside), keeps
/// running (pace never fails a call), and a lowered ceiling takes effect
/// within a measured time. Lifting it gives the full rate back and
/// detaches the sys_exit hook.
#[test]
fn throttle_syscalls_pace_at_the_ceiling() {
    let Some(agent) = Agent::start() else { return };
    let w = run_bg(&agent, "loop", &[py(), "-c", READ_LOOP], 1);
    let pid = w.pid();
    let free = syscall_rate(pid, Duration::from_secs(1));
    assert!(free > 50_000.0, "the unthrottled loop is too slow to show a ceiling: {free:.0}/s");
    for ceiling in [100u64, 1_000, 10_000] {
        let r = throttle(&agent, &["loop", "--syscalls", &format!("{ceiling}/s")]);
        assert_eq!(r["level"], "throttle");
        assert_eq!(r["syscall_hook_attached"], true);
        // Let one burst pass, then measure over 4 s.
        std::thread::sleep(Duration::from_millis(500));
        let rate = syscall_rate(pid, Duration::from_secs(4));
        eprintln!("ceiling {ceiling}/s: measured {rate:.1}/s (unthrottled {free:.0}/s)");
        assert!(within(rate, ceiling as f64, 0.10), "ceiling {ceiling}/s, measured {rate:.1}/s");
        assert!(alive(pid), "the paced loop died (a paced syscall must not fail)");
    }
    let row = throttle_row(&agent, "loop");
    let all = bucket(&row, "all");
    assert!(all["paced"].as_u64().unwrap_or(0) > 0, "{row}");
    assert_eq!(all["denied"], 0, "pace mode denies nothing: {row}");
    let measured = all["measured_per_s"].as_f64().unwrap_or(0.0);
    assert!(within(measured, 10_000.0, 0.25), "status' measured rate {measured} vs 10000/s: {row}");
    assert!(row["needs_agent"].as_str().is_some_and(|s| s.contains("SIGCONT")), "{row}");

    // Dial down live: from 10,000/s to 100/s. Time until the loop is
    // observed at the new ceiling: the first 5 ms sample after which a
    // 500 ms window stays within the new budget (plus one burst).
    let t0 = Instant::now();
    let r = throttle(&agent, &["loop", "--syscalls", "100/s"]);
    let returned = t0.elapsed();
    let mut samples = vec![(Instant::now(), syscr(pid))];
    while samples[0].0.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(5));
        samples.push((Instant::now(), syscr(pid)));
    }
    let effect = samples
        .iter()
        .position(|(t, n)| samples.iter().rev().find(|(u, _)| u.duration_since(*t) <= Duration::from_millis(500)).is_some_and(|(_, m)| m - n <= 50 + 10 + 10))
        .map(|i| samples[i].0.duration_since(t0))
        .expect("the new ceiling never took effect");
    eprintln!(
        "ceiling change 10000/s -> 100/s: agent time_to_effect {} µs, command returned after {} µs, observed at the new ceiling after {} ms",
        r["time_to_effect_us"],
        returned.as_micros(),
        effect.as_millis()
    );
    assert!(effect < Duration::from_millis(1000), "new ceiling took {effect:?}");

    // Lift it: full speed again, and no per-syscall hook left on the host.
    agent.json(&["restore", "loop", "--to", "normal"]);
    let after = syscall_rate(pid, Duration::from_secs(1));
    assert!(after > 20_000.0, "restore did not lift the ceiling: {after:.0}/s");
    assert!(throttle_row(&agent, "loop").is_null());
    let st = agent.json(&["status", "loop"]);
    assert_eq!(st["targets"][0]["level"], "normal", "{st}");
    // Detached by the agent's periodic check once unneeded for 1 s.
    let pins = || {
        let generations = std::fs::read_dir(&agent.pin_dir).expect("pin dir");
        generations.flatten().map(|g| g.path().join("links/kp_throttle_sys_exit")).filter(|p| p.exists()).count()
    };
    crate::harness::wait_until(Duration::from_secs(3), || pins() == 0).expect("sys_exit throttle still attached 3 s after nothing is throttled");
}

/// `--syscall-class net=N/s`: pace mode slows connect() to the ceiling
/// and every connect succeeds; deny mode fails the excess with EAGAIN.
/// Connections are counted by the server, outside the target.
#[test]
fn throttle_net_class_pace_and_deny() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_tcp_port();
    let server_py = format!(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(1024)\n\
         import os\nn=0\nwhile True:\n    c,_=s.accept(); c.close(); n+=1\n    open('{0}.tmp', 'w').write(str(n)); os.replace('{0}.tmp', '{0}')\n",
        dir.path().join("accepted").display()
    );
    let _server = Server::start(dir.path(), "accept", &[py(), "-c", &server_py]);
    let accepted_now = || std::fs::read_to_string(dir.path().join("accepted")).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    // The server's count once it has caught up with the connections the
    // kernel completed (its accept loop lags behind a client's flood).
    let accepted = || {
        let mut last = accepted_now();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let n = accepted_now();
            if n == last {
                return n;
            }
            last = n;
        }
    };
    wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).expect("server up");
    let client = format!(
        "import socket, errno, time, sys\nok = eagain = other = 0\nend = time.time() + float(sys.argv[1])\n\
         while time.time() < end:\n    s = socket.socket()\n    try:\n        s.connect(('127.0.0.1', {port})); ok += 1\n\
         \x20   except OSError as e:\n        if e.errno == errno.EAGAIN: eagain += 1\n        else: other += 1\n    s.close()\n\
         open(sys.argv[2], 'w').write(f'{{ok}} {{eagain}} {{other}}')\n"
    );
    let result = dir.path().join("client");
    let res = result.display().to_string();
    // The target idles until the client runs inside it (a child of its shell).
    let _w = run_bg(&agent, "net", &["sh", "-c", &format!("while [ ! -e {0}.go ]; do sleep 0.05; done; {1} -c \"$0\" 4 {0}.pace; while [ ! -e {0}.go2 ]; do sleep 0.05; done; {1} -c \"$0\" 3 {0}.deny; sleep 100", res, py()), &client], 1);
    throttle(&agent, &["net", "--syscall-class", "net=50/s"]);
    let before = accepted();
    std::fs::write(format!("{res}.go"), "").expect("go");
    let (counts, v) = numbers(&format!("{res}.pace"), 3);
    let served = accepted() - before;
    eprintln!("net=50/s pace, 4 s: client ok={} eagain={} other={}, server accepted {served}", v[0], v[1], v[2]);
    assert_eq!((v[1], v[2]), (0, 0), "pace mode must not fail any connect: {counts}");
    // 4 s at 50/s plus one burst (5) and the start-up edge.
    assert!(within(served as f64, 200.0 + 5.0, 0.10), "server accepted {served}, expected ~205");

    let r = throttle(&agent, &["net", "--syscall-class", "net=50/s", "--mode", "deny"]);
    assert_eq!(r["ceilings"]["mode"], "deny");
    let before = accepted();
    std::fs::write(format!("{res}.go2"), "").expect("go2");
    let (counts, v) = numbers(&format!("{res}.deny"), 3);
    let served = accepted() - before;
    eprintln!("net=50/s deny, 3 s: client ok={} eagain={} other={}, server accepted {served}", v[0], v[1], v[2]);
    assert!(v[1] > 1000, "deny mode should refuse the excess with EAGAIN fast: {counts}");
    assert_eq!(v[2], 0, "only EAGAIN: {counts}");
    assert!(within(served as f64, 150.0 + 5.0, 0.15), "server accepted {served}, expected ~155");
    let row = throttle_row(&agent, "net");
    assert!(bucket(&row, "net")["denied"].as_u64().unwrap_or(0) >= v[1], "{row}");
}

/// Whether some socket listens on 127.0.0.1:port or [::]:port (from /proc/net/tcp*, without connecting).
fn listening(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).unwrap_or_default().lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", &cols[1][cols[1].len() - 5..]) == hex && cols[3] == "0A"
        })
    })
}

/// Bytes/s the iperf3 server received in intervals [from, end) of its
/// JSON report.
fn iperf_rate(report: &str, from: f64) -> f64 {
    let v: Value = serde_json::from_str(report).unwrap_or_else(|e| panic!("iperf3 -J output ({e}): {report}"));
    let (mut bytes, mut secs) = (0.0, 0.0);
    for i in v["intervals"].as_array().into_iter().flatten() {
        let s = &i["sum"];
        if s["start"].as_f64().unwrap_or(0.0) >= from && !s["omitted"].as_bool().unwrap_or(false) {
            bytes += s["bytes"].as_f64().unwrap_or(0.0);
            secs += s["seconds"].as_f64().unwrap_or(0.0);
        }
    }
    assert!(secs > 1.0, "no intervals in the iperf3 report: {report}");
    bytes / secs
}

/// A TCP bulk transfer (iperf3 client inside the target, server outside)
/// under 1 MB/s and 10 MB/s settles within ±10% of the ceiling, as the
/// server measures it; it does not collapse.
#[test]
fn throttle_egress_tcp_settles_at_the_ceiling() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("go");
    let g = gate.display().to_string();
    let script =
        format!("for n in 1 2; do while [ ! -e {g}$n ]; do sleep 0.05; done; iperf3 -c 127.0.0.1 -p $(cat {g}$n) -t 8 >/dev/null 2>&1; done; sleep 100");
    let _w = run_bg(&agent, "bulk", &["sh", "-c", &script], 1);
    for (n, ceiling) in [(1, 1_000_000u64), (2, 10_000_000)] {
        throttle(&agent, &["bulk", "--egress-bytes", &ceiling.to_string()]);
        let port = free_tcp_port();
        let server = Server::start(dir.path(), &format!("iperf{n}"), &["iperf3", "-s", "-1", "-J", "-p", &port.to_string()]);
        // No probe connection: a one-off (-1) server would take it for the test.
        wait_until(Duration::from_secs(10), || listening(port)).expect("iperf3 server up");
        std::fs::write(format!("{g}{n}"), port.to_string()).expect("gate");
        let mut server = server;
        wait_until(Duration::from_secs(40), || server.exited()).expect("iperf3 run finished");
        let rate = iperf_rate(&server.stdout(), 2.0);
        eprintln!("egress ceiling {ceiling} B/s: iperf3 server received {rate:.0} B/s over seconds 2-8");
        assert!(within(rate, ceiling as f64, 0.10), "ceiling {ceiling} B/s, received {rate:.0} B/s");
    }
    let row = throttle_row(&agent, "bulk");
    assert!(bucket(&row, "egress-bytes")["passed"].as_u64().unwrap_or(0) > 60_000_000, "{row}");
}

/// `--tasks 10` on a fork loop: never more than 10 live tasks (sampled
/// from outside), and the loop sees EAGAIN.
#[test]
fn throttle_tasks_caps_live_tasks() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let res = dir.path().join("forks").display().to_string();
    let forker = format!(
        "import os, time\nwhile not os.path.exists('{res}.go'): time.sleep(0.02)\nok = eagain = 0\nfor i in range(40):\n    try:\n        if os.fork() == 0:\n            time.sleep(2); os._exit(0)\n        ok += 1\n    except BlockingIOError:\n        eagain += 1\nopen('{res}', 'w').write(f'{{ok}} {{eagain}}')\ntime.sleep(100)\n"
    );
    let _w = run_bg(&agent, "forks", &[py(), "-c", &forker], 1);
    let r = throttle(&agent, &["forks", "--tasks", "10"]);
    assert!(r["tasks"]["mechanism"].as_str().is_some_and(|m| m.contains("pids")), "{r}");
    let cg = agent.target_cgroup("forks");
    std::fs::write(format!("{res}.go"), "").expect("go");
    let mut most = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let tasks = std::fs::read_to_string(cg.path().join("cgroup.threads")).unwrap_or_default().lines().count();
        most = most.max(tasks);
    }
    let (counts, v) = numbers(&res, 2);
    eprintln!("--tasks 10: at most {most} live tasks seen; forks ok={} eagain={}", v[0], v[1]);
    assert!(most <= 10, "saw {most} live tasks under --tasks 10");
    assert!(most >= 9, "the fork loop never came near the limit ({most})");
    assert_eq!(v[0], 9, "the forker plus 9 children is 10 tasks: {counts}");
    assert_eq!(v[1], 31, "every further fork fails with EAGAIN: {counts}");
    let row = throttle_row(&agent, "forks");
    assert!(row["tasks"]["forks_refused"].as_u64().unwrap_or(0) >= 31, "{row}");
    // Lifted: forks work again.
    agent.json(&["restore", "forks", "--to", "normal"]);
    let w2 = run_bg(&agent, "forks2", &["sh", "-c", "for i in $(seq 20); do sleep 5 & done; sleep 100"], 21);
    drop(w2);
}

/// The throttle holds with the agent dead: ceilings are kernel state.
/// A deny-mode net ceiling keeps refusing, and a paced task that reaches
/// its ceiling stays paused (as status said) until the agent is back,
/// which resumes it.
#[test]
fn throttle_holds_with_the_agent_dead() {
    let Some(mut agent) = Agent::start() else { return };
    let w = run_bg(&agent, "held", &[py(), "-c", READ_LOOP], 1);
    let pid = w.pid();
    throttle(&agent, &["held", "--syscalls", "100/s"]);
    std::thread::sleep(Duration::from_millis(300));
    agent.kill9();
    // Within one burst (100 ms) the loop is paused and nobody resumes it.
    std::thread::sleep(Duration::from_millis(500));
    let a = syscr(pid);
    std::thread::sleep(Duration::from_secs(1));
    let b = syscr(pid);
    assert!(b - a <= 10, "with the agent dead the paced loop should stay paused, made {} syscalls", b - a);
    // Stopped (SIGSTOP), or frozen by the pacer before it died (the
    // cgroup's freezer; the SIGSTOP then still pending).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let frozen = std::fs::read_to_string(agent.target_cgroup("held").path().join("cgroup.events")).unwrap_or_default().contains("frozen 1");
    assert!(frozen || state.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('T')), "neither stopped nor frozen: {state}");
    agent.spawn();
    // The new agent resumed the task at start; let its own start-up work
    // (program loads, recovery) settle before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let rate = syscall_rate(pid, Duration::from_secs(4));
    // Here: resumed, and still held to the ceiling. (Accuracy is the first
    // test's business; right after a restart the rate has been seen as low
    // as 37/s on a loaded machine, so only the bounds are asserted.)
    assert!(rate > 20.0 && rate <= 110.0, "after the agent came back: {rate:.1}/s under a 100/s ceiling");
    let rec = agent.journal().into_iter().rev().find(|r| r["action"] == "agent-start").expect("agent-start record");
    assert!(rec.to_string().contains("paused task(s) resumed"), "{rec}");
}

/// Bad requests get a clear error naming the problem, and nothing
/// changes: the ceilings in force stay, the agent keeps serving, the
/// journal stays intact.
#[test]
fn throttle_bad_requests_change_nothing() {
    let Some(agent) = Agent::start() else { return };
    let _w = run_bg(&agent, "bad", &["sleep", "100"], 1);
    throttle(&agent, &["bad", "--syscalls", "1000/s"]);
    let cases: &[(&[&str], &str)] = &[
        (&["throttle", "nosuch", "--syscalls", "100"], "unknown target"),
        (&["throttle", "bad", "--syscalls", "5/s"], "out of range"),
        (&["throttle", "bad", "--syscalls", "2000000/s"], "out of range"),
        (&["throttle", "bad", "--egress-bytes", "1"], "out of range"),
        (&["throttle", "bad", "--syscall-class", "disk=10"], "unknown syscall class"),
        (&["throttle", "bad", "--syscall-class", "exec=10", "--mode", "deny"], "--mode deny cannot apply"),
        (&["throttle", "bad", "--tasks", "0"], "--tasks 0"),
        (&["throttle", "bad", "--mode", "slow", "--syscalls", "100"], "unknown throttle mode"),
        (&["throttle", "bad", "--syscalls", "ten"], "bad rate"),
        (&["throttle", "bad"], "at least one"),
    ];
    for (args, needle) in cases {
        let out = agent.kp(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(text(&out.stderr).contains(needle), "{args:?}: expected {needle:?} in: {}", show(&out));
    }
    let row = throttle_row(&agent, "bad");
    assert_eq!(row["ceilings"]["syscalls"]["all"], 1000, "{row}");
    assert_eq!(bucket(&row, "all")["ceiling_per_s"], 1000, "{row}");
    let v = agent.json(&["journal", "--verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let throttles = agent.journal().into_iter().filter(|r| r["action"] == "throttle" && r["phase"] == "result").count();
    // One success plus the one request that reached the agent and failed
    // there (the out-of-range ones are refused before any intent).
    assert!(throttles >= 1, "journal has the throttle result");
    let alerts = agent.journal().into_iter().filter(|r| r["action"] == "alert" && r["params"]["action"] == "throttle").count();
    assert_eq!(alerts, 1, "one alert for the one throttle step");
}

/// `--egress-packets`: a UDP flood of small datagrams from inside the
/// target is held to the packet ceiling, counted by the receiver outside.
#[test]
fn throttle_egress_packets_hold_a_udp_flood() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("go").display().to_string();
    let script = format!("while [ ! -e {gate} ]; do sleep 0.05; done; iperf3 -c 127.0.0.1 -u -l 200 -b 4M -t 6 -p $(cat {gate}) >/dev/null 2>&1; sleep 100");
    let _w = run_bg(&agent, "flood", &["sh", "-c", &script], 1);
    throttle(&agent, &["flood", "--egress-packets", "500/s"]);
    let port = free_tcp_port();
    let mut server = Server::start(dir.path(), "iperf-udp", &["iperf3", "-s", "-1", "-J", "-p", &port.to_string()]);
    wait_until(Duration::from_secs(10), || listening(port)).expect("iperf3 server up");
    std::fs::write(&gate, port.to_string()).expect("gate");
    wait_until(Duration::from_secs(40), || server.exited()).expect("iperf3 run finished");
    let v: Value = serde_json::from_str(&server.stdout()).unwrap_or_else(|e| panic!("iperf3 -J ({e}): {}", server.stdout()));
    let (mut packets, mut secs) = (0.0, 0.0);
    for i in v["intervals"].as_array().into_iter().flatten() {
        if i["sum"]["start"].as_f64().unwrap_or(0.0) >= 2.0 {
            // iperf3 counts `packets` from sequence numbers, lost ones
            // included: received = packets - lost_packets.
            packets += i["sum"]["packets"].as_f64().unwrap_or(0.0) - i["sum"]["lost_packets"].as_f64().unwrap_or(0.0);
            secs += i["sum"]["seconds"].as_f64().unwrap_or(0.0);
        }
    }
    assert!(secs > 1.0, "no intervals: {v}");
    let rate = packets / secs;
    eprintln!("egress ceiling 500 packets/s: the receiver counted {rate:.0} UDP packets/s (the sender offered 2,500/s)");
    assert!(within(rate, 500.0, 0.10), "ceiling 500 packets/s, received {rate:.0}/s");
    let row = throttle_row(&agent, "flood");
    assert!(bucket(&row, "egress-packets")["denied"].as_u64().unwrap_or(0) > 1000, "the excess was dropped and counted: {row}");
}

/// `throttle --egress-bytes --netdev`: traffic on a container's veth that
/// no cgroup hook of the target sees (here a sender in the namespace but
/// outside the target's cgroup) is policed at TC. UDP is measured exactly
/// by the receiver; TCP is reported and must not collapse.
#[test]
fn throttle_netdev_polices_at_tc() {
    let Some(agent) = Agent::start() else { return };
    let veth = Veth::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = agent.run_bg("box", &["ip", "netns", "exec", &veth.ns, "sleep", "1000"], 1);
    let out = agent.kp(&["throttle", "box", "--netdev", &veth.host_if, "--tasks", "5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--netdev only makes sense"), "{out:?}");
    let r = agent.json(&["throttle", "box", "--egress-bytes", "1MB/s", "--netdev", &veth.host_if]);
    assert_eq!(r["netdevs"][0]["netdev"], veth.host_if.as_str(), "{r}");
    let host_ip = veth.peer_ip.replace(".0.2", ".0.1");
    for (proto, extra) in [("udp", &["-u", "-b", "20M"][..]), ("tcp", &[][..])] {
        let port = free_tcp_port();
        let mut server = Server::start(dir.path(), &format!("iperf-{proto}"), &["iperf3", "-s", "-1", "-J", "-p", &port.to_string()]);
        wait_until(std::time::Duration::from_secs(10), || listening(port)).expect("iperf3 server up");
        let mut args = vec!["netns", "exec", &veth.ns, "iperf3", "-c", &host_ip, "-p"];
        let p = port.to_string();
        args.push(&p);
        args.extend_from_slice(&["-t", "6"]);
        args.extend_from_slice(extra);
        let out = Command::new("ip").args(&args).output().expect("iperf3 client");
        assert!(out.status.success() || proto == "tcp", "iperf3 {proto}: {}", String::from_utf8_lossy(&out.stderr));
        wait_until(std::time::Duration::from_secs(20), || server.exited()).expect("iperf3 server finished");
        let rate = iperf_rate(&server.stdout(), 2.0);
        eprintln!("TC policer at 1 MB/s, {proto} from the namespace outside the target's cgroup: received {rate:.0} B/s");
        if proto == "udp" {
            assert!((rate - 1e6).abs() <= 1e5, "UDP through the TC policer: {rate:.0} B/s, ceiling 1000000");
        } else {
            assert!((0.3e6..=1.1e6).contains(&rate), "TCP through the TC policer: {rate:.0} B/s (ceiling 1000000; must hold and not collapse)");
        }
    }
    let st = agent.json(&["status", "box"]);
    let buckets = st["targets"][0]["throttle"]["buckets"].as_array().cloned().unwrap_or_default();
    let tc = buckets.iter().find(|b| b["class"] == "egress-bytes-tc").expect("TC bucket in status");
    assert!(tc["denied"].as_u64().unwrap_or(0) > 0, "{st}");
    agent.json(&["release", "box"]);
    let _ = run.kill();
    let _ = run.wait();
}
