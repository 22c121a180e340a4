//! A trail rewritten whole with a recomputed hash chain verifies on its
//! own; the trail's head, anchored in the main journal, catches it: the
//! record at the anchor's seq has another hash, or the file no longer
//! reaches that seq (truncated); and once the agent has appended to the
//! rewritten file and anchored its new head, the older anchors still do.
use std::path::Path;
use std::time::Duration;

use killpath::journal::{self, Journal, Record};
use serde_json::Value;

use crate::harness::{skip, wait_until, Agent};
use crate::trail::{execs_of, records, run_recorded};

/// Writes `records` (their entries, edited by `edit`) as a fresh chain
/// over the file at `path`, in place, with the crate's own journal code.
fn rechain(path: &Path, records: &[Record], edit: impl Fn(&mut journal::Entry)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join("rechained.jsonl");
    let (mut j, _) = Journal::open(&scratch).expect("scratch journal");
    let entries = records
        .iter()
        .map(|r| {
            let mut e = r.entry.clone();
            edit(&mut e);
            e
        })
        .collect();
    j.append_batch(entries).expect("rechain");
    drop(j);
    std::fs::write(path, std::fs::read(&scratch).expect("rechained")).expect("rewrite the trail in place");
}

/// `trail NAME --verify --json`: (exit code, report).
fn verify(a: &Agent, name: &str) -> (Option<i32>, Value) {
    let out = a.kp(&["--json", "trail", name, "--verify"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("json: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

#[test]
fn trail_verify_checks_the_anchor_in_the_journal() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let name = "tr-anchor";
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let script = format!("/bin/echo secret-exfil-host; /bin/echo second-marker; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, name, &script);
    wait_until(Duration::from_secs(10), || done.exists()).expect("script ran");
    wait_until(Duration::from_secs(10), || execs_of(&records(&a, name, &[]), "/bin/echo").len() == 2).expect("both echos recorded");
    // Recording off: the trail's head goes into the main journal.
    assert_eq!(a.json(&["trail", name, "--off"])["recording"], false);
    let path = a.state_dir.join(format!("trails/{name}.jsonl"));
    let original = journal::read_records(&path, 0).expect("the trail reads");
    let original_text = std::fs::read_to_string(&path).expect("trail");
    let last = original.last().expect("records");
    let anchors: Vec<Value> = a.journal().into_iter().filter(|r| r["action"] == "trail-anchor" && r["target"] == name).collect();
    let newest = anchors.last().unwrap_or_else(|| panic!("no trail-anchor in the main journal: {:#?}", a.journal()));
    assert_eq!(newest["params"]["anchor"], format!("{}:{}", last.seq, last.hash), "the newest anchor is the trail's head after --off");
    let journal_seq = newest["seq"].as_u64().expect("anchor seq");

    let (code, v) = verify(&a, name);
    assert_eq!(code, Some(0), "an untouched trail verifies: {v:#}");
    assert_eq!(v["anchor"]["ok"], true, "{v:#}");
    assert_eq!(v["anchored_by"]["journal_seq"], journal_seq, "{v:#}");

    // Hide what the workload ran: one argument changed, the chain recomputed.
    rechain(&path, &original, |e| {
        if let Some(argv) = e.params.get_mut("argv").and_then(Value::as_array_mut) {
            for s in argv.iter_mut() {
                if let Some(t) = s.as_str().filter(|t| t.contains("secret-exfil-host")) {
                    *s = Value::from(t.replace("secret-exfil-host", "harmless"));
                }
            }
        }
    });
    let text = std::fs::read_to_string(&path).expect("trail");
    assert!(!text.contains("secret-exfil-host") && text.contains("harmless"), "the argument was rewritten");
    let chain = journal::verify_file(&path).expect("verify");
    assert!(chain.ok, "the recomputed chain verifies on its own: {chain:#?}");
    let (code, v) = verify(&a, name);
    assert_eq!(code, Some(1), "the rewrite is caught by the anchor: {v:#}");
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    // The newest anchor, and any older one (`run --trail` wrote the first).
    assert!(!problems.is_empty() && problems.iter().all(|p| p["kind"] == "anchor-mismatch"), "the chain itself holds, only anchors fail: {v:#}");
    let newest_seq = format!("journal seq {journal_seq} says trail seq {} has hash", last.seq);
    assert!(problems.iter().any(|p| p["message"].as_str().is_some_and(|m| m.contains(&newest_seq))), "names the newest anchor ({newest_seq}): {v:#}");

    // Recording on again: the agent appends to the rewritten file and
    // anchors its new head; the older anchors still catch the rewrite.
    assert_eq!(a.json(&["trail", name, "--on"])["recording"], true);
    let (code, v) = verify(&a, name);
    assert_eq!(code, Some(1), "the rewrite is still caught: {v:#}");
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    assert!(problems.iter().all(|p| p["kind"] == "anchor-mismatch"), "{v:#}");
    let before: Vec<String> = anchors.iter().map(|r| format!("trail-anchor at journal seq {} says", r["seq"])).collect();
    assert!(
        problems.iter().any(|p| p["message"].as_str().is_some_and(|m| before.iter().any(|b| m.contains(b)))),
        "names an anchor written before the rewrite ({before:?}): {v:#}"
    );
    assert_eq!(a.json(&["trail", name, "--off"])["recording"], false);
    let journal_seq = a.journal().iter().rev().find(|r| r["action"] == "trail-anchor" && r["target"] == name).and_then(|r| r["seq"].as_u64()).expect("anchor");

    // Truncated: the first records only, untouched (a valid chain).
    let keep = &original[..original.len() - 2];
    let lines: String = original_text.lines().take(keep.len()).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, lines).expect("truncate");
    let head = journal::read_records(&path, 0).expect("truncated trail reads");
    assert_eq!(head.iter().map(|r| &r.hash).collect::<Vec<_>>(), keep.iter().map(|r| &r.hash).collect::<Vec<_>>(), "a prefix of the original chain");
    let (code, v) = verify(&a, name);
    assert_eq!(code, Some(1), "the truncation is caught: {v:#}");
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    assert!(problems.len() == 1 && problems[0]["kind"] == "anchor-missing", "{v:#}");
    let msg = problems[0]["message"].as_str().unwrap_or("");
    assert!(msg.contains(&format!("journal seq {journal_seq}")) && msg.contains("truncated"), "names the anchor: {msg}");

    // A stop anchors the trail's head with its level marker (written by
    // the background tick after the stop answered).
    assert_eq!(a.json(&["trail", name, "--on"])["recording"], true);
    assert_eq!(a.json(&["stop", name])["survivors"], 0);
    let anchored_stop = || {
        let Ok(recs) = journal::read_records(&path, 0) else { return false };
        if !recs.iter().any(|r| r.entry.action == "level" && r.entry.params["to"] == "stopped") {
            return false;
        }
        let Some(last) = recs.last() else { return false };
        a.journal().iter().any(|r| r["action"] == "trail-anchor" && r["target"] == name && r["params"]["anchor"] == format!("{}:{}", last.seq, last.hash))
    };
    wait_until(Duration::from_secs(10), anchored_stop).unwrap_or_else(|| panic!("no anchor of the stop's marker: {:#?}", a.journal()));
    let _ = child.wait();
}
