use super::*;
use std::os::unix::fs::PermissionsExt;

fn entry(phase: Phase, action: &str) -> Entry {
    let mut e = Entry::new(Actor::Caller { uid: 0, pid: 42 }, phase, action);
    e.target = Some(format!("workload-{action}"));
    e
}

/// A journal (in a not yet existing subdirectory) with 4 events targeting workload-1..4.
fn four() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/journal.jsonl");
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.truncated_bytes, 0);
    for i in 1..=4 {
        journal.append(entry(Phase::Event, &i.to_string())).unwrap();
    }
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn kinds(path: &Path) -> Vec<(u64, String)> {
    let problems = verify_file(path).unwrap().problems;
    problems.into_iter().map(|p| (p.line, p.kind)).collect()
}

fn kind(line: u64, kind: &str) -> (u64, String) {
    (line, kind.to_owned())
}

#[test]
fn append_and_verify_ok() {
    let (_dir, path) = four();
    let report = verify_file(&path).unwrap();
    assert!(report.ok && report.records == 4, "{report:?}");
    let all = read_records(&path, 0).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!((all[0].prev_hash.as_str(), &all[2].prev_hash), (ZERO_HASH, &all[1].hash));
    assert_eq!(read_records(&path, 2).unwrap(), all[2..]);
    assert_eq!(lines(&path)[3], serde_json::to_string(&all[3]).unwrap());
    assert!(lines(&path)[3].ends_with(&format!(",\"hash\":\"{}\"}}", all[3].hash)));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

/// A batch is consecutive records of the one chain: single appends before
/// and after it, a reopen, and verification all see one chain.
#[test]
fn batch_append_continues_the_chain() {
    let (_dir, path) = four();
    let (mut journal, _) = Journal::open(&path).unwrap();
    let batch = journal.append_batch((5..=7).map(|i| entry(Phase::Event, &i.to_string())).collect()).unwrap();
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(journal.head().hash, batch[2].hash);
    assert!(journal.append_batch(Vec::new()).unwrap().is_empty());
    journal.append(entry(Phase::Event, "8")).unwrap();
    assert_eq!(journal.size(), fs::metadata(&path).unwrap().len());
    drop(journal);
    let report = verify_file(&path).unwrap();
    assert!(report.ok && report.records == 8, "{report:?}");
    let all = read_records(&path, 0).unwrap();
    assert_eq!(all[4].prev_hash, all[3].hash);
    assert_eq!(all[7].prev_hash, all[6].hash);
    assert_eq!(all[5], batch[1]);
    let (journal, _) = Journal::open(&path).unwrap();
    assert_eq!(journal.last_seq(), 8);
}

#[test]
fn edited_byte_is_a_hash_mismatch() {
    let (_dir, path) = four();
    let mut l = lines(&path);
    l[1] = l[1].replace("workload-2", "workload-X");
    write_lines(&path, &l);
    assert_eq!(kinds(&path), [kind(2, "hash-mismatch")]);
    let message = &verify_file(&path).unwrap().problems[0].message;
    assert!(message.starts_with("line 2 (seq 2): content does not match its hash"));
    assert!(matches!(Journal::open(&path), Err(JournalError::Corrupt { .. })));
    assert!(read_records(&path, 0).unwrap_err().to_string().contains("line 2 (seq 2)"));
    // Whatever byte sits in the middle of line 2, flipping it is caught on line 2.
    let mut bytes = fs::read(&path).unwrap();
    let mid = l[0].len() + 1 + l[1].len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert!(kinds(&path).iter().all(|(line, _)| *line == 2));
}

#[test]
fn removed_line_breaks_the_chain() {
    let (_dir, path) = four();
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    assert_eq!(kinds(&path), [kind(2, "seq-gap"), kind(2, "chain-break")]);
}

#[test]
fn swapped_lines_are_detected() {
    let (_dir, path) = four();
    let mut l = lines(&path);
    l.swap(1, 2);
    write_lines(&path, &l);
    let found = kinds(&path);
    assert!(found.contains(&kind(2, "chain-break")) && found.contains(&kind(3, "seq-gap")));
    assert!(!verify_file(&path).unwrap().ok);
}

#[test]
fn malformed_line_is_named() {
    let (_dir, path) = four();
    let mut l = lines(&path);
    l.insert(2, "hello".into());
    write_lines(&path, &l);
    assert_eq!(kinds(&path), [kind(3, "malformed")]);
    assert!(read_records(&path, 0).unwrap_err().to_string().contains("line 3:"));
}

#[test]
fn torn_tail_is_truncated_on_open() {
    let (_dir, path) = four();
    let torn = b"{\"seq\":5,\"time_unix";
    OpenOptions::new().append(true).open(&path).unwrap().write_all(torn).unwrap();
    assert_eq!(kinds(&path), [kind(5, "torn-tail")]);
    assert_eq!(verify_file(&path).unwrap().records, 4);
    assert_eq!(read_records(&path, 0).unwrap().len(), 4);
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.truncated_bytes, torn.len() as u64);
    assert_eq!(journal.append(entry(Phase::Event, "5")).unwrap().seq, 5);
    assert!(verify_file(&path).unwrap().ok);
}

#[test]
fn dangling_intents_are_reported() {
    let (_dir, path) = four();
    let (mut journal, _) = Journal::open(&path).unwrap();
    let stop = journal.append(entry(Phase::Intent, "stop")).unwrap();
    let mut result = entry(Phase::Result, "stop");
    (result.intent_seq, result.outcome) = (Some(stop.seq), Some("ok".into()));
    journal.append(result).unwrap();
    let run = journal.append(entry(Phase::Intent, "run")).unwrap();
    drop(journal);
    let (_, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.dangling_intents, [run]);
}

#[test]
fn reopen_continues_seq_and_chain() {
    let (_dir, path) = four();
    let last = read_records(&path, 3).unwrap().remove(0);
    let (mut journal, _) = Journal::open(&path).unwrap();
    assert_eq!((journal.last_seq(), journal.path()), (4, path.as_path()));
    let next = journal.append(entry(Phase::Event, "5")).unwrap();
    assert_eq!((next.seq, next.prev_hash), (5, last.hash));
    assert!(verify_file(&path).unwrap().ok);
}

#[test]
fn second_open_is_locked() {
    let (_dir, path) = four();
    let held = Journal::open(&path).unwrap();
    assert!(matches!(Journal::open(&path), Err(JournalError::Locked { .. })));
    let appended = append_to_file(&path, entry(Phase::Event, "x"));
    assert!(matches!(appended, Err(JournalError::Locked { .. })));
    drop(held);
    assert_eq!(append_to_file(&path, entry(Phase::Event, "x")).unwrap().seq, 5);
}

#[test]
fn import_fallback_moves_records_and_renames() {
    let dir = tempfile::tempdir().unwrap();
    let (main, fallback) = (dir.path().join("journal"), dir.path().join("fallback"));
    let mut e = Entry::new(Actor::Source { source: "cli-fallback".into() }, Phase::Result, "stop");
    (e.target, e.outcome, e.time_to_effect_us) = (Some("w1".into()), Some("ok".into()), Some(7));
    let first = append_to_file(&fallback, e.clone()).unwrap();
    append_to_file(&fallback, e).unwrap();
    let original = fs::read_to_string(&fallback).unwrap();
    let (mut journal, _) = Journal::open(&main).unwrap();
    assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 2);
    assert!(!fallback.exists());
    let renamed = fs::read_dir(dir.path()).unwrap().filter(|f| {
        let name = f.as_ref().unwrap().file_name();
        name.to_string_lossy().starts_with("fallback.imported-")
    });
    assert_eq!(renamed.count(), 1);
    let got = read_records(&main, 0).unwrap();
    let imported = &got[0].entry;
    assert_eq!((imported.actor.clone(), imported.phase), (first.entry.actor.clone(), Phase::Event));
    assert_eq!((imported.action.as_str(), imported.target.as_deref()), ("fallback-imported", Some("w1")));
    assert_eq!((imported.outcome.as_deref(), imported.time_to_effect_us), (Some("ok"), Some(7)));
    assert_eq!(imported.params["fallback_record"], serde_json::to_value(&first).unwrap());
    assert!(imported.params.get("fallback_verify").is_none());
    // A crash before the rename: importing the same file again duplicates nothing.
    fs::write(&fallback, &original).unwrap();
    assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 0);
    // A tampered fallback is still imported, with the problems attached.
    fs::write(&fallback, original.replace("w1", "w2")).unwrap();
    assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 2);
    let last = read_records(&main, 3).unwrap().remove(0);
    assert_eq!(last.entry.params["fallback_verify"][0]["kind"], "hash-mismatch");
    assert_eq!(import_fallback(&mut journal, &fallback).unwrap(), 0);
    assert!(verify_file(&main).unwrap().ok);
}

/// Child half of `record_survives_crash`: appends, then exits without dropping anything.
#[test]
fn crash_child() {
    if let Some(path) = std::env::var_os("KILLPATH_JOURNAL_CRASH_PATH") {
        let (mut journal, _) = Journal::open(Path::new(&path)).unwrap();
        journal.append(entry(Phase::Intent, "crash")).unwrap();
        std::process::exit(0);
    }
}

#[test]
fn record_survives_crash() {
    let (_dir, path) = four();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--test-threads=1"])
        .env("KILLPATH_JOURNAL_CRASH_PATH", &path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (_, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.dangling_intents.len(), 1);
    assert_eq!(recovery.dangling_intents[0].entry.action, "crash");
    assert!(verify_file(&path).unwrap().ok);
}

#[test]
fn rfc3339_utc_microseconds() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
    assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
}

/// Re-chains `lines` as an attacker would: each body hashed again with
/// SHA-256, each prev_hash pointing at the new hash before it (no HMAC).
fn rechain(lines: &[String]) -> Vec<String> {
    let mut prev = ZERO_HASH.to_owned();
    lines
        .iter()
        .map(|l| {
            let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(l).unwrap();
            v.remove("hash");
            v.remove("hmac");
            v.insert("prev_hash".into(), prev.clone().into());
            let rec: Record = serde_json::from_value(serde_json::Value::Object({
                let mut m = v.clone();
                m.insert("hash".into(), "".into());
                m
            }))
            .unwrap();
            let body = Body { seq: rec.seq, time_unix_us: rec.time_unix_us, time: rec.time, prev_hash: rec.prev_hash, entry: rec.entry };
            let mut line = serde_json::to_vec(&body).unwrap();
            let hash = hex::encode(Sha256::digest(&line));
            line.pop();
            line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}").as_bytes());
            prev = hash;
            String::from_utf8(line).unwrap()
        })
        .collect()
}

fn opts(anchor: Option<&str>, key: Option<&Key>) -> VerifyOptions {
    VerifyOptions { anchor: anchor.map(|a| Anchor::parse(a).unwrap()), key: key.cloned(), written: None }
}

#[test]
fn anchor_catches_a_rechained_rewrite() {
    let (_dir, path) = four();
    let head = head_of_file(&path).unwrap();
    assert_eq!(head.seq, 4);
    let anchor = head.anchor();
    assert!(verify_file_with(&path, &opts(Some(&anchor), None)).unwrap().ok);
    let mut l = lines(&path);
    l[1] = l[1].replace("workload-2", "workload-X");
    write_lines(&path, &rechain(&l));
    let plain = verify_file(&path).unwrap();
    assert!(plain.ok, "a re-chained journal verifies on its own: {plain:?}");
    assert_eq!(plain.hmac, "no HMAC");
    let r = verify_file_with(&path, &opts(Some(&anchor), None)).unwrap();
    assert!(!r.ok);
    assert_eq!(r.problems[0].kind, "anchor-mismatch");
    assert!(r.problems[0].message.contains(&head.hash) && r.problems[0].message.contains(&r.head.hash), "{}", r.problems[0].message);
    // Records removed past the anchor.
    write_lines(&path, &l[..2]);
    let r = verify_file_with(&path, &opts(Some(&anchor), None)).unwrap();
    assert_eq!(r.problems.last().map(|p| p.kind.as_str()), Some("anchor-missing"));
}

#[test]
fn anchor_syntax_errors_are_clear() {
    for bad in ["", "12", "x:ab", "0:aa", &format!("3:{}", "g".repeat(64)), "3:abcd"] {
        let e = Anchor::parse(bad).unwrap_err();
        assert!(e.contains("bad anchor") && e.contains("SEQ:HASH"), "{e}");
    }
    assert_eq!(Anchor::parse(&format!("7:{}", "AB".repeat(32))).unwrap(), Anchor { seq: 7, hash: "ab".repeat(32) });
}

#[test]
fn hmac_signs_records_and_a_forger_without_the_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (keyfile, other) = (dir.path().join("key"), dir.path().join("other"));
    fs::write(&keyfile, [7u8; 32]).unwrap();
    fs::write(&other, [8u8; 32]).unwrap();
    let key = Key::read(&keyfile).unwrap();
    let path = dir.path().join("j.jsonl");
    // Two records without a key (an older journal), then two with one.
    let (mut j, _) = Journal::open(&path).unwrap();
    j.append(entry(Phase::Event, "1")).unwrap();
    j.append(entry(Phase::Event, "2")).unwrap();
    drop(j);
    let (mut j, rec) = Journal::open_with(&path, Some(key.clone())).unwrap();
    assert!(rec.hmac_problems.is_empty());
    let r = j.append(entry(Phase::Event, "3")).unwrap();
    assert!(r.hmac.is_some());
    j.append(entry(Phase::Event, "4")).unwrap();
    drop(j);
    let all = read_records(&path, 0).unwrap();
    assert_eq!(lines(&path)[3], serde_json::to_string(&all[3]).unwrap());
    let ok = verify_file_with(&path, &opts(None, Some(&key))).unwrap();
    assert!(ok.ok, "{ok:?}");
    assert!(ok.hmac.contains("checked on 2 of 4"), "{}", ok.hmac);
    assert!(verify_file(&path).unwrap().hmac.contains("not checked"));
    let wrong = verify_file_with(&path, &opts(None, Some(&Key::read(&other).unwrap()))).unwrap();
    assert_eq!(wrong.problems.iter().filter(|p| p.kind == "hmac-mismatch").count(), 2);
    // Rewritten and re-chained (HMACs dropped): the chain verifies, the key does not.
    let mut l = lines(&path);
    l[0] = l[0].replace("workload-1", "workload-X");
    write_lines(&path, &rechain(&l));
    assert!(verify_file(&path).unwrap().ok);
    let r = verify_file_with(&path, &opts(None, Some(&key))).unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.kind == "hmac-absent"), "{r:?}");
    // Re-chained keeping the old HMAC strings: they do not match the new hashes.
    let forged: Vec<String> = rechain(&l)
        .iter()
        .zip(lines(&path).iter().zip(all.iter()))
        .map(|(n, (_, orig))| match &orig.hmac {
            Some(m) => format!("{},\"hmac\":\"{m}\"}}", n.strip_suffix('}').unwrap()),
            None => n.clone(),
        })
        .collect();
    write_lines(&path, &forged);
    let r = verify_file_with(&path, &opts(None, Some(&key))).unwrap();
    assert_eq!(r.problems.iter().filter(|p| p.kind == "hmac-mismatch").count(), 2, "{r:?}");
    assert!(Key::read(&dir.path().join("missing")).is_err());
    fs::write(&other, b"short").unwrap();
    assert!(Key::read(&other).unwrap_err().to_string().contains("too short"));
}

#[test]
fn agent_key_must_be_private_and_outside_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let inside = state.join("key");
    fs::write(&inside, [1u8; 32]).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();
    let outside = dir.path().join("key");
    fs::write(&outside, [1u8; 32]).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o640)).unwrap();
    if !nix::unistd::getuid().is_root() {
        return; // ownership by root is checked first
    }
    let e = Key::load_for_agent(&inside, &state).unwrap_err().to_string();
    assert!(e.contains("inside the state dir"), "{e}");
    let e = Key::load_for_agent(&outside, &state).unwrap_err().to_string();
    assert!(e.contains("0640") && e.contains("group or others"), "{e}");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    Key::load_for_agent(&outside, &state).unwrap();
}

#[test]
fn rewrite_under_an_open_journal_is_caught_at_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.jsonl");
    let (mut j, _) = Journal::open(&path).unwrap();
    for i in 1..=3 {
        j.append(entry(Phase::Event, &i.to_string())).unwrap();
    }
    let before = j.head();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    j.set_observer(Box::new(move |r, h| s.lock().unwrap().push((r.entry.action.clone(), h.clone()))));
    // In place, re-chained: the file verifies on its own.
    let mut l = lines(&path);
    l[0] = l[0].replace("workload-1", "workload-X");
    write_lines(&path, &rechain(&l));
    assert!(verify_file(&path).unwrap().ok);
    let rec = j.append(entry(Phase::Event, "4")).unwrap();
    assert_eq!(rec.seq, 5);
    let all = read_records(&path, 0).unwrap();
    let note = &all[3];
    assert_eq!(note.entry.action, "journal-rewritten");
    assert!(note.entry.high_priority);
    assert_eq!(note.entry.params["expected_head"]["hash"], before.hash.as_str());
    assert_ne!(note.entry.params["hash_at_expected_seq"], before.hash.as_str());
    assert!(note.entry.outcome.as_deref().unwrap_or_default().contains(&before.hash));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["journal-rewritten", "4"]);
    assert_eq!(seen[1].1, j.head());
    // Replaced by another file: the agent's records are copied aside first.
    let held = fs::read(&path).unwrap();
    let tmp = dir.path().join("new");
    write_lines(&tmp, &rechain(&lines(&path)[..2]));
    fs::rename(&tmp, &path).unwrap();
    j.append(entry(Phase::Event, "5")).unwrap();
    let copy = fs::read_dir(dir.path()).unwrap().flatten().find(|e| e.file_name().to_string_lossy().contains(".agent-copy-")).unwrap();
    assert_eq!(fs::read(copy.path()).unwrap(), held, "nothing acknowledged is lost");
    let all = read_records(&path, 0).unwrap();
    assert_eq!(all[2].entry.action, "journal-rewritten");
    assert_eq!(all[2].entry.params["replaced"], true);
    assert!(verify_file(&path).unwrap().ok);
    // Nothing changed: no note.
    j.append(entry(Phase::Event, "6")).unwrap();
    assert_eq!(read_records(&path, 0).unwrap().iter().filter(|r| r.entry.action == "journal-rewritten").count(), 1);
}

/// The file's bytes from the logical end on.
fn after_end(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes[end..].to_vec()
}

/// A journal keeping `reserve` bytes of zeros ahead of 4 events.
fn four_reserved(reserve: u64) -> (tempfile::TempDir, PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let (mut journal, _) = Journal::open(&path).unwrap();
    journal.reserve(reserve).unwrap();
    for i in 1..=4 {
        journal.append(entry(Phase::Event, &i.to_string())).unwrap();
    }
    (dir, path, journal)
}

#[test]
fn reserved_zeros_are_ahead_of_the_tail_and_readers_stop_there() {
    let (_dir, path, journal) = four_reserved(64 * 1024);
    let logical = journal.len;
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 * 1024, "zeros written ahead, the records inside them");
    let tail = after_end(&path);
    assert_eq!(tail.len() as u64, 64 * 1024 - logical);
    assert!(tail.iter().all(|&b| b == 0));
    let report = verify_file(&path).unwrap();
    assert!(report.ok && report.records == 4 && report.head.seq == 4, "{report:?}");
    assert_eq!(read_records(&path, 0).unwrap().len(), 4);
    assert_eq!(head_of_file(&path).unwrap(), journal.head());
    // Reopened after a crash with the zeros still ahead: nothing to repair,
    // the next record goes at the logical end, over the zeros.
    drop(journal);
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 * 1024, "the zeros are kept");
    assert_eq!(journal.append(entry(Phase::Event, "5")).unwrap().seq, 5);
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 * 1024);
    let report = verify_file(&path).unwrap();
    assert!(report.ok && report.records == 5, "{report:?}");
}

#[test]
fn torn_write_among_the_zeros_is_a_torn_tail() {
    let torn = b"{\"seq\":5,\"time_unix";
    // The start of the line written, or only its end (its first sector lost).
    let mut suffix = vec![0u8; 10];
    suffix.extend_from_slice(b"\"workload-5\"}\n");
    for (bytes, non_nul) in [(&torn[..], torn.len()), (&suffix[..], suffix.len() - 10)] {
        let (_dir, path, journal) = four_reserved(8192);
        journal.file.write_all_at(bytes, journal.len).unwrap();
        drop(journal);
        assert_eq!(kinds(&path), [kind(5, "torn-tail")]);
        assert_eq!(verify_file(&path).unwrap().records, 4);
        assert_eq!(read_records(&path, 0).unwrap().len(), 4);
        let (mut journal, recovery) = Journal::open(&path).unwrap();
        assert_eq!(recovery.truncated_bytes, non_nul as u64);
        assert!(after_end(&path).is_empty(), "the torn bytes are gone");
        journal.reserve(8192).unwrap();
        assert_eq!(journal.append(entry(Phase::Event, "5")).unwrap().seq, 5);
        assert!(verify_file(&path).unwrap().ok);
        assert!(after_end(&path).iter().all(|&b| b == 0));
    }
}

#[test]
fn lines_after_the_zeros_are_not_a_torn_tail() {
    let (_dir, path, journal) = four_reserved(8192);
    let at = fs::metadata(&path).unwrap().len();
    journal.file.write_all_at(b"{\"a\":1}\n{\"b\":2}\n", at).unwrap();
    drop(journal);
    assert_eq!(kinds(&path), [kind(5, "after-end")]);
    assert!(matches!(Journal::open(&path), Err(JournalError::Corrupt { .. })), "never repaired");
}

#[test]
fn top_up_keeps_zeros_ahead_and_a_full_reserve_still_appends() {
    let (_dir, path, mut journal) = four_reserved(4096);
    assert!(!journal.top_up().unwrap(), "more than half left");
    while journal.end - journal.len >= 2048 {
        journal.append(entry(Phase::Event, "x")).unwrap();
    }
    assert!(journal.top_up().unwrap());
    assert_eq!(journal.end, journal.len + 4096);
    assert_eq!(fs::metadata(&path).unwrap().len(), journal.end);
    // Past the zeros without a top-up: the file grows, nothing is lost.
    while journal.end > journal.len {
        journal.append(entry(Phase::Event, "y")).unwrap();
    }
    let n = journal.last_seq();
    journal.append(entry(Phase::Event, "z")).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), journal.len);
    let report = verify_file(&path).unwrap();
    assert!(report.ok && report.records == n + 1, "{report:?}");
}

#[test]
fn a_line_written_into_the_zeros_under_the_agent_is_caught() {
    let (_dir, path, mut journal) = four_reserved(8192);
    let forged = read_records(&path, 3).unwrap().remove(0);
    let line = format!("{}\n", serde_json::to_string(&forged).unwrap());
    journal.file.write_all_at(line.as_bytes(), journal.len).unwrap();
    let rec = journal.append(entry(Phase::Event, "5")).unwrap();
    let bytes = fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes[..bytes.iter().position(|&b| b == 0).unwrap()]).into_owned();
    let all: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let note = all.iter().find(|r| r["action"] == "journal-rewritten").expect("a journal-rewritten record");
    assert!(note["params"]["what"].as_str().unwrap().contains("after the record the agent last wrote"), "{note}");
    assert_eq!((all.len(), all.last().unwrap()["seq"].as_u64()), (7, Some(rec.seq)));
    // The duplicate stays where it was put, and verification names it.
    assert_eq!(kinds(&path), [kind(5, "seq-gap"), kind(5, "chain-break")]);
}

/// A failed `fdatasync` of the top-up's zeros poisons the journal: nothing
/// later is acknowledged, even once syncing works again. The failure is the
/// kernel's: the file is swapped for `/dev/null`, which takes the zeros'
/// `pwrite` but refuses `fdatasync` (EINVAL: no fsync on a character
/// device). No device-mapper on the host kernel for an EIO disk, and a
/// loop device on a full tmpfs failed only non-zero writes (see the p99 report).
#[test]
fn a_failed_top_up_sync_poisons_the_journal() {
    let (_dir, path, mut journal) = four_reserved(4096);
    while !journal.top_up_due() {
        journal.append(entry(Phase::Event, "x")).unwrap();
    }
    let acknowledged = journal.last_seq();
    let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
    let null = Flock::lock(null, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let real = std::mem::replace(&mut journal.file, null);
    let failed = journal.top_up();
    assert!(matches!(failed, Err(JournalError::Io { op: "fdatasync zeros", .. })), "{failed:?}");
    // The real file back: its fdatasync works, and still nothing is acknowledged.
    journal.file = real;
    journal.file.sync_data().unwrap();
    let after = journal.append(entry(Phase::Event, "after"));
    assert!(matches!(after, Err(JournalError::Poisoned { .. })), "appended after a failed top-up sync: {after:?}");
    assert!(!journal.top_up_due() && !journal.top_up().unwrap(), "a poisoned journal writes no zeros");
    drop(journal);
    // Reopening re-verifies: every acknowledged record, nothing more.
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert_eq!((journal.last_seq(), recovery.truncated_bytes), (acknowledged, 0));
    assert_eq!(journal.append(entry(Phase::Event, "next")).unwrap().seq, acknowledged + 1);
    assert!(verify_file(&path).unwrap().ok);
}
