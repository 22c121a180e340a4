//! `isolate --audit` on the host: nothing is cut (the receivers outside
//! count every byte), every connect and send isolation would have refused
//! is counted exactly and sampled with audit=true; then a real isolate
//! cuts the same workload.
use std::time::Duration;

use super::{row, workload, would, Receivers, TCP_PAYLOAD, UDP_PAYLOAD};
use crate::{degrade::events::Events, harness::Agent, support::process::run_bg};

const N_TCP: u32 = 5;
const N_UDP: u32 = 20;

#[test]
fn audit_isolate_counts_would_be_refusals_and_cuts_nothing() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receivers::start();
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    let events = Events::start(&agent);
    let global_before = agent.json(&["status"])["isolation"].clone();

    let r = agent.json(&["isolate", "web", "--audit", "--reason", "what would isolation break?"]);
    assert_eq!(r["level"], "normal", "an audit is not a level: {r}");
    assert_eq!(r["audit"]["isolate"], true, "{r}");
    let st = row(&agent, "web");
    assert_eq!((st["level"].as_str(), st["audit"]["active"].as_bool(), st["audit"]["isolate"].as_bool()), (Some("normal"), Some(true), Some(true)), "{st}");
    // Journaled as its own action, intent and result.
    let j = agent.journal();
    assert!(j.iter().any(|e| e["action"] == "audit-isolate" && e["phase"] == "intent"), "audit-isolate intent journaled");
    assert!(j.iter().any(|e| e["action"] == "audit-isolate" && e["phase"] == "result" && e["outcome"] == "ok"), "audit-isolate result journaled");

    // Everything still arrives, counted by the receivers outside.
    let (ok_t, ok_u, errs) = workload(&cg, &rx, N_TCP, N_UDP);
    assert_eq!((ok_t, ok_u, errs.as_str()), (N_TCP as u64, N_UDP as u64, "[]"), "nothing refused inside the target");
    let want = (N_TCP as u64, N_TCP as u64 * TCP_PAYLOAD, N_UDP as u64, N_UDP as u64 * UDP_PAYLOAD);
    assert_eq!(rx.wait_for(want), want, "the receivers outside got every connection, datagram and byte");

    // Counted exactly: one connect4 per connect, one sendmsg4 per sendto.
    assert_eq!(would(&agent, "web", "isolate.connects_and_sends"), (N_TCP + N_UDP) as u64, "{}", row(&agent, "web"));
    // Every packet of the target's sockets, both ways (at least the datagrams and one SYN per connection).
    let packets = would(&agent, "web", "isolate.packets");
    eprintln!("isolate audit: {N_TCP} connections + {N_UDP} datagrams -> {packets} packets counted (both ways)");
    assert!(packets >= (N_TCP + N_UDP) as u64, "packets counted: {packets}");
    // Real isolation counters did not move: audit counts never mix with them.
    let global_after = agent.json(&["status"])["isolation"].clone();
    for k in ["connects_refused", "packets_dropped"] {
        assert_eq!(global_after[k], global_before[k], "{k}: real refusals unchanged under audit");
    }
    // Sampled like real denials, flagged audit, with the destination.
    let dest = format!("127.0.0.1:{}", rx.udp_port);
    events.wait(Duration::from_secs(5), "a sampled audit event for a UDP send", |evs| {
        evs.iter().any(|e| {
            e["type"] == "denial"
                && e["target"] == "web"
                && e["audit"] == true
                && e["capability"] == "isolate.connects_and_sends"
                && e["destination"] == dest.as_str()
        })
    });
    assert!(events.of("web", "denial").iter().all(|e| e["audit"] == true), "no real denial event: {:?}", events.of("web", "denial"));
    // The CLI says AUDIT plainly.
    let human = String::from_utf8_lossy(&agent.kp(&["status", "web"]).stdout).into_owned();
    assert!(human.contains("AUDIT (not enforced): isolation"), "{human}");

    // Real isolation: now cut, seen from the receivers; audit superseded.
    let before = rx.counts();
    let audited = would(&agent, "web", "isolate.connects_and_sends");
    agent.json(&["isolate", "web"]);
    let (ok_t, ok_u, errs) = workload(&cg, &rx, N_TCP, N_UDP);
    assert_eq!((ok_t, ok_u), (0, 0), "isolated: every connect and send refused ({errs})");
    assert_eq!(errs, "[1]", "EPERM only");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.counts(), before, "receivers flat after the real isolation");
    let st = row(&agent, "web");
    assert_eq!(st["audit"]["superseded_by_enforcement"]["isolate"], true, "{st}");
    assert_eq!(would(&agent, "web", "isolate.connects_and_sends"), audited, "real isolation wins: nothing more counted as audit");
    let global = agent.json(&["status"])["isolation"].clone();
    assert!(global["connects_refused"].as_u64() >= Some(global_before["connects_refused"].as_u64().unwrap_or(0) + (N_TCP + N_UDP) as u64), "{global}");
}
