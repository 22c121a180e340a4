//! Critical egress rules: the kernel isolates the target on the crossing
//! packet; the receiver outside stops getting bytes.
use std::time::Duration;

use super::{add, fired_records, gated, go, levels, py, tcp_sender, udp_sender, wait_fired, Receiver};
use crate::harness::{wait_until, Agent};

const MB: u64 = 1_000_000;

#[test]
fn tripwire_critical_egress_tcp_and_udp_isolate_in_kernel() {
    let Some(agent) = Agent::start() else { return };
    for name in ["tcp", "udp"] {
        let rx = if name == "tcp" { Receiver::tcp() } else { Receiver::udp() };
        let code = if name == "tcp" { tcp_sender(rx.port) } else { udp_sender(rx.port) };
        let (mut child, gate) = gated(&agent, name, &py(&agent, name, &code));
        let rule = format!("exfil-{name}");
        add(&agent, &[&rule, "--target", name, "--metric", "egress-bytes", "--above", "1MB", "--window", "1s", "--action", "isolate", "--critical"]);
        go(&gate);
        let f = wait_fired(&agent, &rule, name, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{name}: rule never fired; receiver got {} bytes\n{}", rx.get(), agent.log_text()));
        assert_eq!(f["outcome"], "raised in kernel", "{name}: {f}");
        assert!(f["value"].as_u64().unwrap() > MB, "{name}: {f}");
        // From outside: the receiver stops getting bytes.
        assert!(rx.flat_over(Duration::from_secs(2)), "{name}: receiver still getting bytes after the crossing");
        let got = rx.get();
        // UDP datagrams the receiver's socket buffer overflowed are lost
        // outside killpath: only TCP bounds the count from below.
        assert!(got <= MB + 64 * 1024, "{name}: receiver got {got} bytes for a 1 MB threshold");
        assert!(name == "udp" || got > MB / 2, "{name}: receiver got only {got} bytes");
        let (lvl, klvl) = levels(&agent, name);
        assert_eq!((lvl.as_str(), klvl.as_str()), ("isolate", "isolate"));
        assert_eq!(fired_records(&agent, &rule).len(), 1);
        let ok = wait_until(Duration::from_secs(3), || {
            agent.journal().iter().any(|r| r["action"] == "kernel-raise" && r["params"]["detail"]["rule"] == rule.as_str())
        });
        assert!(ok.is_some(), "{name}: no kernel-raise naming the rule");
        eprintln!("{name}: received {got} bytes (threshold {MB}), exposure window {} µs", f["exposure_window_us"]);
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn tripwire_critical_egress_fires_with_the_agent_dead() {
    let Some(mut agent) = Agent::start() else { return };
    let rx = Receiver::tcp();
    let (mut child, gate) = gated(&agent, "t", &py(&agent, "t", &tcp_sender(rx.port)));
    add(&agent, &["exfil", "--target", "t", "--metric", "egress-bytes", "--above", "1MB", "--window", "1s", "--action", "isolate", "--critical"]);
    agent.kill9();
    go(&gate);
    wait_until(Duration::from_secs(10), || rx.get() > MB / 2).expect("workload never sent");
    assert!(wait_until(Duration::from_secs(10), || rx.flat_over(Duration::from_millis(500))).is_some(), "receiver kept getting bytes with the agent dead");
    assert!(rx.flat_over(Duration::from_secs(2)));
    let got = rx.get();
    assert!(got <= MB + 64 * 1024, "receiver got {got}");
    agent.spawn();
    let ok = wait_until(Duration::from_secs(10), || agent.journal().iter().any(|r| r["action"] == "kernel-raise" && r["params"]["detail"]["rule"] == "exfil"));
    assert!(ok.is_some(), "restarted agent never journaled the raise:\n{}", agent.log_text());
    let f = wait_fired(&agent, "exfil", "t", Duration::from_secs(5)).expect("firing recorded by the restarted agent");
    assert_eq!(f["outcome"], "raised in kernel");
    eprintln!("agent dead: received {got} bytes, exposure window {} µs", f["exposure_window_us"]);
    let _ = child.kill();
    let _ = child.wait();
}

/// The same critical rule evaluated by the agent (`--eval agent`, polled
/// every 10 ms), on `*`: added before the target exists, it covers it.
/// The agent isolates; the receiver stops, later than in the kernel.
#[test]
fn tripwire_agent_evaluated_rule_on_every_target() {
    let Some(agent) = Agent::start() else { return };
    add(
        &agent,
        &[
            "exfil-agent",
            "--target",
            "*",
            "--metric",
            "egress-bytes",
            "--above",
            "1MB",
            "--window",
            "1s",
            "--action",
            "isolate",
            "--critical",
            "--eval",
            "agent",
        ],
    );
    let rx = Receiver::tcp();
    let (mut child, gate) = gated(&agent, "late", &py(&agent, "late", &tcp_sender(rx.port)));
    go(&gate);
    let f = wait_fired(&agent, "exfil-agent", "late", Duration::from_secs(10)).unwrap_or_else(|| panic!("never fired; receiver got {}", rx.get()));
    assert_eq!(f["outcome"], "applied by agent", "{f}");
    assert!(f["evaluated"].as_str().unwrap().starts_with("agent"));
    assert!(rx.flat_over(Duration::from_secs(2)), "receiver still getting bytes");
    assert_eq!(levels(&agent, "late").1, "isolate");
    let got = rx.get();
    assert!(got > MB / 2, "agent-evaluated: got {got}");
    eprintln!(
        "agent-evaluated: received {got} bytes (threshold {MB}): {} after the threshold; crossing seen -> isolated {} µs",
        got - MB,
        f["exposure_window_us"]
    );
    let _ = child.kill();
    let _ = child.wait();
}
