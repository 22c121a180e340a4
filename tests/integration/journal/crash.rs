//! A crash leaves nothing torn, and actions it interrupted are closed on
//! restart.
use std::{fs, io::Write as _};

use killpath::journal::{append_to_file, Actor, Entry, Phase};
use serde_json::Value;

use super::{assert_verifies, check_chain, check_pairs, kp_via_agent, lines, text, verify_file};
use crate::{
    harness::{alive, journal_text, Agent},
    support::process::sleeping_target,
};

#[test]
fn torn_tail_is_truncated_on_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    agent.kill9();
    let journal = agent.journal_path();
    let good = journal_text(&journal);
    let n = lines(&journal).len();
    let torn = br#"{"seq":999,"time_unix_us":17000,"time":"20"#;
    fs::OpenOptions::new().append(true).open(&journal).unwrap().write_all(torn).unwrap();

    // Offline, the torn tail is reported as such (and only that).
    let (_, _, report) = verify_file(&journal);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!((problems[0]["kind"].as_str(), problems[0]["line"].as_u64()), (Some("torn-tail"), Some(n as u64 + 1)), "{report}");
    assert_eq!(report["records"], n as u64);

    agent.spawn();
    let after = fs::read(&journal).unwrap();
    assert!(journal_text(&journal).starts_with(&good), "records before the torn tail were changed");
    assert!(!String::from_utf8_lossy(&after).contains("\"seq\":999"), "torn tail still there");
    let raw = lines(&journal);
    let records = check_chain(&raw);
    let start = records.iter().rev().find(|r| r["action"] == "agent-start").unwrap();
    assert_eq!(start["seq"], n as u64 + 1, "agent-start follows the last good record: {start}");
    assert_eq!(start["params"]["torn_bytes_truncated"], torn.len() as u64, "{start}");
    assert_eq!(start["params"]["interrupted_actions"], 0, "{start}");
    assert_verifies(&journal);
    let out = kp_via_agent(&agent, &["journal", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));

    // The target survived the agent's crash and is still managed.
    assert!(alive(pid));
    let st = agent.json(&["status", "t"]);
    assert_eq!(st["targets"][0]["level"], "normal", "{st}");
    let r = agent.json(&["stop", "t"]);
    assert_eq!(r["survivors"], 0, "{r}");
    check_pairs(&check_chain(&lines(&journal)));
    assert_verifies(&journal);
}

#[test]
fn interrupted_intent_gets_a_result_on_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    agent.kill9();
    let journal = agent.journal_path();
    // The agent died between an intent and its result.
    let mut e = Entry::new(Actor::Caller { uid: 0, pid: 4242 }, Phase::Intent, "stop");
    e.target = Some("t".into());
    e.from_level = Some(0);
    e.params = serde_json::json!({"reason": "interrupted-test"});
    let intent = append_to_file(&journal, e).expect("append intent while the agent is dead");
    assert_verifies(&journal);

    agent.spawn();
    let records = check_chain(&lines(&journal));
    let results: Vec<&Value> = records.iter().filter(|r| r["intent_seq"] == intent.seq).collect();
    assert_eq!(results.len(), 1, "{records:#?}");
    let r = results[0];
    assert_eq!(r["phase"], "result", "{r}");
    assert_eq!(r["action"], "stop", "{r}");
    assert_eq!(r["target"], "t", "{r}");
    assert_eq!(r["from_level"], 0, "{r}");
    assert!(r["outcome"].as_str().unwrap().starts_with("interrupted"), "{r}");
    assert_eq!(r["actor"]["source"], "agent-recovery", "{r}");
    assert_eq!(r["seq"], intent.seq + 1, "closed first thing on start: {r}");
    let start = records.iter().rev().find(|r| r["action"] == "agent-start").unwrap();
    assert_eq!(start["params"]["interrupted_actions"], 1, "{start}");
    assert!(start["seq"].as_u64() > r["seq"].as_u64());
    check_pairs(&records);
    assert_verifies(&journal);

    // The interrupted stop did nothing by itself; the state comes from the kernel.
    assert!(alive(pid));
    let st = agent.json(&["status", "t"]);
    assert_eq!(st["targets"][0]["level"], "normal", "{st}");

    // A second restart does not close it again.
    agent.kill9();
    agent.spawn();
    let records = check_chain(&lines(&journal));
    assert_eq!(records.iter().filter(|r| r["intent_seq"] == intent.seq).count(), 1);
    let start = records.iter().rev().find(|r| r["action"] == "agent-start").unwrap();
    assert_eq!(start["params"]["interrupted_actions"], 0, "{start}");
    check_pairs(&records);
}
