//! `isolate --netdev`: a workload in its own network namespace, cut at TC on
//! the host side of its veth (TCX on this host).
use std::process::Command;

use crate::harness::{Agent, wait_until};

/// A network namespace with a veth pair: host side `host_if` (10.x.0.1),
/// namespace side 10.x.0.2. Removed on drop.
struct Veth {
    ns: String,
    host_if: String,
    peer_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Veth {
    fn new() -> Veth {
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
    fn reachable(&self) -> bool {
        Command::new("ping").args(["-c1", "-W1", &self.peer_ip]).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn isolate_netdev_cuts_a_container_at_tc() {
    let Some(mut agent) = Agent::start() else { return };
    let veth = Veth::new();
    assert!(veth.reachable(), "namespace must be reachable before isolation");
    let mut run = agent.run_bg("box", &["ip", "netns", "exec", &veth.ns, "sleep", "1000"], 1);

    // A bad device: clear error, nothing changed.
    let out = agent.kp(&["isolate", "box", "--netdev", "kp-no-such-if"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kp-no-such-if"), "{}", String::from_utf8_lossy(&out.stderr));
    let st = agent.json(&["status", "box"]);
    assert_eq!(st["targets"][0]["level"], "normal", "{st}");
    assert!(veth.reachable());

    let r = agent.json(&["isolate", "box", "--netdev", &veth.host_if]);
    assert_eq!(r["netdevs"][0]["netdev"], veth.host_if.as_str(), "{r}");
    assert!(!veth.reachable(), "traffic on the container's veth must be cut");
    let st = agent.json(&["status"]);
    assert!(st["isolation"]["tc_packets_dropped"].as_u64().unwrap_or(0) > 0, "{st}");

    // The cut holds with the agent dead, and a new agent can lift it.
    agent.kill9();
    assert!(!veth.reachable(), "TC cut must survive the agent");
    agent.spawn();
    let st = agent.json(&["status", "box"]);
    assert_eq!(st["targets"][0]["level"], "isolate", "{st}");
    agent.json(&["restore", "box", "--to", "normal"]);
    assert!(wait_until(std::time::Duration::from_secs(3), || veth.reachable()).is_some(), "restore must reopen the veth");

    // Release unbinds the device: isolating nothing later cannot touch it.
    agent.json(&["release", "box"]);
    assert!(veth.reachable());
    let _ = run.kill();
    let _ = run.wait();
}
