//! The agent keeps written zeros ahead of the journal's last line: records
//! go over them (the file does not grow), readers stop at the first NUL,
//! and a crash with zeros ahead loses nothing acknowledged.
use std::fs;

use super::{assert_verifies, check_chain, check_pairs, kp_via_agent, lines, text};
use crate::{harness::Agent, support::process::sleeping_target};

#[test]
fn journal_records_go_into_zeros_kept_ahead_and_survive_a_crash() {
    let Some(mut agent) = Agent::start() else { return };
    let journal = agent.journal_path();
    let (_run, _pid) = sleeping_target(&agent, "t");
    let size = fs::metadata(&journal).unwrap().len();
    let logical = lines(&journal).iter().map(|l| l.len() as u64 + 1).sum::<u64>();
    assert!(size >= logical + 512 * 1024, "zeros ahead of the tail: file {size} bytes, records {logical}");
    for _ in 0..5 {
        agent.json(&["isolate", "t"]);
        agent.json(&["restore", "t", "--to", "normal"]);
    }
    let bytes = fs::read(&journal).unwrap();
    assert_eq!(bytes.len() as u64, size, "the records went into the zeros: the file did not grow");
    let raw = lines(&journal);
    let end: usize = raw.iter().map(|l| l.len() + 1).sum();
    assert!(bytes[end..].iter().all(|&b| b == 0), "only zeros after the last record");
    check_pairs(&check_chain(&raw));
    assert_verifies(&journal);

    // A crash with zeros ahead: every acknowledged record is there, the
    // restarted agent goes on after the last one.
    let acknowledged = agent.json(&["isolate", "t"])["journal_seq"].as_u64().unwrap();
    agent.kill9();
    let raw = lines(&journal);
    let records = check_chain(&raw);
    assert_eq!(records.last().unwrap()["seq"], acknowledged);
    let report = assert_verifies(&journal);
    assert_eq!(report["records"], raw.len() as u64, "{report}");
    agent.spawn();
    let r = agent.json(&["restore", "t", "--to", "normal"]);
    let records = check_chain(&lines(&journal));
    assert!(records.iter().any(|x| x["seq"] == acknowledged && x["phase"] == "result"), "the acknowledged isolate result is kept");
    assert_eq!(records.last().unwrap()["seq"], r["journal_seq"]);
    check_pairs(&records);
    let out = kp_via_agent(&agent, &["journal", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
}
