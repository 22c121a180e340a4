//! Tests: a flow's direction in the trail (issue 16) cannot be forged by
//! the workload. A workload that listens on port P with SO_REUSEPORT and
//! connects OUT from a second socket bound to the same port P must show
//! that destination as outgoing, with the bytes the outside server
//! counted; a genuine connection from outside to P stays incoming
//! (accept); a port still listened on when its target is released leaves
//! the kernel's table of listening ports. Oracles outside the target: the server's own byte count and
//! the listener's count of what the outside client sent.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::in_cgroup_within,
        net::free_tcp_port,
        process::{py, run_bg, show, Reaped},
    },
};

/// Bytes of IPv4 + TCP headers per packet (as in `trail_net`): 20 + 20 at
/// least, 20 + 60 at most.
const TCP_HDR_MIN: u64 = 40;
const TCP_HDR_MAX: u64 = 80;

/// What the workload sends out from its listening port.
const OUT_BYTES: u64 = 120_000;
/// What the outside client sends to the workload's listener.
const IN_BYTES: u64 = 30_000;

/// A server outside every target: accepts ONE connection, reads it to
/// EOF, counts the bytes it received.
fn counting_server() -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("counting server");
    let port = l.local_addr().expect("addr").port();
    let (received, conns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, c) = (received.clone(), conns.clone());
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        c.fetch_add(1, Ordering::SeqCst);
        s.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            r.fetch_add(n as u64, Ordering::SeqCst);
        }
        // EOF seen: mark it (the count is final).
        c.fetch_add(1, Ordering::SeqCst);
    });
    (port, received, conns)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn flow<'a>(fl: &'a [Value], port: u16, direction: &str) -> Option<&'a Value> {
    fl.iter().find(|f| f["proto"] == "tcp" && f["port"] == port && f["addr"] == "127.0.0.1" && f["direction"] == direction)
}

fn assert_tcp_bytes(what: &str, bytes: u64, packets: u64, payload: u64) {
    assert!(packets >= 2, "{what}: {packets} packets counted (a connection has at least a SYN and an ACK)");
    assert!(
        bytes >= payload + TCP_HDR_MIN * packets && bytes <= payload + TCP_HDR_MAX * packets,
        "{what}: trail says {bytes} bytes in {packets} packets; counted outside: {payload} payload bytes: \
         expected between {} and {} (headers {TCP_HDR_MIN}..{TCP_HDR_MAX} per packet)",
        payload + TCP_HDR_MIN * packets,
        payload + TCP_HDR_MAX * packets
    );
}

#[test]
fn trail_net_connect_from_listening_port_is_outgoing() {
    let Some(agent) = Agent::start() else { return };
    let name = "tdir";
    let _run = run_bg(&agent, name, &["sleep", "600"], 1);
    agent.json(&["trail", name, "--on"]);
    let cg = agent.target_cgroup(name);
    let (sport, received, conns) = counting_server();
    let p = free_tcp_port();
    // Inside the target: a listener on P (SO_REUSEPORT), then a second
    // socket bound to the same P connects OUT to the outside server and
    // sends OUT_BYTES; then the listener accepts one connection from
    // outside and prints how many bytes it read.
    let script = format!(
        "import socket\n\
         def s():\n  x=socket.socket()\n  x.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n  x.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n  x.bind(('127.0.0.1',{p}))\n  return x\n\
         l=s()\nl.listen()\n\
         c=s()\nc.connect(('127.0.0.1',{sport}))\nc.sendall(b'x'*{OUT_BYTES})\nc.shutdown(socket.SHUT_WR)\n\
         while c.recv(65536): pass\nc.close()\n\
         a,_=l.accept()\nn=0\nwhile True:\n  b=a.recv(65536)\n  if not b: break\n  n+=len(b)\nprint(n)"
    );
    let cgp = cg.path().to_owned();
    let workload = thread::spawn(move || in_cgroup_within(15, &cgp, &[py(), "-c", &script]));
    // A client outside every target reaches the listener on P.
    let mut c = None;
    wait_until(Duration::from_secs(10), || {
        c = TcpStream::connect(("127.0.0.1", p)).ok();
        c.is_some()
    })
    .expect("the listener in the target never came up");
    let mut c = c.expect("client");
    let local = c.local_addr().expect("client addr").port();
    c.write_all(&vec![b'z'; IN_BYTES as usize]).expect("send to the listener");
    drop(c);
    let out = workload.join().expect("workload thread");
    assert!(out.status.success(), "workload: {}", show(&out));
    let got: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the listener's count");
    assert_eq!(got, IN_BYTES, "the listener read what the outside client sent");
    wait_until(Duration::from_secs(10), || conns.load(Ordering::SeqCst) == 2).expect("the outside server saw EOF");
    let sent_out = received.load(Ordering::SeqCst);
    assert_eq!(sent_out, OUT_BYTES, "the outside server received what the workload sent");

    // The snapshot that holds both flows complete (the agent snapshots
    // once per second when counters changed).
    let mut recs = Vec::new();
    let mut fl = Vec::new();
    wait_until(Duration::from_secs(15), || {
        recs = agent.json(&["trail", name, "--kind", "net"])["records"].as_array().cloned().unwrap_or_default();
        fl = recs.iter().rev().find(|r| r["action"] == "flows").and_then(|r| r["flows"].as_array().cloned()).unwrap_or_default();
        flow(&fl, sport, "out").is_some_and(|f| n(f, "bytes_out") >= sent_out)
            && flow(&fl, p, "in").is_some_and(|f| n(f, "bytes_in") >= got)
            && recs.iter().any(|r| r["action"] == "accept")
    })
    .unwrap_or_else(|| panic!("the trail never listed the destination {sport} as outgoing with {sent_out} bytes and {p} as incoming with {got}: {fl:#?}"));

    // Outgoing: the destination the workload sent to, with the server's count.
    let f = flow(&fl, sport, "out").expect("outgoing flow");
    assert_tcp_bytes("from the listening port, out", n(f, "bytes_out"), n(f, "packets_out"), sent_out);
    // Only ACKs came back from the server (and its FIN): no payload.
    assert_tcp_bytes("from the listening port, in", n(f, "bytes_in"), n(f, "packets_in"), 0);
    // Incoming: keyed by the listening port, only what the outside client sent.
    let f = flow(&fl, p, "in").expect("incoming flow");
    assert_tcp_bytes("accepted on the listening port, in", n(f, "bytes_in"), n(f, "packets_in"), got);
    assert!(n(f, "bytes_out") <= TCP_HDR_MAX * n(f, "packets_out"), "the workload sent no payload on the accepted connection: {f}");
    assert!(flow(&fl, local, "out").is_none(), "the accepted connection was counted as outgoing: {fl:#?}");

    // Events: the connect names the destination; the accept names the outside client.
    let connects: Vec<&Value> = recs.iter().filter(|r| r["action"] == "connect" && r["port"] == sport).collect();
    assert_eq!(connects.len(), 1, "{recs:#?}");
    let accept: Vec<&Value> = recs.iter().filter(|r| r["action"] == "accept").collect();
    assert_eq!(accept.len(), 1, "{recs:#?}");
    assert_eq!((&accept[0]["port"], &accept[0]["addr"]), (&Value::from(local), &Value::from("127.0.0.1")), "the accepted peer is the outside client");
}

/// Entries of the agent's pinned map `name`, as bpftool reads them from
/// the kernel.
fn pinned_entries(agent: &Agent, name: &str) -> usize {
    let gen: PathBuf = std::fs::read_dir(&agent.pin_dir)
        .expect("pin dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("maps").is_dir())
        .expect("a pin generation");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(gen.join("maps").join(name)).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {name}: {}", show(&out));
    serde_json::from_slice::<Value>(&out.stdout).expect("bpftool JSON").as_array().map_or(usize::MAX, Vec::len)
}

#[test]
fn trail_net_listening_port_forgotten_at_release() {
    let Some(agent) = Agent::start() else { return };
    let name = "tlrel";
    let _run = run_bg(&agent, name, &["sleep", "600"], 1);
    agent.json(&["trail", name, "--on"]);
    let cg = agent.target_cgroup(name);
    let p = free_tcp_port();
    // A listener in the target that outlives the target's release.
    let script = format!("import socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',{p}))\nl.listen()\ntime.sleep(60)");
    let listener = Reaped(
        Command::new("sh")
            .args(["-c", r#"echo 0 > "$0" && exec "$@""#])
            .arg(cg.path().join("cgroup.procs"))
            .args([py(), "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the listener"),
    );
    let mut recs = Vec::new();
    wait_until(Duration::from_secs(15), || {
        recs = agent.json(&["trail", name, "--kind", "net"])["records"].as_array().cloned().unwrap_or_default();
        recs.iter().any(|r| r["action"] == "listen" && r["port"] == p)
    })
    .unwrap_or_else(|| panic!("no LISTEN on {p} in the trail: {recs:#?}"));
    assert_eq!(pinned_entries(&agent, "KP_TRAIL_LISTENING"), 1, "the kernel holds the listening port");
    let out = agent.kp(&["release", name]);
    assert!(out.status.success(), "release: {}", show(&out));
    assert!(alive(listener.pid()), "the listener must still be open: the entry goes with the release, not with a close");
    assert_eq!(pinned_entries(&agent, "KP_TRAIL_LISTENING"), 0, "the released target's listening port left the kernel's table");
}
