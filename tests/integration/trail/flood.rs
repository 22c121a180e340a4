//! Loss is counted, never silent: with a trail file bound far below what a
//! flood of execs needs, every exec the workload made is either listed or
//! counted as lost, exactly.
use std::time::Duration;

use serde_json::Value;

use super::{records, run_recorded};
use crate::harness::{skip, wait_until, Agent};

/// /bin/true execs of the workload; it also execs its shell, `touch` and the final sleep.
const N: u64 = 300;

fn lost_execs(recs: &[Value]) -> u64 {
    let Some(l) = recs.iter().rev().find(|r| r["action"] == "lost") else { return 0 };
    l["kernel_ring_full"]["exec"].as_u64().unwrap_or(0) + l["trail_file_full"]["exec"].as_u64().unwrap_or(0)
}

#[test]
fn trail_counts_loss_under_flood() {
    let Some(a) = Agent::start_with(&["--trail-max-bytes", "20000"]) else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let script = format!("i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, "tr-flood", &script);
    wait_until(Duration::from_secs(20), || done.exists()).expect("the flood ran");
    let total = |recs: &[Value]| recs.iter().filter(|r| r["action"] == "exec").count() as u64 + lost_execs(recs);
    let mut recs = Vec::new();
    let reached = wait_until(Duration::from_secs(15), || {
        recs = records(&a, "tr-flood", &[]);
        total(&recs) >= N + 3
    });
    assert!(
        reached.is_some(),
        "listed + lost execs never reached {}: {} listed, {} lost",
        N + 3,
        recs.iter().filter(|r| r["action"] == "exec").count(),
        lost_execs(&recs)
    );
    assert_eq!(total(&recs), N + 3, "each exec listed or counted lost, exactly once");
    assert!(lost_execs(&recs) > 0, "a 20 kB trail cannot hold {N} execs: loss must be counted");
    let size = std::fs::metadata(a.state_dir.join("trails/tr-flood.jsonl")).expect("trail file").len();
    assert!(size < 30_000, "the trail stays near its 20 kB bound: {size} bytes");
    let sum = a.json(&["trail", "tr-flood", "--summary"]);
    assert!(!sum["lost"].is_null(), "the summary says what was lost: {sum:#}");
    // Still a valid chain.
    assert_eq!(a.json(&["trail", "tr-flood", "--verify"])["ok"], true);
    let _ = child.kill();
    let _ = child.wait();
}

/// The file-full count goes on across an agent restart (it is read back
/// from the file's last `lost` record): after a flood past the bound, a
/// crash (SIGKILL) and a restart, a second flood still adds up exactly:
/// listed + lost = every exec the workload made.
#[test]
fn trail_loss_count_goes_on_after_agent_restart() {
    let Some(mut a) = Agent::start_with(&["--trail-max-bytes", "20000"]) else {
        skip("needs root");
        return;
    };
    const M: u64 = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let (fifo, done1, done2) = (dir.path().join("fifo"), dir.path().join("done1"), dir.path().join("done2"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Execs: sh, N + M /bin/true, the final sleep. The pause between the
    // two floods reads the FIFO and the done files are written by the
    // shell itself: no other exec.
    let script = format!(
        "i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done; : > {d1}; read x < {f}; i=0; while [ $i -lt {M} ]; do /bin/true; i=$((i+1)); done; : > {d2}; exec sleep 60",
        d1 = done1.display(),
        f = fifo.display(),
        d2 = done2.display()
    );
    let mut child = run_recorded(&a, "tr-restart", &script);
    wait_until(Duration::from_secs(20), || done1.exists()).expect("the first flood ran");
    let total = |recs: &[Value]| recs.iter().filter(|r| r["action"] == "exec").count() as u64 + lost_execs(recs);
    let file_full = |recs: &[Value]| recs.iter().rev().find(|r| r["action"] == "lost").and_then(|l| l["trail_file_full"]["exec"].as_u64()).unwrap_or(0);
    // sh and the N /bin/true.
    let first = N + 1;
    let mut recs = Vec::new();
    wait_until(Duration::from_secs(15), || {
        recs = records(&a, "tr-restart", &[]);
        total(&recs) >= first
    })
    .unwrap_or_else(|| panic!("listed + lost never reached {first}: {}", total(&recs)));
    assert_eq!(total(&recs), first, "the first flood, exactly");
    let before = file_full(&recs);
    assert!(before > 0, "a 20 kB trail cannot hold {N} execs");
    a.kill9();
    a.spawn();
    std::fs::write(&fifo, "go\n").expect("the second flood starts");
    wait_until(Duration::from_secs(20), || done2.exists()).expect("the second flood ran");
    let want = N + M + 2;
    wait_until(Duration::from_secs(15), || {
        recs = records(&a, "tr-restart", &[]);
        total(&recs) >= want
    })
    .unwrap_or_else(|| panic!("listed + lost never reached {want} after the restart: {} (file-full {}, was {before})", total(&recs), file_full(&recs)));
    assert_eq!(total(&recs), want, "each exec listed or counted lost, exactly once, across the restart");
    assert!(file_full(&recs) >= before + M, "the file-full count went on from {before}: {}", file_full(&recs));
    assert_eq!(a.json(&["trail", "tr-restart", "--verify"])["ok"], true);
    let _ = child.kill();
    let _ = child.wait();
}

/// A trail that cannot be written (its filesystem full: a small tmpfs
/// mounted over the trails dir and filled) loses nothing silently: the
/// failure is journaled in the main journal at once, counted in status,
/// and once the disk has room again the trail's `lost` record says how
/// many records were not written; the trail still verifies.
#[test]
fn trail_counts_records_it_could_not_write() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let trails = a.state_dir.join("trails");
    std::fs::create_dir_all(&trails).expect("trails dir");
    let _fs = crate::journal_poisoned::tmpfs(&trails, "256k");
    let filler = crate::journal_poisoned::fill(&trails, "filler");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {g} ]; do sleep 0.05; done; /bin/echo one; /bin/echo two; /bin/echo three; exec sleep 60", g = go.display());
    let mut child = run_recorded(&a, "tr-full", &script);
    let failed = |a: &Agent| a.json(&["status", "tr-full"])["targets"][0]["trail"]["write_failed"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(10), || failed(&a) > 0).expect("status counts the records the full disk refused");
    let journaled = a.journal().iter().any(|r| r["action"] == "trail-write-failed" && r["target"] == "tr-full");
    assert!(journaled, "the failure is in the main journal: {:#?}", a.journal());
    // Room again: the next append gets through with the count.
    std::fs::remove_file(&filler).expect("remove filler");
    std::fs::write(&go, "").expect("go");
    let echoes = |recs: &[Value]| super::execs_of(recs, "/bin/echo").len();
    wait_until(Duration::from_secs(15), || {
        let recs = records(&a, "tr-full", &[]);
        echoes(&recs) == 3 && recs.iter().any(|r| r["action"] == "lost" && r["write_failed"].as_u64().is_some_and(|n| n > 0))
    })
    .unwrap_or_else(|| panic!("the echoes and a lost record with write_failed: {:#?}", records(&a, "tr-full", &[])));
    let lost = records(&a, "tr-full", &[]).into_iter().rev().find(|r| r["action"] == "lost").expect("lost record");
    assert!(lost["write_failed"].as_u64() >= Some(failed(&a).min(1)), "{lost:#}");
    assert_eq!(a.json(&["trail", "tr-full", "--verify"])["ok"], true, "the trail verifies after the failure");
    let _ = child.kill();
    let _ = child.wait();
}
