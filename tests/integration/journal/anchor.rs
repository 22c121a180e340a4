//! Anchoring: root on the host can rewrite the journal and recompute the
//! whole SHA-256 chain (done here, independently, as the format documents);
//! `journal --verify` then passes on its own, but a head kept outside the
//! host (from the events stream) fails `--verify --anchor`, offline and
//! online, the running agent catches the rewrite at its next append
//! (journaled and alerted), and with `--journal-key` the forged journal
//! fails `--verify --key`.
use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{check_chain, kp_offline, kp_via_agent, lines, text, ZERO_HASH};
use crate::{
    degrade::events::Events,
    harness::{wait_until, Agent, BIN},
    support::process::sleeping_target,
};

/// Recomputes the chain of `raw` as an attacker would: each line's body
/// (the line without `,"hash":...` and any `,"hmac":...`) gets the new
/// previous hash and its own SHA-256; HMACs are dropped (the attacker has
/// no key) unless `keep_hmac`, which copies the old HMAC strings.
fn rechain(raw: &[String], keep_hmac: bool) -> Vec<String> {
    let mut prev = ZERO_HASH.to_owned();
    raw.iter()
        .map(|line| {
            let rec: Value = serde_json::from_str(line).unwrap();
            let (hash, old_prev) = (rec["hash"].as_str().unwrap(), rec["prev_hash"].as_str().unwrap());
            let cut = line.find(&format!(",\"hash\":\"{hash}\"")).unwrap();
            let body = format!("{}}}", &line[..cut]).replacen(&format!("\"prev_hash\":\"{old_prev}\""), &format!("\"prev_hash\":\"{prev}\""), 1);
            let new = hex::encode(Sha256::digest(body.as_bytes()));
            let hmac = match (keep_hmac, rec["hmac"].as_str()) {
                (true, Some(m)) => format!(",\"hmac\":\"{m}\""),
                _ => String::new(),
            };
            prev = new.clone();
            format!("{},\"hash\":\"{new}\"{hmac}}}", &body[..body.len() - 1])
        })
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    // In place (same inode), as `sed -i` would not: the harder case.
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// `journal --verify ARGS` offline on `file`: (ok, text).
fn verify_offline(file: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["journal", "--verify", "--file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = kp_offline(&args);
    (out.status.success(), text(&out))
}

/// Replaces one record's payload (alpha's stop reason) and re-chains.
fn forge(raw: &[String], keep_hmac: bool) -> Vec<String> {
    let k = raw.iter().position(|l| l.contains("\"action\":\"stop\"") && l.contains("\"phase\":\"intent\"") && l.contains("\"target\":\"alpha\"")).unwrap();
    let mut l = raw.to_vec();
    l[k] = l[k].replacen("\"target\":\"alpha\"", "\"target\":\"alphX\"", 1);
    rechain(&l, keep_hmac)
}

#[test]
fn journal_anchor_catches_a_rechained_rewrite() {
    let hook_dir = tempfile::tempdir().unwrap();
    let hook_file = hook_dir.path().join("alerts.jsonl");
    let hook = format!("cat >> '{}'", hook_file.display());
    let Some(agent) = Agent::start_with(&["--alert-hook", &hook]) else { return };
    let ev = Events::start(&agent);
    let (_run, _) = sleeping_target(&agent, "alpha");
    agent.json(&["stop", "alpha", "--reason", "anchor test"]);

    // The head leaves with every record: the stop result's event carries it.
    let is_stop = |e: &Value| e["type"] == "journal" && e["action"] == "stop" && e["phase"] == "result";
    ev.wait(Duration::from_secs(10), "the stop result's journal event", |e| e.iter().any(is_stop));
    let all = ev.all();
    assert!(all.iter().all(|e| e["head"]["seq"].is_u64() && e["head"]["hash"].as_str().is_some_and(|h| h.len() == 64)), "every event carries the head: {all:#?}");
    let head = all.iter().find(|e| is_stop(e)).unwrap()["head"].clone();
    let anchor = format!("{}:{}", head["seq"], head["hash"].as_str().unwrap());
    // Checked independently against the file: that record has that hash.
    let path = agent.journal_path();
    let records = check_chain(&lines(&path));
    let at = records.iter().find(|r| r["seq"] == head["seq"]).expect("the anchored record is in the file");
    assert_eq!(at["hash"], head["hash"]);
    assert_eq!(at["action"], "stop");
    // The hook's alerts carry a head too; status and `journal --head` show it.
    let hooked = fs::read_to_string(&hook_file).unwrap_or_default();
    assert!(!hooked.is_empty() && hooked.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["head"]["seq"].is_u64()), "{hooked}");
    let st = agent.json(&["status"]);
    assert!(st["journal"]["head"]["seq"].as_u64() >= head["seq"].as_u64(), "{}", st["journal"]);
    let out = kp_via_agent(&agent, &["journal", "--head"]);
    let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (seq, hash) = shown.split_once(':').unwrap_or_else(|| panic!("journal --head: {}", text(&out)));
    let seq: u64 = seq.parse().unwrap_or_else(|e| panic!("journal --head seq ({e}): {shown}"));
    assert!(records.iter().any(|r| r["seq"] == seq && r["hash"] == hash) || seq > records.len() as u64, "{shown}");

    // Before the rewrite: the anchor matches, offline and online.
    assert!(verify_offline(&path, &["--anchor", &anchor]).0);
    let out = kp_via_agent(&agent, &["journal", "--verify", "--anchor", &anchor]);
    assert!(out.status.success(), "{}", text(&out));

    // Rewrite one record's payload and recompute the chain, under the running agent.
    let before = lines(&path);
    let agent_head = (before.len() as u64, serde_json::from_str::<Value>(before.last().unwrap()).unwrap()["hash"].clone());
    let forged = forge(&before, false);
    write_lines(&path, &forged);
    check_chain(&forged);
    // The limitation: the chain alone verifies.
    let (ok, out) = verify_offline(&path, &[]);
    assert!(ok, "a re-chained journal verifies without an anchor (documented): {out}");
    assert!(out.contains("no HMAC"), "{out}");
    // The anchor catches it, naming the seq and both hashes.
    let (ok, out) = verify_offline(&path, &["--anchor", &anchor]);
    let new_hash = serde_json::from_str::<Value>(&forged[head["seq"].as_u64().unwrap() as usize - 1]).unwrap()["hash"].clone();
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("seq {}", head["seq"])) && out.contains(head["hash"].as_str().unwrap()) && out.contains(new_hash.as_str().unwrap()), "{out}");
    // Online too: the caller's anchor, and the head the agent remembers.
    let out = kp_via_agent(&agent, &["--json", "journal", "--verify", "--anchor", &anchor]);
    assert!(!out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = report["problems"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"anchor-mismatch") && kinds.contains(&"rewritten"), "{report:#}");

    // The agent's next append catches it: a journal-rewritten record, an alert, the hook.
    let (_run, _) = sleeping_target(&agent, "beta");
    let recs = agent.journal();
    let note = recs.iter().find(|r| r["action"] == "journal-rewritten").unwrap_or_else(|| panic!("no journal-rewritten record: {recs:#?}"));
    assert_eq!(note["high_priority"], true);
    assert_eq!(note["params"]["expected_head"]["seq"], agent_head.0);
    assert_eq!(note["params"]["expected_head"]["hash"], agent_head.1);
    assert_ne!(note["params"]["hash_at_expected_seq"], agent_head.1, "{note}");
    ev.wait(Duration::from_secs(10), "the journal-rewritten alert", |e| e.iter().any(|e| e["type"] == "alert" && e["action"] == "journal-rewritten"));
    let hooked = wait_until(Duration::from_secs(10), || fs::read_to_string(&hook_file).unwrap_or_default().contains("journal-rewritten"));
    assert!(hooked.is_some(), "the alert hook never heard of the rewrite");
    // Nothing acknowledged after the rewrite is lost: beta's run is there.
    assert!(recs.iter().any(|r| r["action"] == "run" && r["target"] == "beta" && r["phase"] == "result"));

    // Bad anchor syntax: a clear error, offline and online.
    for bad in ["12", "x:y", &format!("0:{}", "a".repeat(64)), "5:abc"] {
        let (ok, out) = verify_offline(&path, &["--anchor", bad]);
        assert!(!ok && out.contains("bad anchor") && out.contains("SEQ:HASH"), "{bad}: {out}");
        let out = kp_via_agent(&agent, &["journal", "--verify", "--anchor", bad]);
        assert!(!out.status.success() && text(&out).contains("bad anchor"), "{bad}: {}", text(&out));
    }
}

#[test]
fn journal_key_hmac_catches_a_forgery() {
    if !crate::harness::root() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("journal.key");
    fs::write(&key, (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect::<Vec<u8>>()).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let k = key.to_str().unwrap();

    // Refused at start: readable by others, or inside the state dir.
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let open = keys.path().join("open.key");
    fs::write(&open, [5u8; 32]).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let inside = state.join("journal.key");
    fs::write(&inside, [5u8; 32]).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();
    for (bad, says) in [(&open, "group or others"), (&inside, "inside the state dir")] {
        let out = std::process::Command::new(BIN)
            .args(["--socket", scratch.path().join("s.sock").to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .args(["agent", "--pin-dir", scratch.path().join("pins").to_str().unwrap(), "--cgroup-parent", "/sys/fs/cgroup/killpath-test-nonexistent"])
            .args(["--journal-key", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success() && text(&out).contains(says), "{}: {}", bad.display(), text(&out));
    }
    assert!(!state.join("journal.jsonl").exists(), "a refused key writes nothing");

    let Some(agent) = Agent::start_with(&["--journal-key", k]) else { return };
    let (_run, _) = sleeping_target(&agent, "alpha");
    agent.json(&["stop", "alpha"]);
    let out = kp_via_agent(&agent, &["--json", "journal", "--verify"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success() && report["hmac"].as_str().is_some_and(|h| h.contains("checked")), "{report}");
    let raw = lines(&agent.journal_path());
    assert!(raw.iter().all(|l| serde_json::from_str::<Value>(l).unwrap()["hmac"].as_str().is_some_and(|m| m.len() == 64)), "every record carries an HMAC");

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("journal.jsonl");
    write_lines(&copy, &raw);
    let (ok, out) = verify_offline(&copy, &["--key", k]);
    assert!(ok && out.contains("HMAC checked"), "{out}");
    let (ok, out) = verify_offline(&copy, &[]);
    assert!(ok && out.contains("not checked"), "{out}");

    // Forged without the key: HMACs dropped, chain recomputed.
    write_lines(&copy, &forge(&raw, false));
    let (ok, out) = verify_offline(&copy, &[]);
    assert!(ok, "the chain alone verifies: {out}");
    let (ok, out) = verify_offline(&copy, &["--key", k]);
    assert!(!ok && out.contains("no record carries an HMAC"), "{out}");
    // Forged keeping the old HMAC strings: they do not match the new hashes.
    write_lines(&copy, &forge(&raw, true));
    let (ok, out) = verify_offline(&copy, &["--key", k]);
    assert!(!ok && out.contains("HMAC does not match"), "{out}");
    // A wrong key fails the genuine journal.
    write_lines(&copy, &raw);
    let (ok, out) = verify_offline(&copy, &["--key", open.to_str().unwrap()]);
    assert!(!ok && out.contains("HMAC does not match"), "{out}");
    // --key online (no file) is a clear usage error.
    let out = kp_via_agent(&agent, &["journal", "--verify", "--key", k]);
    assert!(!out.status.success() && text(&out).contains("--file"), "{}", text(&out));
}
