//! The agent's level-3 programs as the kernel lists them (bpftool).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use killpath_common::maps;
use serde_json::{json, Value};

use crate::{harness::Agent, support::process::show};

fn bpftool() -> &'static str {
    if Path::new("/usr/sbin/bpftool").exists() {
        "/usr/sbin/bpftool"
    } else {
        "bpftool"
    }
}

/// ids of our agent's level-3 programs in the kernel: programs named
/// kp_isolate* that use this agent's pinned targets map (other agents on the
/// host have their own maps).
pub(super) fn our_isolate_progs(agent: &Agent) -> Vec<(u64, String)> {
    let bt = |args: &[&str]| -> Value {
        let out = Command::new(bpftool()).arg("-j").args(args).output().unwrap_or_else(|e| panic!("bpftool {args:?}: {e}"));
        assert!(out.status.success(), "bpftool {args:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?}: bad JSON {e}"))
    };
    // Pins live in one generation directory per build (`<pin-dir>/gen-*`).
    let gens: Vec<PathBuf> = std::fs::read_dir(&agent.pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path().join("maps").join(maps::TARGETS))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(gens.len(), 1, "one pin generation in {}: {gens:?}", agent.pin_dir.display());
    let pin = &gens[0];
    let map_id = bt(&["map", "show", "pinned", pin.to_str().unwrap()])["id"].as_u64().expect("map id");
    let mut ids: Vec<(u64, String)> = bt(&["prog", "show"])
        .as_array()
        .expect("prog list")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("kp_isolate")))
        .filter(|p| p["map_ids"].as_array().is_some_and(|m| m.iter().any(|x| x.as_u64() == Some(map_id))))
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .collect();
    ids.sort();
    ids
}

/// (prog id, attach type) of every program attached to `cg`, sorted.
pub(super) fn cgroup_attachments(cg: &Path) -> Vec<(u64, String)> {
    let out = Command::new(bpftool()).args(["-j", "cgroup", "show"]).arg(cg).output().expect("bpftool cgroup show");
    assert!(out.status.success(), "bpftool cgroup show: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut a: Vec<(u64, String)> =
        v.as_array().into_iter().flatten().map(|p| (p["id"].as_u64().unwrap_or(0), p["attach_type"].as_str().unwrap_or("").to_owned())).collect();
    a.sort();
    a
}
