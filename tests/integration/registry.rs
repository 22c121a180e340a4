//! The registry is one file per target (`<state-dir>/targets/NAME.json`),
//! each replaced atomically. The agent is SIGKILLed while a client drives
//! commands at it as fast as it answers, at a different moment each round:
//! every target's file (read from outside, before the restart) holds the
//! last level the agent acknowledged for it, or the level of the one
//! command in flight; after the restart the agent and the kernel's pinned
//! map say the same. A registry in the former single-file layout is
//! migrated on start, nothing lost.
use std::{
    collections::BTreeMap,
    path::Path,
    process::Child,
    sync::mpsc,
    time::{Duration, Instant},
};

use killpath::kernel::{maps::Maps, pins};
use serde_json::Value;

use crate::harness::Agent;

const TARGETS: usize = 4;
/// Level names, lowest first.
const LEVELS: [&str; 4] = ["normal", "throttle", "degrade", "isolate"];

/// The command that takes a target from `level` to the next in the cycle
/// normal → throttle → degrade → isolate → normal, and that next level.
fn step(level: usize) -> (&'static [&'static str], usize) {
    match level {
        0 => (&["throttle", "--syscalls", "100000/s"], 1),
        1 => (&["degrade", "--revoke", "net.connect"], 2),
        2 => (&["isolate"], 3),
        _ => (&["restore", "--to", "normal"], 0),
    }
}

/// One command sent: target, the level it leaves, whether it was acknowledged.
type Sent = (String, usize, bool);

/// Sends commands to the targets in turn, each target through its cycle
/// from `levels`, until one is not acknowledged (the agent died); reports
/// each.
fn drive(agent_cmd: impl Fn(&[&str]) -> std::process::Output, tx: mpsc::Sender<Sent>, mut levels: BTreeMap<String, usize>) {
    let names: Vec<String> = levels.keys().cloned().collect();
    for name in names.iter().cycle() {
        let (args, next) = step(levels[name]);
        let mut a = vec!["--json", args[0], name];
        a.extend_from_slice(&args[1..]);
        let ok = agent_cmd(&a).status.success();
        if tx.send((name.clone(), next, ok)).is_err() || !ok {
            return;
        }
        levels.insert(name.clone(), next);
    }
}

/// Level in target `name`'s file, read as the fallback would read it.
fn file_level(state_dir: &Path, name: &str) -> usize {
    let path = state_dir.join("targets").join(format!("{name}.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}", path.display()));
    v["level"].as_u64().expect("level") as usize
}

/// The level of each target the kernel holds in the pinned KP_TARGETS.
fn kernel_levels(pin_dir: &Path) -> BTreeMap<u64, usize> {
    let gen = pins::generations(pin_dir).pop().expect("a pin generation");
    Maps::pinned_targets(&gen).expect("pinned KP_TARGETS").into_iter().map(|(id, s)| (id, s.level as usize)).collect()
}

#[test]
fn registry_kill9_mid_commands_keeps_every_acknowledged_level() {
    let Some(mut agent) = Agent::start() else { return };
    let kids: Vec<Child> = (0..TARGETS).map(|i| agent.run_bg(&format!("r{i}"), &["sleep", "1000"], 1)).collect();
    let mut acked: BTreeMap<String, usize> = (0..TARGETS).map(|i| (format!("r{i}"), 0)).collect();
    let mut acks_total = 0;
    for round in 0..3u64 {
        let (tx, rx) = mpsc::channel();
        let (socket, state_dir, levels) = (agent.socket.clone(), agent.state_dir.clone(), acked.clone());
        let driver = std::thread::spawn(move || {
            let cmd = |a: &[&str]| {
                std::process::Command::new(env!("CARGO_BIN_EXE_killpath"))
                    .args(a)
                    .env("KILLPATH_SOCKET", &socket)
                    .env("KILLPATH_STATE_DIR", &state_dir)
                    .env_remove("KILLPATH_LOG")
                    .output()
                    .expect("run killpath")
            };
            drive(cmd, tx, levels)
        });
        // A different moment each round: after 3, 5, 7, ... acknowledged
        // commands and a few ms more, whatever the command is doing then.
        let want = 3 + 2 * round as usize;
        let mut sent: Vec<Sent> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent.iter().filter(|s| s.2).count() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            sent.push(rx.recv_timeout(left).unwrap_or_else(|_| panic!("round {round}: {want} commands not acknowledged in 20 s\n{}", agent.log_text())));
        }
        std::thread::sleep(Duration::from_millis(1 + 3 * round));
        agent.kill9();
        driver.join().expect("driver thread");
        sent.extend(rx.try_iter());
        let in_flight = sent.iter().find(|s| !s.2).cloned();
        for (name, level, ok) in &sent {
            if *ok {
                acked.insert(name.clone(), *level);
                acks_total += 1;
            }
        }
        // From outside, with the agent dead: each file is whole and holds
        // the acknowledged level (or the in-flight command's).
        for (name, level) in &acked {
            let on_disk = file_level(&agent.state_dir, name);
            let flight = in_flight.as_ref().filter(|f| &f.0 == name).map(|f| f.1);
            assert!(
                on_disk == *level || Some(on_disk) == flight,
                "round {round}: {name} acknowledged at {} (in flight: {:?}), its file says {}",
                LEVELS[*level],
                flight.map(|l| LEVELS[l]),
                LEVELS[on_disk]
            );
        }
        agent.spawn();
        // The agent's view matches the files, and the kernel's matches it.
        let st = agent.json(&["status"]);
        let kernel = kernel_levels(&agent.pin_dir);
        for row in st["targets"].as_array().expect("targets") {
            let name = row["name"].as_str().expect("name");
            let level = LEVELS.iter().position(|l| row["level"] == *l).unwrap_or_else(|| panic!("round {round}: {name}: level {}", row["level"]));
            assert_eq!(level, file_level(&agent.state_dir, name), "round {round}: {name}: status and its file");
            let id = row["cgroup_id"].as_u64().expect("cgroup_id");
            assert_eq!(kernel.get(&id), Some(&level), "round {round}: {name}: the pinned KP_TARGETS level");
            // The next round goes on from where the target is.
            acked.insert(name.to_owned(), level);
        }
        let stray: Vec<String> = std::fs::read_dir(agent.state_dir.join("targets"))
            .expect("targets dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "round {round}: temp files left after the restart: {stray:?}");
    }
    assert!(acks_total >= 3 * 3, "commands were acknowledged between the kills");

    // The former single file: the agent dies, its registry is put back in
    // the old layout, and the next start migrates it.
    let before = agent.json(&["status"]);
    agent.kill9();
    let dir = agent.state_dir.join("targets");
    let mut all = serde_json::Map::new();
    for e in std::fs::read_dir(&dir).expect("targets dir").flatten() {
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("JSON");
        all.insert(v["name"].as_str().expect("name").to_owned(), v);
    }
    std::fs::write(agent.state_dir.join("targets.json"), serde_json::to_vec_pretty(&Value::Object(all)).expect("json")).expect("targets.json");
    std::fs::remove_dir_all(&dir).expect("remove targets/");
    agent.spawn();
    assert!(!agent.state_dir.join("targets.json").exists(), "the single file is gone once migrated");
    let after = agent.json(&["status"]);
    let levels = |st: &Value| -> Vec<(String, String)> {
        st["targets"].as_array().expect("targets").iter().map(|r| (r["name"].to_string(), r["level"].to_string())).collect()
    };
    assert_eq!(levels(&after), levels(&before), "every target at its level after the migration");
    assert_eq!(std::fs::read_dir(&dir).expect("targets dir").count(), TARGETS, "one file per target");
    for mut k in kids {
        let _ = k.kill();
        let _ = k.wait();
    }
}
