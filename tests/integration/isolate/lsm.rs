//! With BPF LSM (in the VM): unix and packet sockets are cut too, and
//! nothing is reported open.
use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    in_target, json_any, marker,
    programs::our_isolate_progs,
    report::{assert_catalog, assert_verify},
};
use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        net::Server,
        process::{py, run_bg, show, text},
        status::{need_lsm, target_row},
    },
};

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
    assert!(progs.len() >= 16, "8 cgroup + 8 LSM programs at least: {progs:?}");
    assert_eq!(progs.iter().filter(|(_, n)| n.starts_with("kp_isolate_lsm")).count(), 8, "{progs:?}");
    check_packet(&agent, "quiet", false, "isolated");
    // Restored: still nothing listed (nothing is isolated), and it works.
    agent.json(&["restore", "quiet", "--to", "normal"]);
    let t = target_row(&agent, "quiet").unwrap();
    assert_eq!((t["level"].as_str(), t["open_channels"].clone()), (Some("normal"), json!([])), "{t}");
    check_packet(&agent, "quiet", true, "restored");
}
