//! Levels the kernel raises on its own (tripwires, leases) are adopted by
//! the agent: journaled with their cause and completed (a stop empties the
//! cgroup), also by an agent started after the raise. The raise is written
//! into the pinned maps the way the kernel's `raise()` writes it (record
//! first, then the level), so adoption is tested apart from any one
//! trigger; the triggers' own tests raise through the real hooks.
use std::{os::unix::fs::MetadataExt as _, path::PathBuf, process::Command, time::Duration};

use serde_json::Value;

use crate::harness::{alive, wait_until, Agent};

const CAUSE_LEASE: u32 = 2;

fn map_pin(a: &Agent, name: &str) -> PathBuf {
    let gen =
        std::fs::read_dir(&a.pin_dir).expect("pin dir").filter_map(Result::ok).map(|e| e.path()).find(|p| p.join("maps").is_dir()).expect("a pin generation");
    gen.join("maps").join(name)
}

fn bytes(v: &[u8]) -> Vec<String> {
    v.iter().map(u8::to_string).collect()
}

fn update(map: &PathBuf, key: &[u8], value: &[u8]) {
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(map)
        .arg("key")
        .args(bytes(key))
        .arg("value")
        .args(bytes(value))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map update {}: {}", map.display(), String::from_utf8_lossy(&out.stderr));
}

fn ktime_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Writes what `raise()` in killpath-ebpf/src/raise.rs writes: the record,
/// then the level (depth kept as the agent set it).
fn kernel_raise(a: &Agent, cgroup_id: u64, level: u32, cause: u32) {
    let now = ktime_ns();
    let key = cgroup_id.to_le_bytes();
    let mut rec = Vec::new();
    for v in [now, now - 700, 0] {
        rec.extend(v.to_le_bytes());
    }
    for v in [level, 0, cause, 9] {
        rec.extend(v.to_le_bytes());
    }
    update(&map_pin(a, "KP_RAISES"), &key, &rec);
    let out =
        Command::new("bpftool").args(["-j", "map", "lookup", "pinned"]).arg(map_pin(a, "KP_TARGETS")).arg("key").args(bytes(&key)).output().expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut state: Vec<u8> = v["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap_or("0").trim_start_matches("0x"), 16).expect("hex byte"))
        .collect();
    state[..4].copy_from_slice(&level.to_le_bytes());
    update(&map_pin(a, "KP_TARGETS"), &key, &state);
}

fn raise_records(a: &Agent) -> Vec<Value> {
    a.journal().into_iter().filter(|r| r["action"] == "kernel-raise").collect()
}

#[test]
fn kernel_raise_is_adopted_by_a_live_and_by_a_restarted_agent() {
    let Some(mut a) = Agent::start() else { return };
    let mut child = a.run_bg("r", &["sleep", "1000"], 1);
    let pid = child.id() as i32;
    // A cgroup's id is its cgroupfs inode number.
    let id = std::fs::metadata(a.cgroup_parent.join("r")).expect("cgroup").ino();

    // Raised to isolate while no agent runs: the next agent journals it
    // (from the level it had: normal) and completes it.
    a.kill9();
    kernel_raise(&a, id, 3, CAUSE_LEASE);
    a.spawn();
    let recs = raise_records(&a);
    assert_eq!(recs.len(), 1, "one kernel-raise record after the restart: {recs:?}");
    assert_eq!(recs[0]["from_level"], 0, "journaled from the level the agent had: {}", recs[0]);
    assert_eq!(recs[0]["params"]["exposure_window_ns"], 700);
    assert_eq!(recs[0]["actor"]["source"], "kernel-lease");
    let st = a.json(&["status", "r"]);
    assert_eq!(st["targets"][0]["level"], "isolate", "{st}");
    assert!(alive(pid), "isolate keeps the workload alive");

    // Raised to stop while the agent runs: adopted within its 20 ms check,
    // and the stop empties the cgroup (judged from /proc).
    kernel_raise(&a, id, 4, CAUSE_LEASE);
    wait_until(Duration::from_secs(5), || !alive(pid)).expect("the workload is gone after a kernel raise to stop");
    let _ = child.wait();
    assert_eq!(raise_records(&a).len(), 2, "the second raise journaled before its stop");
    let stop_result = || a.journal().into_iter().find(|r| r["action"] == "stop" && r["phase"] == "result");
    wait_until(Duration::from_secs(5), || stop_result().is_some()).expect("the stop's result journaled");
    let stop = stop_result().expect("a stop result");
    assert_eq!(stop["actor"]["source"], "kernel-lease", "{stop}");
    assert_eq!(stop["params"]["survivors"], 0, "{stop}");
    let raises_left = || {
        let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(map_pin(&a, "KP_RAISES")).output().expect("bpftool");
        serde_json::from_slice::<Value>(&out.stdout).expect("bpftool JSON").as_array().map_or(usize::MAX, Vec::len)
    };
    wait_until(Duration::from_secs(5), || raises_left() == 0).expect("adopted raises are cleared");
}
