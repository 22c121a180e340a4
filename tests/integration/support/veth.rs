//! A network namespace joined to the host by a veth pair, for the
//! `--netdev` (TC) tests of isolate and throttle.
use std::process::Command;

/// A network namespace with a veth pair: host side `host_if` (10.x.0.1),
/// namespace side 10.x.0.2. Removed on drop.
pub(crate) struct Veth {
    pub(crate) ns: String,
    pub(crate) host_if: String,
    pub(crate) peer_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Veth {
    pub(crate) fn new() -> Veth {
        let n = std::process::id() % 200 + 20;
        let v = Veth { ns: format!("kpns{n}"), host_if: format!("kph{n}"), peer_ip: format!("10.{n}.0.2") };
        let peer = format!("kpp{n}");
        ip(&["netns", "add", &v.ns]);
        ip(&["link", "add", &v.host_if, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &v.ns]);
        ip(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", &v.host_if]);
        ip(&["link", "set", &v.host_if, "up"]);
        ip(&["netns", "exec", &v.ns, "ip", "addr", "add", &format!("{}/24", v.peer_ip), "dev", &peer]);
        ip(&["netns", "exec", &v.ns, "ip", "link", "set", &peer, "up"]);
        v
    }

    /// One ping from the host to the namespace side.
    pub(crate) fn reachable(&self) -> bool {
        Command::new("ping").args(["-c1", "-W1", &self.peer_ip]).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
