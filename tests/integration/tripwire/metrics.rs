//! Each kernel-counted metric (and `tasks`) crosses its threshold with a
//! real workload: the rule fires exactly once with the right evidence; the
//! same workload under a higher threshold never fires. Audit mode: nothing
//! is enforced (the target stays at normal, its tasks keep running).
use std::time::Duration;

use super::{add, fired_records, gated, go, levels, py, rule, wait_fired, Receiver};
use crate::harness::{wait_until, Agent};

#[test]
fn tripwire_metrics_fire_once_above_and_never_below() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receiver::udp();
    let base = crate::support::net::free_tcp_port();
    let code = format!(
        "import socket,time\nfor p in range(40):\n  s=socket.socket()\n  try:\n    s.connect(('127.0.0.1',{base}+p))\n  except OSError:\n    pass\n  s.close()\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(300):\n  u.sendto(b'x'*100,('127.0.0.1',{}))\ntime.sleep(60)\n",
        rx.port
    );
    let script = format!("for i in $(seq 100); do /bin/true; done; for i in $(seq 8); do sleep 60 & done; {}", py(&agent, "m", &code));
    let (mut m, gate_m) = gated(&agent, "m", &script);
    // Denials: net.connect revoked, 30 refused connects.
    let dcode = "import socket,time\nfor p in range(30):\n  s=socket.socket()\n  try:\n    s.connect(('127.0.0.1',9))\n  except OSError:\n    pass\n  s.close()\ntime.sleep(60)\n";
    let (mut d, gate_d) = gated(&agent, "d", &py(&agent, "d", dcode));
    agent.json(&["degrade", "d", "--revoke", "net.connect"]);
    let cases: &[(&str, &str, &str, u64)] = &[
        ("execs", "m", "50", 50),
        ("forks", "m", "50", 50),
        ("connects", "m", "20", 20),
        ("destinations", "m", "20", 20),
        ("egress-packets", "m", "100", 100),
        ("tasks", "m", "5", 5),
        ("denials:net.connect", "d", "20", 20),
        ("syscalls", "m", "1000", 1000),
        ("syscalls:exec", "m", "50", 50),
    ];
    for (metric, target, above, _) in cases {
        let name = format!("lo-{}", metric.replace(':', "-"));
        add(&agent, &[&name, "--target", target, "--metric", metric, "--above", above, "--window", "10s", "--action", "isolate", "--mode", "audit"]);
        let hi = format!("hi-{}", metric.replace(':', "-"));
        add(&agent, &[&hi, "--target", target, "--metric", metric, "--above", "100000", "--window", "10s", "--action", "isolate", "--mode", "audit"]);
    }
    go(&gate_m);
    go(&gate_d);
    for (metric, target, _, threshold) in cases {
        let name = format!("lo-{}", metric.replace(':', "-"));
        let f = wait_fired(&agent, &name, target, Duration::from_secs(10)).unwrap_or_else(|| panic!("{name} never fired: {}", rule(&agent, &name)));
        assert_eq!(f["metric"], *metric);
        assert!(f["value"].as_u64().unwrap() > *threshold, "{name}: {f}");
        assert_eq!(f["outcome"], "audit only", "{name}: {f}");
    }
    // The workloads keep running (sleeps) a while longer: nothing re-fires,
    // nothing above the high thresholds fires.
    std::thread::sleep(Duration::from_secs(1));
    for (metric, target, _, _) in cases {
        let name = format!("lo-{}", metric.replace(':', "-"));
        assert_eq!(fired_records(&agent, &name).len(), 1, "{name} fired more than once");
        let hi = format!("hi-{}", metric.replace(':', "-"));
        assert!(fired_records(&agent, &hi).is_empty(), "{hi} fired");
        assert!(rule(&agent, &hi)["targets"][0]["fired"].is_null());
        let _ = target;
    }
    // Audit: nothing enforced; the target's tasks still run.
    assert_eq!(levels(&agent, "m").1, "normal");
    assert!(wait_until(Duration::from_millis(100), || agent.target_cgroup("m").procs_recursive().len() >= 8).is_some());
    let _ = m.kill();
    let _ = m.wait();
    let _ = d.kill();
    let _ = d.wait();
}
