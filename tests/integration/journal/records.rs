//! A record for every action, intent before and result after, and the
//! response sent only once the result is in the file.
use std::{fs, process::Stdio, time::Duration};

use serde_json::Value;

use super::{check_chain, check_pairs, kp_via_agent, lines, text, ZERO_HASH};
use crate::{
    harness::{alive, journal_text, wait_until, Agent},
    support::process::sleeping_target,
};

/// Runs a `killpath --json ARGS` through the agent, returning (its pid, parsed output).
fn kp_json_with_pid(agent: &Agent, args: &[&str]) -> (u32, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let child = agent.cmd(&a).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "killpath {args:?}: {}\n{}", text(&out), agent.log_text());
    (pid, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn every_action_has_intent_and_result_records() {
    let Some(agent) = Agent::start() else { return };
    let mut run = agent.run_bg("t", &["sleep", "1000"], 1);
    let run_pid = run.id();
    let pid = agent.target_cgroup("t").procs_recursive()[0];
    let comm = format!("/proc/{pid}/comm");
    wait_until(Duration::from_secs(10), || fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")).expect("run exec'd");
    let before_status = agent.journal().len();
    let st = agent.json(&["status", "t"]);
    assert_eq!(st["targets"][0]["level"], "normal");
    assert_eq!(agent.journal().len(), before_status, "status is read-only and journals nothing");
    let (stop_pid, stopped) = kp_json_with_pid(&agent, &["stop", "t", "--reason", "journal test"]);
    assert_eq!(stopped["survivors"], 0, "{stopped}");
    assert!(!alive(pid));
    let _ = run.wait();
    // A mutating action that fails is journaled too (intent + error result).
    let dup = kp_via_agent(&agent, &["run", "t", "--", "true"]);
    assert!(!dup.status.success() && text(&dup).contains("target-exists"), "{}", text(&dup));
    let (release_pid, released) = kp_json_with_pid(&agent, &["release", "t"]);
    assert_eq!(released["target"], "t", "{released}");

    let raw = lines(&agent.journal_path());
    let records = check_chain(&raw);
    assert_eq!(records[0]["action"], "agent-start", "{}", records[0]);
    assert_eq!(records[0]["prev_hash"], ZERO_HASH);
    let pairs = check_pairs(&records);
    let actions: Vec<&str> = pairs.iter().map(|(i, _)| i["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["run", "stop", "run", "release"], "{records:#?}");
    for (intent, result) in &pairs {
        assert_eq!(intent["target"], "t");
        for r in [intent, result] {
            assert_eq!(r["actor"]["uid"], 0, "{r}");
            assert!(r["actor"]["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
        }
        assert_eq!(intent["actor"], result["actor"], "{intent} / {result}");
    }

    // run: the caller is the `killpath run` process itself (SO_PEERCRED).
    let (i, r) = &pairs[0];
    assert_eq!(i["actor"]["pid"], run_pid, "{i}");
    assert_eq!(i["params"]["caller_pid"], run_pid, "{i}");
    assert_eq!(i["params"]["move_caller"], true, "{i}");
    assert_eq!((r["outcome"].as_str(), r["to_level"].as_u64()), (Some("ok"), Some(0)), "{r}");

    // stop: from level 0 to 4, time to effect, the reason in the intent,
    // and the response names the result record.
    let (i, r) = &pairs[1];
    assert_eq!(i["actor"]["pid"], stop_pid, "{i}");
    assert_eq!(i["params"]["reason"], "journal test", "{i}");
    assert_eq!(i["from_level"], 0, "{i}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["to_level"], 4, "{r}");
    assert_eq!(r["from_level"], 0, "{r}");
    assert!(r["time_to_effect_us"].as_u64().is_some_and(|t| t > 0), "{r}");
    assert_eq!(r["time_to_effect_us"], stopped["time_to_empty_us"], "{r} / {stopped}");
    assert_eq!(r["params"]["survivors"], 0, "{r}");
    assert_eq!(stopped["journal_seq"], r["seq"], "{stopped}");

    // the refused duplicate run
    let (_, r) = &pairs[2];
    assert!(r["outcome"].as_str().unwrap().starts_with("error"), "{r}");

    // release
    let (i, r) = &pairs[3];
    assert_eq!(i["actor"]["pid"], release_pid, "{i}");
    assert_eq!(i["from_level"], 4, "{i}");
    assert_eq!((r["outcome"].as_str(), r["to_level"].as_u64()), (Some("ok"), Some(0)), "{r}");
    assert_eq!(released["journal_seq"], r["seq"], "{released}");

    // Nothing but agent-start and the pairs.
    assert_eq!(records.len(), 1 + 2 * pairs.len(), "{records:#?}");

    // verify through the agent
    let out = kp_via_agent(&agent, &["journal", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("journal OK: {} records", records.len())), "{}", text(&out));
    let out = kp_via_agent(&agent, &["--json", "journal", "--verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["records"].as_u64()), (Some(true), Some(records.len() as u64)), "{report}");

    // list through the agent: the same records, JSON line by line
    let out = kp_via_agent(&agent, &["--json", "journal"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed, records);
    // and as text: one line per record, naming action and target
    let out = kp_via_agent(&agent, &["journal"]);
    let human = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(human.lines().count(), records.len(), "{human}");
    let stop_line = human.lines().find(|l| l.contains("result") && l.contains("stop")).unwrap_or_else(|| panic!("{human}"));
    assert!(stop_line.contains(" t ") && stop_line.contains("-> ok") && stop_line.contains("uid=0"), "{stop_line}");
}

#[test]
fn result_is_in_the_file_before_the_response() {
    let Some(agent) = Agent::start() else { return };
    for round in 0..3 {
        let name = format!("t{round}");
        let (_run, _pid) = sleeping_target(&agent, &name);
        let out = agent.kp(&["--json", "stop", &name]);
        // Read the file the instant the CLI returns.
        let raw = journal_text(&agent.journal_path());
        assert!(out.status.success(), "{}", text(&out));
        let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(raw.ends_with('\n'), "the last record is complete");
        let records: Vec<Value> = raw.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let result = records
            .iter()
            .find(|r| r["phase"] == "result" && r["action"] == "stop" && r["target"] == name.as_str())
            .unwrap_or_else(|| panic!("stop result not in the journal when the response arrived: {raw}"));
        assert_eq!(resp["journal_seq"], result["seq"], "{resp}");
        assert_eq!(result["outcome"], "ok");
        assert_eq!(records.last().unwrap()["seq"], result["seq"], "the stop result is the last record");
        let out = agent.kp(&["--json", "release", &name]);
        let raw = journal_text(&agent.journal_path());
        let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
        let last: Value = serde_json::from_str(raw.lines().last().unwrap()).unwrap();
        assert_eq!((last["action"].as_str(), last["phase"].as_str()), (Some("release"), Some("result")), "{last}");
        assert_eq!(resp["journal_seq"], last["seq"], "{resp}");
    }
}
