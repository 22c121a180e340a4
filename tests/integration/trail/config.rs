//! Recording set in the agent's config file (`[trail] record = [...]`):
//! a target whose name matches records from its creation or adoption
//! without `--trail`; others do not. `adopt --trail` (and an adoption the
//! config records) is one transaction: the adoption's journaled intent
//! carries the trail, and no separate `trail-on` command is journaled.
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{execs_of, records};
use crate::harness::{skip, wait_until, Agent};

#[test]
fn trail_recording_set_in_the_config_file() {
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("agent.toml");
    std::fs::write(&cfg, "[trail]\nrecord = [\"cfg-*\"]\n").expect("config");
    let Some(a) = Agent::start_with(&["--config", &cfg.display().to_string()]) else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; /bin/echo from-$0; touch {}/done-$0; exec sleep 60", go.display(), dir.path().display());
    let spawn = |name: &str| a.cmd(&["run", name, "--", "sh", "-c", &script, name]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("run");
    let mut recorded = spawn("cfg-run");
    let mut plain = spawn("plain-run");
    // Adopted without --trail: the config's pattern records it.
    let mut adoptee = Command::new("sh").args(["-c", &script, "cfg-adopt"]).stdin(Stdio::null()).spawn().expect("workload");
    a.json(&["adopt", "cfg-adopt", "--pid", &adoptee.id().to_string()]);
    for name in ["cfg-run", "plain-run"] {
        wait_until(Duration::from_secs(20), || a.json(&["status"])["targets"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == name)))
            .unwrap_or_else(|| panic!("{name} never created"));
    }
    let recording = |name: &str| a.json(&["status", name])["targets"][0]["trail"]["recording"].clone();
    assert_eq!(recording("cfg-run"), true, "run of a name the config records");
    assert_eq!(recording("cfg-adopt"), true, "adopt of a name the config records");
    assert_eq!(recording("plain-run"), false, "a name the config does not name");
    std::fs::write(&go, "").expect("go");
    for name in ["cfg-run", "cfg-adopt"] {
        wait_until(Duration::from_secs(15), || !execs_of(&records(&a, name, &[]), "/bin/echo").is_empty())
            .unwrap_or_else(|| panic!("{name}'s exec is not in its trail: {:#?}", records(&a, name, &[])));
        let echo = execs_of(&records(&a, name, &[]), "/bin/echo");
        assert_eq!(echo, [["/bin/echo".to_owned(), format!("from-{name}")]], "{name}");
    }
    // The plain target ran its echo too (the same script), unrecorded: the
    // kernel decides at the exec itself, so once the script is past it
    // nothing of it can still be on its way.
    wait_until(Duration::from_secs(15), || dir.path().join("done-plain-run").exists()).expect("the plain target ran its script");
    assert!(records(&a, "plain-run", &[]).iter().all(|r| r["action"] != "exec"), "{:#?}", records(&a, "plain-run", &[]));
    // One transaction each: the intent says trail, no trail-on command.
    let journal = a.journal();
    for (name, action) in [("cfg-run", "run"), ("cfg-adopt", "adopt")] {
        let intent = journal
            .iter()
            .find(|r| r["target"] == name && r["action"] == action && r["phase"] == "intent")
            .unwrap_or_else(|| panic!("no {action} intent for {name}"));
        assert_eq!(intent["params"]["trail"], true, "{intent:#}");
        assert!(!journal.iter().any(|r| r["target"] == name && r["action"] == "trail-on"), "{name}: a separate trail-on command was journaled");
    }
    for c in [&mut recorded, &mut plain, &mut adoptee] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A config pattern the agent cannot apply stops it from starting, naming
/// the section and the pattern.
#[test]
fn trail_config_with_a_bad_pattern_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[trail]\nrecord = [\"a*b\"]\n").expect("config");
    let out = Command::new(crate::harness::BIN)
        .args(["agent", "--config"])
        .arg(&cfg)
        .args(["--pin-dir", "/nonexistent-kp-pins"])
        .env("KILLPATH_SOCKET", dir.path().join("agent.sock"))
        .env("KILLPATH_STATE_DIR", dir.path().join("state"))
        .output()
        .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started on a bad [trail] pattern: {err}");
    assert!(err.contains("[trail]") && err.contains("a*b"), "{err}");
}
