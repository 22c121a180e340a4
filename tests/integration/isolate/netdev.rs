//! `isolate --netdev`: a workload in its own network namespace, cut at TC on
//! the host side of its veth (TCX on this host).
use crate::{
    harness::{wait_until, Agent},
    support::veth::Veth,
};

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
