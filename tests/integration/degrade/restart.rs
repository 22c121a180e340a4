//! A degraded target stays degraded with the agent SIGKILLed; the restarted
//! agent reports it and can give the capability back.
use serde_json::json;

use super::{
    assert_state,
    clients::{connect_errno, connect_loop, tcp_sink},
    denials, in_cgroup, EPERM,
};
use crate::{
    harness::{alive, Agent},
    support::process::{run_bg, text},
};

/// SIGKILL the agent while a target is degraded: the revocation and its
/// allow-list stay enforced (and counted) without it; the restarted agent
/// shows the revoked capabilities, the allow-list and the denials, and can
/// give them back.
#[test]
fn degrade_survives_agent_sigkill_and_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (p1, p2) = (tcp_sink(), tcp_sink());
    let _t = run_bg(&agent, "hold", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("hold").path().to_owned();
    let allow = format!("127.0.0.1:{p1}");
    agent.json(&["degrade", "hold", "--revoke", "net.connect", "--allow-connect", &allow]);
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM);
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0);

    let pid = agent.pid();
    agent.kill9();
    assert!(!alive(pid), "agent still alive after SIGKILL");
    let r = connect_loop(|c| in_cgroup(&cg, c), "127.0.0.1", p2, 3);
    assert_eq!(r["errnos"], json!({"1": 3}), "still refused with the agent dead: {r}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0, "the allow-list still works with the agent dead");

    agent.spawn();
    assert_state(&agent, "hold", "degrade", &["net.connect"], &[&allow], "after restart");
    assert_eq!(denials(&agent, "hold", "net.connect"), 4, "the denials made while the agent was dead are counted");
    let human = text(&agent.kp(&["status", "hold"]).stdout);
    assert!(human.contains("DEGRADED: revoked net.connect"), "{human}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM, "still enforced after restart");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p1), 0);

    agent.json(&["restore", "hold", "--grant", "net.connect"]);
    assert_state(&agent, "hold", "normal", &[], &[], "restored after restart");
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), 0);
}
