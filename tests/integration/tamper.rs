//! Tests: trust nothing the workload can write. Root outside the agent
//! (standing in for root inside a target) removes link pins, mounts a
//! tmpfs over a target's cgroup and forges the registry; each is judged
//! from outside: a real client against a real server, pids in /proc, the
//! pins on bpffs, a decoy process alive.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{in_cgroup_within, make_cgroup, move_into},
        net::{http_server, Server, HELLO},
        process::{assert_all_dead, children, pids, run_bg, show, spawn_outside, text},
    },
};

/// The pin files of target `name`'s cgroup links, and of the host-wide
/// links, in the agent's (single) generation.
fn link_pins(agent: &Agent, name: &str) -> (PathBuf, Vec<PathBuf>, Vec<PathBuf>) {
    let gens: Vec<PathBuf> = std::fs::read_dir(&agent.pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gen-")))
        .collect();
    assert_eq!(gens.len(), 1, "one generation expected: {gens:?}");
    let id = agent.target_cgroup(name).id().expect("cgroup id");
    let dir = gens[0].join("targets").join(id.to_string());
    let files = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    (dir.clone(), files(&dir), files(&gens[0].join("links")))
}

/// curl from inside `cg`: must fail, and the server must have seen nothing.
fn assert_cut(srv: &Server, cg: &Path, port: u16, ctx: &str) {
    let before = srv.count("GET /hello.txt");
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let out = in_cgroup_within(15, cg, &["curl", "-sS", "--max-time", "3", &url]);
    assert!(!out.status.success(), "{ctx}: curl from the isolated target went through: {}", show(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(srv.count("GET /hello.txt"), before, "{ctx}: the server saw a request from the isolated target\n{}", srv.describe());
}

/// curl from inside `cg` works (the control: the client and server work).
fn assert_open(srv: &Server, cg: &Path, port: u16, ctx: &str) {
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let out = in_cgroup_within(15, cg, &["curl", "-sS", "--max-time", "3", &url]);
    assert!(out.status.success() && text(&out.stdout) == HELLO, "{ctx}: curl from inside must work: {}\n{}", show(&out), srv.describe());
}

fn all_exist(pins: &[PathBuf]) -> bool {
    pins.iter().all(|p| p.exists())
}

fn remove(pins: &[PathBuf]) {
    for p in pins {
        std::fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
    }
}

/// High-priority journal records of `action`.
fn high(agent: &Agent, action: &str) -> Vec<Value> {
    agent.journal().into_iter().filter(|r| r["action"] == action && r["high_priority"] == true).collect()
}

/// (a) Removing the link pins neither lifts isolation nor lasts: the agent
/// holds every link by fd, re-pins within its check period, journals and
/// alerts; and the re-pinned links keep the cut after the agent dies.
#[test]
fn link_pins_removed_are_repinned_and_the_cut_holds() {
    let Some(mut agent) = Agent::start() else { return };
    let _t = run_bg(&agent, "pins", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("pins");
    let (srv, port) = http_server(&agent, "http-pins", "127.0.0.1");
    assert_open(&srv, cg.path(), port, "before isolation");

    let (dir, target_pins, host_pins) = link_pins(&agent, "pins");
    assert_eq!(target_pins.len(), 10, "a target has 10 cgroup links (skb in/out, connect4/6, sendmsg4/6, sock_create, device, setsockopt, sysctl): {target_pins:?}");
    assert!(!host_pins.is_empty(), "host-wide links pinned");

    // Unlink every cgroup link pin of the target (and its directory) and
    // a host-wide guard's link pin, then isolate.
    remove(&target_pins);
    std::fs::remove_dir(&dir).expect("rmdir the target's link dir");
    remove(&host_pins[..1]);
    let r = agent.json(&["isolate", "pins"]);
    assert_eq!(r["level"], "isolate", "{r}");
    assert_cut(&srv, cg.path(), port, "pins removed, then isolate");
    assert!(
        wait_until(Duration::from_secs(3), || all_exist(&target_pins) && all_exist(&host_pins)).is_some(),
        "pins not back within 3 s: {:?}",
        target_pins.iter().chain(&host_pins).filter(|p| !p.exists()).collect::<Vec<_>>()
    );

    // With isolation on, unlink them again: the links stay attached (the
    // agent holds them), the cut never lapses, and the pins come back.
    remove(&target_pins);
    assert_cut(&srv, cg.path(), port, "pins removed while isolated");
    assert!(wait_until(Duration::from_secs(3), || all_exist(&target_pins)).is_some(), "pins not re-pinned within 3 s");

    // The agent re-pins first, then journals each (fsynced) record: wait
    // for the records, not only the pins.
    let expected = 2 * target_pins.len() + 1;
    wait_until(Duration::from_secs(3), || high(&agent, "link-pin-removed").len() >= expected);
    let repinned = high(&agent, "link-pin-removed");
    let names: Vec<&str> = repinned.iter().filter_map(|r| r["params"]["details"]["pin"].as_str()).collect();
    // Each target pin was removed twice, the guard's once.
    for (p, times) in target_pins.iter().map(|p| (p, 2)).chain(host_pins[..1].iter().map(|p| (p, 1))) {
        let n = names.iter().filter(|x| **x == p.to_str().unwrap()).count();
        assert_eq!(n, times, "high-priority records for {}: {names:?}", p.display());
    }
    assert!(repinned.iter().any(|r| r["target"] == "pins" && r["outcome"].as_str().unwrap_or("").contains("re-pinned")), "{repinned:?}");
    assert!(agent.log_text().contains("link pin removed"), "the agent logs it:\n{}", agent.log_text());

    // Fail-static again: the agent dies, the re-pinned links hold the cut.
    agent.kill9();
    assert_cut(&srv, cg.path(), port, "agent dead after the re-pin");
}

/// (a2) A pin directory the agent has seen whole and unchanged for a while
/// is no longer walked pin by pin (see kernel/pin_stamps.rs): its ctime
/// tells. A pin removed from such a settled directory is still put back,
/// and so is one removed right after that check settled it again.
#[test]
fn link_pin_removed_from_a_settled_directory_is_repinned() {
    let Some(agent) = Agent::start() else { return };
    let _t = run_bg(&agent, "settled", &["sleep", "1000"], 1);
    let (_dir, target_pins, _host) = link_pins(&agent, "settled");
    for (round, victim) in target_pins.iter().take(2).enumerate() {
        // Older than the stamp's settling time (1 s), and walked since.
        std::thread::sleep(Duration::from_millis(2500));
        remove(std::slice::from_ref(victim));
        assert!(
            wait_until(Duration::from_secs(3), || victim.exists()).is_some(),
            "round {round}: {} not re-pinned within 3 s from a settled directory",
            victim.display()
        );
    }
    wait_until(Duration::from_secs(3), || high(&agent, "link-pin-removed").len() >= 2);
    let recs = high(&agent, "link-pin-removed");
    for p in &target_pins[..2] {
        assert!(recs.iter().any(|r| r["params"]["details"]["pin"] == p.to_str().unwrap()), "no record for {}: {recs:?}", p.display());
    }
}

/// Unmounts (lazily) whatever the test mounted, even if it panics.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// (b) A tmpfs over a target's cgroup directory, with a fake empty
/// `cgroup.procs` and `populated 0`: `stop` acts on the real cgroup (opened
/// by its id), kills every real task, reports the mismatch, and journals
/// and alerts it.
#[test]
fn stop_acts_on_the_real_cgroup_under_a_tmpfs() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "overmount", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"], 3);
    wait_until(Duration::from_secs(5), || children(run.pid()).len() == 2).expect("two children");
    let cg = agent.target_cgroup("overmount");
    let before = pids(&cg);
    assert_eq!(before.len(), 3, "{before:?}");

    let st = Command::new("mount").args(["-t", "tmpfs", "none"]).arg(cg.path()).status().expect("mount");
    assert!(st.success(), "mount tmpfs over {}", cg.path().display());
    let _m = Mounted(cg.path().to_owned());
    std::fs::write(cg.path().join("cgroup.procs"), "").expect("fake cgroup.procs");
    std::fs::write(cg.path().join("cgroup.events"), "populated 0\nfrozen 0\n").expect("fake cgroup.events");
    assert!(pids(&cg).is_empty(), "the path now shows the fake, empty cgroup");

    let r = agent.json(&["stop", "overmount"]);
    assert_eq!(r["survivors"], 0, "{r}");
    assert_eq!(r["tasks_at_start"], 3, "the real tasks were counted, not the fake file: {r}");
    let why = r["cgroup_path_mismatch"].as_str().unwrap_or_else(|| panic!("stop must report the mismatch: {r}"));
    assert!(why.contains("not on cgroup2"), "{why}");
    assert_all_dead(&agent, "after stop under a tmpfs", &before);

    let recs = high(&agent, "cgroup-path-mismatch");
    assert!(recs.iter().any(|r| r["target"] == "overmount"), "a high-priority journal record: {recs:?}");
}

/// Points target `name` at `cgroup` (and `cgroup_id`, when given) in the
/// registry (its file `targets/NAME.json`), as a workload that can write
/// the state dir would.
fn forge(agent: &Agent, name: &str, cgroup: &Path, cgroup_id: Option<u64>) {
    let path = registry_file(agent, name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("target file")).expect("target file is JSON");
    fn walk(v: &mut Value, name: &str, cgroup: &Path, id: Option<u64>) -> bool {
        match v {
            Value::Object(m) if m.get("name").and_then(Value::as_str) == Some(name) && m.contains_key("cgroup") => {
                m.insert("cgroup".into(), Value::String(cgroup.display().to_string()));
                if let Some(id) = id {
                    m.insert("cgroup_id".into(), Value::from(id));
                }
                true
            }
            Value::Object(m) => m.values_mut().any(|x| walk(x, name, cgroup, id)),
            Value::Array(a) => a.iter_mut().any(|x| walk(x, name, cgroup, id)),
            _ => false,
        }
    }
    assert!(walk(&mut v, name, cgroup, cgroup_id), "target {name} not found in {v}");
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write the target's file");
}

/// Target `name`'s file in the agent's registry.
fn registry_file(agent: &Agent, name: &str) -> std::path::PathBuf {
    agent.state_dir.join("targets").join(format!("{name}.json"))
}

/// (c) With the agent dead, a forged registry pointing a target at a decoy
/// cgroup (path only, then path and id) makes the fallback refuse, naming
/// the mismatch, and journal the refusal; the decoy lives. With the
/// registry put back, the fallback stops the real target.
#[test]
fn fallback_refuses_a_forged_registry() {
    let Some(mut agent) = Agent::start() else { return };
    let _t = run_bg(&agent, "real", &["sleep", "1000"], 1);
    let real = pids(&agent.target_cgroup("real"));
    assert_eq!(real.len(), 1);
    let decoy = make_cgroup(agent.cgroup_parent.join("decoy"));
    let d = spawn_outside(&["sleep", "1000"]);
    move_into(&decoy, d.pid());
    let registry = std::fs::read(registry_file(&agent, "real")).expect("the target's file");
    agent.kill9();

    let fallback = agent.state_dir.join("fallback-journal.jsonl");
    let cases = [(None, "is cgroup"), (Some(decoy.id().expect("decoy id")), "not a target in the pinned KP_TARGETS")];
    for (forged_id, needle) in cases {
        forge(&agent, "real", decoy.path(), forged_id);
        let out = agent.kp(&["--json", "stop", "real", "--agent-timeout", "2"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "a forged registry must be refused: {}", show(&out));
        assert!(err.contains("does not lead to its cgroup") && err.contains(needle), "the refusal names the mismatch ({needle}): {}", show(&out));
        assert!(alive(d.pid()), "the decoy was killed through a forged registry");
        assert!(real.iter().all(|p| alive(*p)), "refused: nothing is stopped");
        let refused: Vec<Value> = std::fs::read_to_string(&fallback)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["phase"] == "result" && r["outcome"].as_str().is_some_and(|o| o.starts_with("refused") && o.contains(needle)))
            .collect();
        assert!(!refused.is_empty() && refused.iter().all(|r| r["high_priority"] == true), "the refusal is journaled, high priority");
    }

    // The genuine registry: the fallback stops the real target, not the decoy.
    std::fs::write(registry_file(&agent, "real"), &registry).expect("put the registry back");
    let out = agent.kp(&["--json", "stop", "real", "--agent-timeout", "2"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_all_dead(&agent, "after the genuine fallback stop", &real);
    assert!(alive(d.pid()), "the decoy is not a target");
}
