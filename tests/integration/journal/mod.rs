//! The journal: a record for every action (intent before, result after),
//! a hash chain that `journal --verify` checks, online and offline (no
//! agent, a state dir or a journal file), and that fails when a byte is
//! changed or a line removed or moved; the response to a command is sent
//! only once its result is in the file; a crash leaves nothing torn and
//! closes interrupted actions on restart; `--follow` streams new records.
//!
//! One file per feature; the helpers below (offline runs of the CLI,
//! `journal --verify --file`, the hash chain and intent/result pairs
//! recomputed here) are shared by them.
mod anchor;
mod crash;
mod follow;
mod records;
mod reserve;
mod verify;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{journal_text, Agent, BIN};

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn lines(path: &Path) -> Vec<String> {
    assert!(path.exists(), "{} does not exist", path.display());
    journal_text(path).lines().map(str::to_owned).collect()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `killpath ARGS` with no agent or state dir in its environment: only what
/// the arguments say. The socket points nowhere.
fn kp_offline(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("KILLPATH_SOCKET", "/nonexistent/killpath-test.sock")
        .env_remove("KILLPATH_STATE_DIR")
        .env_remove("KILLPATH_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `killpath ARGS` through the agent only (no state dir in the environment,
/// so nothing is read locally).
fn kp_via_agent(agent: &Agent, args: &[&str]) -> Output {
    agent.cmd(args).env_remove("KILLPATH_STATE_DIR").stdin(Stdio::null()).output().unwrap()
}

/// `journal --verify --file PATH` (text and JSON): (exit ok, text output, report).
fn verify_file(path: &Path) -> (bool, String, Value) {
    let p = path.to_str().unwrap();
    let out = kp_offline(&["journal", "--verify", "--file", p]);
    let json = kp_offline(&["--json", "journal", "--verify", "--file", p]);
    assert_eq!(out.status.success(), json.status.success(), "text and JSON verify disagree");
    let report: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("verify --json ({e}): {}", text(&json)));
    assert_eq!(report["ok"].as_bool(), Some(out.status.success()), "exit status and report disagree: {report}");
    (out.status.success(), text(&out), report)
}

fn assert_verifies(path: &Path) -> Value {
    let (ok, out, report) = verify_file(path);
    assert!(ok, "journal {} should verify:\n{out}", path.display());
    assert!(out.contains("journal OK"), "{out}");
    report
}

/// The hash chain, recomputed here from the raw lines: each line is the
/// compact body with `,"hash":"<sha256 of body>"}` in place of its final
/// `}`; seqs run 1..N; each prev_hash is the previous line's hash.
fn check_chain(raw: &[String]) -> Vec<Value> {
    assert!(!raw.is_empty(), "empty journal");
    let mut prev = ZERO_HASH.to_owned();
    let mut records = Vec::new();
    for (i, line) in raw.iter().enumerate() {
        let rec: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", i + 1));
        let hash = rec["hash"].as_str().unwrap_or_else(|| panic!("line {} has no hash: {line}", i + 1));
        let suffix = format!(",\"hash\":\"{hash}\"}}");
        let body = format!("{}}}", line.strip_suffix(&suffix).unwrap_or_else(|| panic!("hash is not the last field: {line}")));
        assert_eq!(hex::encode(Sha256::digest(body.as_bytes())), hash, "line {}: hash is not SHA-256 of the body", i + 1);
        assert_eq!(rec["seq"], i as u64 + 1, "seqs are 1..N without gaps: {line}");
        assert_eq!(rec["prev_hash"], prev.as_str(), "line {}: prev_hash is not the previous record's hash", i + 1);
        assert!(rec["time_unix_us"].as_u64().is_some_and(|t| t > 0) && rec["time"].is_string(), "{line}");
        prev = hash.to_owned();
        records.push(rec);
    }
    records
}

/// Every intent has exactly one result naming it (later, same action and
/// target, same actor), and every result names an earlier intent.
/// Returns (intent, result) pairs in journal order.
fn check_pairs(records: &[Value]) -> Vec<(Value, Value)> {
    let by_seq: HashMap<u64, &Value> = records.iter().map(|r| (r["seq"].as_u64().unwrap(), r)).collect();
    let mut pairs = Vec::new();
    for intent in records.iter().filter(|r| r["phase"] == "intent") {
        let results: Vec<&Value> = records.iter().filter(|r| r["phase"] == "result" && r["intent_seq"] == intent["seq"]).collect();
        assert_eq!(results.len(), 1, "intent {intent} needs exactly one result: {results:?}");
        let result = results[0];
        assert!(result["seq"].as_u64() > intent["seq"].as_u64(), "result before its intent: {result}");
        assert_eq!(result["action"], intent["action"], "{intent} / {result}");
        assert_eq!(result["target"], intent["target"], "{intent} / {result}");
        assert!(result["outcome"].is_string(), "result without outcome: {result}");
        assert!(result["time_unix_us"].as_u64() >= intent["time_unix_us"].as_u64(), "{intent} / {result}");
        pairs.push((intent.clone(), result.clone()));
    }
    for result in records.iter().filter(|r| r["phase"] == "result") {
        let seq = result["intent_seq"].as_u64().unwrap_or_else(|| panic!("result without intent_seq: {result}"));
        assert_eq!(by_seq.get(&seq).map(|r| &r["phase"]), Some(&Value::from("intent")), "{result} names no intent");
    }
    pairs
}
