//! Tripwires: rules over kernel-counted metrics, judged from outside the
//! target (a receiver counting bytes, the target's level in the kernel
//! map as `status` reads it, the workload still running or not).
mod egress;
mod metrics;
mod rules;

use std::{
    io::Read,
    net::{TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;

use crate::harness::{wait_until, Agent};

/// A receiver outside every target, counting the bytes it gets.
pub(crate) struct Receiver {
    pub port: u16,
    pub bytes: Arc<AtomicU64>,
}

impl Receiver {
    pub fn tcp() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let bytes = Arc::new(AtomicU64::new(0));
        let b = bytes.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        Receiver { port, bytes }
    }

    pub fn udp() -> Receiver {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        let bytes = Arc::new(AtomicU64::new(0));
        let b = bytes.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.recv(&mut buf) {
                b.fetch_add(n as u64, Ordering::SeqCst);
            }
        });
        Receiver { port, bytes }
    }

    pub fn get(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Whether the count stays the same over `d`.
    pub fn flat_over(&self, d: Duration) -> bool {
        let a = self.get();
        std::thread::sleep(d);
        self.get() == a
    }
}

/// A python workload streaming to the receiver as fast as it can.
pub(crate) fn tcp_sender(port: u16) -> String {
    format!("import socket\ns=socket.create_connection(('127.0.0.1',{port}))\nb=b'x'*65536\nwhile True:\n  s.sendall(b)\n")
}

pub(crate) fn udp_sender(port: u16) -> String {
    format!("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nb=b'x'*1400\nwhile True:\n  try:\n    s.sendto(b,('127.0.0.1',{port}))\n  except OSError:\n    time.sleep(0.001)\n")
}

/// Starts `sh -c CMD` as target `name`, held until [`go`] so rules can
/// be added to the target first.
pub(crate) fn gated(agent: &Agent, name: &str, cmd: &str) -> (std::process::Child, std::path::PathBuf) {
    let go = agent.dir.path().join(format!("go-{name}"));
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; {cmd}", go.display());
    (agent.run_bg(name, &["sh", "-c", &script], 1), go)
}

pub(crate) fn go(path: &std::path::Path) {
    std::fs::write(path, b"go").expect("go file");
}

/// `exec python3 FILE` with CODE written to FILE (no shell quoting).
pub(crate) fn py(agent: &Agent, name: &str, code: &str) -> String {
    let f = agent.dir.path().join(format!("{name}.py"));
    std::fs::write(&f, code).expect("write script");
    format!("exec python3 {}", f.display())
}

/// The rule's entry in `tripwire list --json`.
pub(crate) fn rule(agent: &Agent, name: &str) -> Value {
    let l = agent.json(&["tripwire", "list"]);
    l["rules"].as_array().and_then(|a| a.iter().find(|r| r["name"] == name).cloned()).unwrap_or(Value::Null)
}

/// The firing of `name` on `target`, once there is one.
pub(crate) fn wait_fired(agent: &Agent, name: &str, target: &str, timeout: Duration) -> Option<Value> {
    let mut out = None;
    wait_until(timeout, || {
        let r = rule(agent, name);
        let f = r["targets"].as_array().and_then(|a| a.iter().find(|t| t["target"] == target).map(|t| t["fired"].clone())).unwrap_or(Value::Null);
        if f.is_null() {
            return false;
        }
        out = Some(f);
        true
    })?;
    out
}

/// `tripwire-fired` journal records of a rule.
pub(crate) fn fired_records(agent: &Agent, name: &str) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == "tripwire-fired" && r["params"]["firing"]["rule"] == name).collect()
}

/// The target's level as the agent reports it, and the kernel's.
pub(crate) fn levels(agent: &Agent, target: &str) -> (String, String) {
    let st = agent.json(&["status", target]);
    let t = &st["targets"][0];
    (t["level"].as_str().unwrap_or("").to_owned(), t["kernel_level"].as_str().unwrap_or("").to_owned())
}

pub(crate) fn add(agent: &Agent, args: &[&str]) -> Value {
    let mut a = vec!["tripwire", "add"];
    a.extend_from_slice(args);
    agent.json(&a)
}
