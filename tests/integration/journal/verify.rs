//! `journal --verify`, online and offline, and the tampering it catches:
//! a changed byte, a removed or moved line.
use std::{fs, path::Path};

use serde_json::Value;

use super::{assert_verifies, check_chain, kp_offline, lines, text, verify_file};
use crate::{harness::Agent, support::process::sleeping_target};

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// Replaces the one byte at `pos` of `line` with `new` (must differ).
fn flip(line: &str, pos: usize, new: u8) -> String {
    let mut b = line.as_bytes().to_vec();
    assert_ne!(b[pos], new);
    b[pos] = new;
    String::from_utf8(b).unwrap()
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

#[test]
fn offline_verify_and_tamper_detection() {
    let Some(mut agent) = Agent::start() else { return };
    let _run = sleeping_target(&agent, "alpha");
    agent.json(&["stop", "alpha"]);
    agent.json(&["release", "alpha"]);
    let _run = sleeping_target(&agent, "beta");
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
