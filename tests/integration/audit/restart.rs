//! Audit mode survives the agent: killed (SIGKILL) and restarted, it
//! keeps auditing, and a registry that lost the audit set takes it back
//! from the kernel's pinned state (the union, as for revoked capabilities).
use super::{row, workload, would, Receivers};
use crate::{harness::Agent, support::process::run_bg};

#[test]
fn audit_survives_agent_restart_and_registry_loss() {
    let Some(mut agent) = Agent::start() else { return };
    let rx = Receivers::start();
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    agent.json(&["isolate", "web", "--audit"]);
    let (ok, _, _) = workload(&cg, &rx, 2, 0);
    assert_eq!(ok, 2);
    assert_eq!(would(&agent, "web", "isolate.connects_and_sends"), 2);

    // The agent dies; its registry loses the audit set (an older file, a bad edit).
    agent.kill9();
    let reg = agent.state_dir.join("targets/web.json");
    let mut web: serde_json::Value = serde_json::from_slice(&std::fs::read(&reg).expect("targets/web.json")).expect("registry JSON");
    assert_eq!(web["audit"], 1u64 << 31, "the registry holds the isolation audit bit");
    web["audit"] = 0.into();
    std::fs::write(&reg, serde_json::to_vec(&web).unwrap()).unwrap();
    // While the agent is dead the kernel keeps counting.
    let (ok, _, _) = workload(&cg, &rx, 3, 0);
    assert_eq!(ok, 3, "nothing refused while the agent is dead");
    agent.spawn();

    let st = row(&agent, "web");
    assert_eq!((st["audit"]["active"].as_bool(), st["audit"]["isolate"].as_bool()), (Some(true), Some(true)), "audit taken back from the kernel: {st}");
    assert_eq!(would(&agent, "web", "isolate.connects_and_sends"), 5, "counted while the agent was dead too");
    let start = agent.journal().into_iter().rev().find(|e| e["action"] == "agent-start").expect("agent-start record");
    assert!(start["params"]["reconciled"].to_string().contains("audit set taken from the kernel"), "{start}");
    // A later command writes the whole entry: the audit stays.
    agent.json(&["throttle", "web", "--syscalls", "100000/s"]);
    let (ok, _, _) = workload(&cg, &rx, 1, 0);
    assert_eq!(ok, 1);
    assert_eq!(would(&agent, "web", "isolate.connects_and_sends"), 6, "no later write cleared the audit");
}
