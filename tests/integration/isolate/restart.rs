//! An isolated target stays cut with the agent SIGKILLed; the restarted
//! agent reports it, loads nothing twice and can restore it.
use serde_json::json;

use super::{
    assert_level,
    clients::{check_dns, check_http, check_ping, dns_server},
    expected_open, level_of,
    programs::{cgroup_attachments, our_isolate_progs},
};
use crate::{
    harness::Agent,
    support::{
        net::http_server,
        process::run_bg,
        status::{strs, target_row},
    },
};

/// SIGKILL the agent while a target is isolated: the channels stay cut with
/// no agent; the restarted agent reports the target isolated, loaded no
/// second copy of the programs, and can restore it.
#[test]
fn isolate_survives_agent_sigkill_and_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let open = expected_open(&agent);
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let (dns, dns_port) = dns_server(&agent);
    let _run = run_bg(&agent, "crash", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("crash");
    let url = format!("http://127.0.0.1:{p4}/hello.txt");
    check_http(&http4, cg.path(), &url, true, "before isolate");
    agent.json(&["isolate", "crash"]);
    check_http(&http4, cg.path(), &url, false, "isolated");

    let progs = our_isolate_progs(&agent);
    let attached = cgroup_attachments(cg.path());
    assert!(progs.len() >= 6, "skb, connect4/6, sendmsg4/6, sock_create at least: {progs:?}");
    let lsm_progs = progs.iter().filter(|(_, n)| n.starts_with("kp_isolate_lsm")).count();
    assert_eq!(lsm_progs, if open.is_empty() { 8 } else { 0 }, "LSM programs (4 socket, 4 tun) loaded iff BPF LSM runs: {progs:?}");
    assert_eq!(attached.len(), 10, "skb in/out, connect4/6, sendmsg4/6, sock_create, device, setsockopt, sysctl on the target: {attached:?}");

    agent.kill9();
    check_http(&http4, cg.path(), &url, false, "agent dead");
    check_dns(&dns, dns_port, cg.path(), false, "agent dead");
    check_ping(cg.path(), false, "agent dead");

    agent.spawn();
    let (l, k) = level_of(&agent, "crash");
    assert_eq!((l.as_str(), k.as_str()), (Some("isolate"), Some("isolate")), "the restarted agent must report the truth\nagent log:\n{}", agent.log_text());
    let trow = target_row(&agent, "crash").unwrap();
    assert_eq!(strs(&trow["open_channels"]), open, "{trow}");
    assert_eq!(trow["isolation_hooks_attached"], true, "{trow}");
    assert_eq!(our_isolate_progs(&agent), progs, "the restart loaded a second copy of the programs (or lost one)");
    assert_eq!(cgroup_attachments(cg.path()), attached, "the restart changed what is attached to the target");
    let start = agent.journal().into_iter().rfind(|e| e["action"] == "agent-start").expect("agent-start event");
    assert_eq!(start["params"]["programs_attached_now"], json!([]), "nothing loaded or attached again: {start}");
    check_http(&http4, cg.path(), &url, false, "after restart");

    let r = agent.json(&["restore", "crash", "--to", "normal"]);
    assert_eq!(r["from"], "isolate", "{r}");
    assert_level(&agent, "crash", "normal", "after restore");
    check_http(&http4, cg.path(), &url, true, "restored by the restarted agent");
    check_dns(&dns, dns_port, cg.path(), true, "restored by the restarted agent");
}
