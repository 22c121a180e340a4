//! The journal: a record for every action (intent before, result after),
//! a hash chain that `journal --verify` checks, online and offline (no
//! agent, a state dir or a journal file), and that fails when a byte is
//! changed or a line removed or moved; the response to a command is sent
//! only once its result is in the file; a crash leaves nothing torn and
//! closes interrupted actions on restart; `--follow` streams new records.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use killpath::journal::{append_to_file, Actor, Entry, Phase};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{alive, wait_until, Agent, BIN};

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------- helpers

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
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

/// Verification fails, and the first problem is on line `line`, which the
/// text output names.
fn assert_fails_at(path: &Path, line: u64) -> Value {
    let (ok, out, report) = verify_file(path);
    assert!(!ok, "tampered journal {} passed verification:\n{out}", path.display());
    assert!(out.contains("FAILED"), "{out}");
    let problems = report["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{report}");
    assert_eq!(problems[0]["line"], line, "first problem should be on line {line}: {report}");
    assert!(out.contains(&format!("line {line}")), "output should name line {line}:\n{out}");
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

/// A running target (`sleep`) and its pid.
fn target(agent: &Agent, name: &str) -> (Child, i32) {
    let child = agent.run_bg(name, &["sleep", "1000"], 1);
    let pids = agent.target_cgroup(name).procs_recursive();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // run_bg returns once `killpath run` is in the cgroup, which is before
    // the agent has answered (and journaled the result); it execs CMD only
    // after the answer.
    let comm = format!("/proc/{}/comm", pids[0]);
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep"))
        .unwrap_or_else(|| panic!("target {name} never exec'd its command"));
    (child, pids[0])
}

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

/// Replaces the one byte at `pos` of `line` with `new` (must differ).
fn flip(line: &str, pos: usize, new: u8) -> String {
    let mut b = line.as_bytes().to_vec();
    assert_ne!(b[pos], new);
    b[pos] = new;
    String::from_utf8(b).unwrap()
}

// ------------------------------------------------------------------ tests

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
fn offline_verify_and_tamper_detection() {
    let Some(mut agent) = Agent::start() else { return };
    let _run = target(&agent, "alpha");
    agent.json(&["stop", "alpha"]);
    agent.json(&["release", "alpha"]);
    let _run = target(&agent, "beta");
    agent.json(&["stop", "beta"]);
    agent.kill9();

    let journal = agent.journal_path();
    let original = fs::read(&journal).unwrap();
    let raw = lines(&journal);
    let records = check_chain(&raw);
    let n = raw.len();
    assert!(n >= 9, "{raw:#?}");

    // Offline on the file, and on the state dir; neither touches the file.
    let report = assert_verifies(&journal);
    assert_eq!(report["records"], n as u64, "{report}");
    let sd = agent.state_dir.to_str().unwrap();
    let out = kp_offline(&["--state-dir", sd, "journal", "--verify", "--offline"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("journal OK: {n} records")), "{}", text(&out));
    // Listing offline works too.
    let out = kp_offline(&["--json", "--state-dir", sd, "journal", "--offline"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed, records);
    let out = kp_offline(&["--json", "journal", "--file", journal.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
    assert_eq!(fs::read(&journal).unwrap(), original, "offline reading changed the journal");

    let tmp = tempfile::tempdir().unwrap();
    // A record in the middle: the stop intent for alpha.
    let k = records.iter().position(|r| r["action"] == "stop" && r["phase"] == "intent" && r["target"] == "alpha").unwrap();
    assert!(k > 0 && k + 1 < n);
    let line_no = k as u64 + 1;
    let mid = &raw[k];

    // One letter of the target name.
    let pos = mid.find("\"target\":\"alpha\"").unwrap() + "\"target\":\"".len();
    let mut l = raw.clone();
    l[k] = flip(mid, pos, b'A');
    let p = tmp.path().join("name.jsonl");
    write_lines(&p, &l);
    assert!(serde_json::from_str::<Value>(&l[k]).is_ok(), "still valid JSON");
    let report = assert_fails_at(&p, line_no);
    assert_eq!(report["problems"][0]["kind"], "hash-mismatch", "{report}");
    assert!(report["problems"].as_array().unwrap().iter().all(|p| p["line"] == line_no), "only the edited line is flagged: {report}");

    // One digit of the time.
    let pos = mid.find("\"time_unix_us\":").unwrap() + "\"time_unix_us\":".len() + 5;
    let digit = mid.as_bytes()[pos];
    let mut l = raw.clone();
    l[k] = flip(mid, pos, if digit == b'9' { b'8' } else { digit + 1 });
    let p = tmp.path().join("time.jsonl");
    write_lines(&p, &l);
    assert!(serde_json::from_str::<Value>(&l[k]).is_ok(), "still valid JSON");
    assert_fails_at(&p, line_no);

    // One hex digit of the record's own hash: its line and the chain to it break.
    let pos = mid.len() - 3;
    let c = mid.as_bytes()[pos];
    let mut l = raw.clone();
    l[k] = flip(mid, pos, if c == b'0' { b'1' } else { b'0' });
    let p = tmp.path().join("hash.jsonl");
    write_lines(&p, &l);
    let report = assert_fails_at(&p, line_no);
    assert!(report["problems"].as_array().unwrap().iter().any(|p| p["line"] == line_no + 1 && p["kind"] == "chain-break"), "{report}");

    // A byte flipped in place in the file (no re-serialising of other lines).
    let mut bytes = original.clone();
    let offset: usize = raw[..k].iter().map(|l| l.len() + 1).sum::<usize>() + mid.find("\"action\":\"stop\"").unwrap() + 10;
    bytes[offset] = b'x';
    let p = tmp.path().join("inplace.jsonl");
    fs::write(&p, &bytes).unwrap();
    assert_fails_at(&p, line_no);

    // One line removed.
    let mut l = raw.clone();
    l.remove(k);
    let p = tmp.path().join("removed.jsonl");
    write_lines(&p, &l);
    let report = assert_fails_at(&p, line_no);
    let kinds: Vec<&str> = report["problems"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"seq-gap") && kinds.contains(&"chain-break"), "{report}");
    // The first line removed.
    let p = tmp.path().join("removed-first.jsonl");
    write_lines(&p, &raw[1..]);
    assert_fails_at(&p, 1);

    // Two lines swapped.
    let mut l = raw.clone();
    l.swap(k, k + 1);
    let p = tmp.path().join("swapped.jsonl");
    write_lines(&p, &l);
    assert_fails_at(&p, line_no);

    // A line duplicated.
    let mut l = raw.clone();
    l.insert(k + 1, raw[k].clone());
    let p = tmp.path().join("dup.jsonl");
    write_lines(&p, &l);
    assert_fails_at(&p, line_no + 1);

    // A forged line inserted.
    let mut l = raw.clone();
    l.insert(k, "{\"seq\":1}".into());
    let p = tmp.path().join("forged.jsonl");
    write_lines(&p, &l);
    assert_fails_at(&p, line_no);

    // Offline listing of a tampered file refuses too, naming the line.
    let p = tmp.path().join("name.jsonl");
    let out = kp_offline(&["journal", "--file", p.to_str().unwrap()]);
    assert!(!out.status.success(), "listing a tampered journal succeeded: {}", text(&out));
    assert!(text(&out).contains(&format!("line {line_no}")), "{}", text(&out));

    // The state-dir form fails on a tampered journal as well.
    let sd2 = tmp.path().join("state");
    fs::create_dir(&sd2).unwrap();
    fs::copy(tmp.path().join("swapped.jsonl"), sd2.join("journal.jsonl")).unwrap();
    let out = kp_offline(&["--state-dir", sd2.to_str().unwrap(), "journal", "--verify", "--offline"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("line {line_no}")), "{}", text(&out));

    // The original is intact and still verifies.
    assert_eq!(fs::read(&journal).unwrap(), original);
    assert_verifies(&journal);
}

#[test]
fn result_is_in_the_file_before_the_response() {
    let Some(agent) = Agent::start() else { return };
    for round in 0..3 {
        let name = format!("t{round}");
        let (_run, _pid) = target(&agent, &name);
        let out = agent.kp(&["--json", "stop", &name]);
        // Read the file the instant the CLI returns.
        let raw = fs::read_to_string(agent.journal_path()).unwrap();
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
        let raw = fs::read_to_string(agent.journal_path()).unwrap();
        let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
        let last: Value = serde_json::from_str(raw.lines().last().unwrap()).unwrap();
        assert_eq!((last["action"].as_str(), last["phase"].as_str()), (Some("release"), Some("result")), "{last}");
        assert_eq!(resp["journal_seq"], last["seq"], "{resp}");
    }
}

#[test]
fn torn_tail_is_truncated_on_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (_run, pid) = target(&agent, "t");
    agent.kill9();
    let journal = agent.journal_path();
    let good = fs::read(&journal).unwrap();
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
    assert!(after.starts_with(&good), "records before the torn tail were changed");
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
    let (_run, pid) = target(&agent, "t");
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

/// Spawns `killpath ARGS` and forwards its stdout lines to a channel.
fn follow(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads records from `rx` until one satisfies `want` (within 5 s); returns all read.
fn read_until(rx: &mpsc::Receiver<String>, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("--follow did not print {what} within 5 s; got {got:#?}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("--follow printed non-JSON ({e}): {line}"));
        let done = want(&v);
        got.push(v);
        if done {
            return got;
        }
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn follow_prints_new_records() {
    let Some(agent) = Agent::start() else { return };
    // Through the agent, and offline on the state dir.
    let mut online = agent.cmd(&["--json", "journal", "--follow"]);
    online.env_remove("KILLPATH_STATE_DIR");
    let (c1, rx1) = follow(online);
    let _c1 = Killed(c1);
    let mut offline = Command::new(BIN);
    offline.args(["--json", "--state-dir", agent.state_dir.to_str().unwrap(), "journal", "--follow", "--offline"]);
    let (c2, rx2) = follow(offline);
    let _c2 = Killed(c2);

    let mut seen1 = read_until(&rx1, "agent-start", |r| r["action"] == "agent-start");
    let mut seen2 = read_until(&rx2, "agent-start", |r| r["action"] == "agent-start");

    let (_run, _) = target(&agent, "t");
    let is_run_result = |r: &Value| r["action"] == "run" && r["phase"] == "result";
    seen1.extend(read_until(&rx1, "the run result", is_run_result));
    seen2.extend(read_until(&rx2, "the run result", is_run_result));

    agent.json(&["stop", "t"]);
    let is_stop_result = |r: &Value| r["action"] == "stop" && r["phase"] == "result";
    seen1.extend(read_until(&rx1, "the stop result", is_stop_result));
    seen2.extend(read_until(&rx2, "the stop result", is_stop_result));

    // Each record once, in order, exactly as in the file.
    let file = agent.journal();
    for seen in [&seen1, &seen2] {
        assert_eq!(seen.as_slice(), &file[..seen.len()], "--follow output differs from the file");
        assert_eq!(seen.len(), file.len(), "{seen:#?}");
    }
    // Nothing more appears while nothing happens.
    std::thread::sleep(Duration::from_millis(600));
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err(), "--follow printed records that were not written");
}
