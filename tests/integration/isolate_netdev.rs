//! `isolate --netdev`: a workload in its own network namespace, cut at TC on
//! the host side of its veth (TCX on this host).
use std::process::Command;

use crate::{
    harness::{wait_until, Agent},
    isolate::Server,
    throttle::{free_port, iperf_rate, listening},
};

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
        let port = free_port();
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
