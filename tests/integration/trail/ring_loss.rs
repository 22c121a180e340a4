//! Loss in the kernel, per target: with the agent stopped (SIGSTOP from
//! here, so nothing drains the event ring), target A sends far more
//! signals to an outside process than the ring holds. Once the agent runs
//! again, A's trail lists or counts as lost each signal the workload's own
//! loop counted, exactly, with loss > 0 at `signal`; B, recording at the
//! same time, lists its execs and counts nothing lost (A's flood is not B's
//! loss).
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use killpath_common::trail::{TrailEvent, EVENTS_BYTES};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{execs_of, records, run_recorded};
use crate::harness::{skip, wait_until, Agent};

/// Continues the agent when the test ends, passed or not (a stopped
/// agent would not stop on the harness's terms).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Self {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the agent");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Whether every thread of `pid` is stopped (/proc state T).
fn all_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks
        .flatten()
        .all(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))))
}

/// Entries of `KP_TRAIL_LOST_BY_TARGET` (this agent's pin) for cgroup `id`.
fn kernel_entries(a: &Agent, id: u64) -> usize {
    let map = std::fs::read_dir(&a.pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path().join("maps").join("KP_TRAIL_LOST_BY_TARGET"))
        .find(|p| p.exists())
        .expect("the per-target loss map is pinned");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {}: {}", map.display(), String::from_utf8_lossy(&out.stderr));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    // The key's first 8 bytes: the cgroup id (little-endian hex bytes).
    let target = |e: &Value| -> u64 {
        let bytes: Vec<u8> =
            e["key"].as_array().into_iter().flatten().filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()).collect();
        bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    entries.iter().filter(|e| target(e) == id).count()
}

/// The last `lost` record's kernel count at `kind` (0 without one).
fn kernel_lost(recs: &[Value], kind: &str) -> u64 {
    recs.iter().rev().find(|r| r["action"] == "lost").and_then(|l| l["kernel_ring_full"][kind].as_u64()).unwrap_or(0)
}

#[test]
fn trail_counts_kernel_ring_loss_per_target() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    // Three rings' worth of events: most cannot wait in the ring.
    let n = 3 * u64::from(EVENTS_BYTES) / size_of::<TrailEvent>() as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (go, count, b_done) = (dir.path().join("go"), dir.path().join("count"), dir.path().join("b-done"));
    // The receiver, outside any target: SIGURG's default action is to ignore it.
    let mut outside = Command::new("sleep").arg("600").stdin(Stdio::null()).spawn().expect("receiver");
    let rx = outside.id();
    // B: three known execs, before anything is stopped.
    let mut b = run_recorded(&a, "tr-ring-b", &format!("for i in 1 2 3; do /bin/echo b-$i >/dev/null; done; touch {}; exec sleep 60", b_done.display()));
    wait_until(Duration::from_secs(20), || b_done.exists()).expect("B ran");
    // A: waits for `go`, then n signals out (dash's builtin kill: no fork,
    // nothing else between them), and writes down how many it sent.
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; i=0; while [ $i -lt {n} ]; do kill -URG {rx} || exit 1; i=$((i+1)); done; echo $i > {count}; exec sleep 60",
        go = go.display(),
        count = count.display()
    );
    let mut wa = run_recorded(&a, "tr-ring-a", &script);
    let stopped = Stopped::new(a.pid());
    wait_until(Duration::from_secs(10), || all_stopped(a.pid())).expect("every agent thread stopped");
    std::fs::write(&go, "").expect("go");
    wait_until(Duration::from_secs(20), || std::fs::read_to_string(&count).is_ok_and(|s| s.ends_with('\n'))).expect("A's flood finished");
    let sent: u64 = std::fs::read_to_string(&count).expect("count").trim().parse().expect("a number");
    assert_eq!(sent, n, "A's loop sent every signal");
    drop(stopped);
    let signals = |recs: &[Value]| recs.iter().filter(|r| r["action"] == "signal" && r["to_pid"] == rx).count() as u64;
    let mut recs = Vec::new();
    let reached = wait_until(Duration::from_secs(20), || {
        recs = records(&a, "tr-ring-a", &[]);
        signals(&recs) + kernel_lost(&recs, "signal") >= sent
    });
    assert!(reached.is_some(), "A's listed + lost signals never reached {sent}: {} listed, {} lost", signals(&recs), kernel_lost(&recs, "signal"));
    eprintln!("A: {sent} signals sent, {} listed, {} counted lost", signals(&recs), kernel_lost(&recs, "signal"));
    assert_eq!(signals(&recs) + kernel_lost(&recs, "signal"), sent, "each signal listed or counted lost, exactly once");
    assert!(kernel_lost(&recs, "signal") > 0, "the ring cannot hold {sent} events: A's trail counts loss");
    assert!(signals(&recs) > 0, "what the ring held is listed");
    // B: the trail is read after a snapshot of the kernel's counts (the
    // `trail` command writes one first), so a loss charged to B shows here.
    let b_recs = records(&a, "tr-ring-b", &[]);
    assert_eq!(execs_of(&b_recs, "/bin/echo").len(), 3, "B's three execs: {b_recs:#?}");
    let b_lost: Vec<&Value> = b_recs.iter().filter(|r| r["action"] == "lost").collect();
    assert!(b_lost.is_empty(), "A's flood is not B's loss: {b_lost:#?}");
    let status = a.json(&["status", "tr-ring-b"]);
    assert_eq!(status["targets"][0]["trail"]["lost"]["kernel_ring_full"], serde_json::json!({}), "{status:#}");
    let status = a.json(&["status", "tr-ring-a"]);
    assert_eq!(status["targets"][0]["trail"]["lost"]["kernel_ring_full"]["signal"].as_u64(), Some(kernel_lost(&recs, "signal")), "{status:#}");
    let sum = a.json(&["trail", "tr-ring-a", "--summary"]);
    assert_eq!(sum["lost"]["kernel_ring_full"]["signal"].as_u64(), Some(kernel_lost(&recs, "signal")), "{sum:#}");
    // Off: A's counts leave the kernel map (read with bpftool from its
    // pin) and stay in its trail; on again, they go on from there.
    let id = |name: &str| std::fs::metadata(a.cgroup_parent.join(name)).expect("the target's cgroup").ino();
    let lost = kernel_lost(&recs, "signal");
    assert!(kernel_entries(&a, id("tr-ring-a")) > 0, "A's loss is in the kernel map under A's cgroup id");
    assert_eq!(kernel_entries(&a, id("tr-ring-b")), 0, "and none under B's");
    a.json(&["trail", "tr-ring-a", "--off"]);
    assert_eq!(kernel_entries(&a, id("tr-ring-a")), 0, "trail --off clears A's entries");
    let sum = a.json(&["trail", "tr-ring-a", "--summary"]);
    assert_eq!(sum["lost"]["kernel_ring_full"]["signal"].as_u64(), Some(lost), "the count stays in the trail: {sum:#}");
    a.json(&["trail", "tr-ring-a", "--on"]);
    let status = a.json(&["status", "tr-ring-a"]);
    assert_eq!(status["targets"][0]["trail"]["lost"]["kernel_ring_full"]["signal"].as_u64(), Some(lost), "{status:#}");
    for c in [&mut b, &mut wa, &mut outside] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
