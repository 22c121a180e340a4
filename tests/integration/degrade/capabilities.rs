//! `capabilities` and `probe` list the catalog; what cannot be enforced
//! here, unknown capabilities and bad allow-lists are refused and change
//! nothing.
use serde_json::json;

use super::{
    assert_fails, assert_state,
    clients::{connect_errno, tcp_sink},
    denials, row, BTF_CAPS, CAPS, EPERM,
};
use crate::{
    harness::Agent,
    support::{
        process::{run_bg, text},
        status::{lsm_attached, stop, strs},
    },
};

/// `capabilities` lists the 13 capabilities, enforceable or not with a
/// reason; revoking one that cannot be enforced here, an unknown one, or
/// using `--allow-write`, is an error naming it that changes nothing: no
/// level, no revoked bit (not even the enforceable ones requested with
/// it), no allow-list entry, no journal level change, no alert.
#[test]
fn degrade_capabilities_and_refusals_change_nothing() {
    let Some(agent) = Agent::start() else { return };
    let lsm = lsm_attached(&agent);
    let caps = agent.json(&["capabilities"]);
    let list = caps["capabilities"].as_array().unwrap_or_else(|| panic!("no capabilities list: {caps}"));
    let names: Vec<&str> = list.iter().map(|c| c["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names, CAPS, "13 capabilities, in catalog order: {caps}");
    let mut unenforceable = Vec::new();
    for c in list {
        let name = c["name"].as_str().unwrap();
        let enforceable = c["enforceable"].as_bool().unwrap_or_else(|| panic!("{c}"));
        if !lsm || !BTF_CAPS.contains(&name) {
            // Without BPF LSM only the cgroup hooks of net.connect and
            // net.raw (raw IP sockets) remain.
            let want = name == "net.connect" || name == "net.raw" || lsm;
            assert_eq!(enforceable, want, "{name}: enforceable must be {want} here (BPF LSM: {lsm}): {c}");
        }
        let detail = c["detail"].as_str().unwrap_or("");
        if enforceable {
            assert!(!detail.contains("not enforceable"), "{c}");
        } else {
            unenforceable.push(name);
            assert!(detail.contains("not enforceable on this kernel"), "{name}: says why: {c}");
            if !lsm {
                assert!(detail.contains("BPF LSM"), "{name}: the reason is the missing BPF LSM: {c}");
            }
        }
    }
    // `probe` lists the same capabilities.
    let probe = agent.json(&["probe"]);
    assert_eq!(probe["capabilities"], caps["capabilities"], "probe and capabilities agree");
    let human = text(&agent.kp(&["capabilities"]).stdout);
    for c in CAPS {
        assert!(human.lines().any(|l| l.starts_with(&format!("{c} "))), "human output lists {c}:\n{human}");
    }
    assert!(human.lines().any(|l| l.starts_with("net.connect ") && l.contains("yes")), "{human}");
    assert!(human.lines().any(|l| l.starts_with("fs.write ") && l.contains("no")), "{human}");

    let port = tcp_sink();
    let _box = run_bg(&agent, "box", &["sleep", "1000"], 1);
    let _dead = run_bg(&agent, "dead", &["sleep", "1000"], 1);
    stop(&agent, "dead");
    let cg = agent.target_cgroup("box").path().to_owned();
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0, "connects work before anything");
    let journal_len = agent.journal().len();
    let p = port.to_string();
    let allow = format!("127.0.0.1:{p}");

    let unchanged = |args: &[&str]| {
        assert_state(&agent, "box", "normal", &[], &[], &format!("after the refused {args:?}"));
        assert_eq!(row(&agent, "box")["denials"], json!({}), "nothing was denied");
        assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0, "after the refused {args:?}: net.connect is not revoked in the kernel either");
    };
    let refuse = |args: &[&str], needles: &[&str]| {
        assert_fails(&agent, args, needles);
        unchanged(args);
    };
    // Not enforceable here: named, nothing half-applied (also not the
    // enforceable net.connect asked for in the same request, whichever
    // comes first, and not its allow-list).
    let first = unenforceable[0];
    refuse(&["degrade", "box", "--revoke", first], &[first, "not enforceable"]);
    let both = format!("net.connect,{first}");
    refuse(&["degrade", "box", "--revoke", &both, "--allow-connect", &allow], &[first, "not enforceable"]);
    let both = format!("{first},net.connect");
    refuse(&["degrade", "box", "--revoke", &both], &[first]);
    for c in &unenforceable {
        refuse(&["degrade", "box", "--revoke", &format!("net.connect,{c}")], &[c, "not enforceable"]);
    }
    // Unknown capability.
    refuse(&["degrade", "box", "--revoke", "net.connect,net.teleport"], &["net.teleport", "unknown capability"]);
    refuse(&["degrade", "box", "--revoke", "net.teleport"], &["net.teleport"]);
    // --allow-write without fs.write revoked (on the host fs.write cannot
    // be revoked at all: see the loop above).
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-write", "/tmp"], &["--allow-write", "fs.write"]);
    // A bad allow-list entry.
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-connect", "127.0.0.1:0"], &["--allow-connect", "127.0.0.1:0"]);
    refuse(&["degrade", "box", "--revoke", "net.connect", "--allow-connect", "10.0.0.0/33"], &["10.0.0.0/33"]);
    // Wrong target or level; restore of what is not revoked.
    refuse(&["degrade", "nobody", "--revoke", "net.connect"], &["unknown-target", "nobody"]);
    assert_fails(&agent, &["degrade", "dead", "--revoke", "net.connect"], &["dead", "stopped"]);
    assert_eq!(row(&agent, "dead")["level"], "stopped");
    refuse(&["restore", "box", "--grant", "net.connect"], &["net.connect"]);
    refuse(&["restore", "box", "--grant", "net.teleport"], &["net.teleport"]);

    let recs = agent.journal();
    let new = &recs[journal_len..];
    assert!(new.iter().all(|r| r["to_level"].is_null()), "a refused request journaled a level change: {new:?}");
    assert!(new.iter().all(|r| r["action"] != "alert"), "a refused request raised an alert: {new:?}");
    assert!(new.iter().all(|r| r["action"] != "degrade"), "a refused degrade was journaled as an action: {new:?}");

    // No allow-list entry was left behind by the refused requests: with
    // net.connect revoked for real, 127.0.0.1:PORT is refused.
    let r = agent.json(&["degrade", "box", "--revoke", "net.connect"]);
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    assert_eq!(r["allow_connect"], json!([]), "{r}");
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), EPERM, "a refused request left an allow-list entry behind");
    assert_eq!(denials(&agent, "box", "net.connect"), 1);
    agent.json(&["restore", "box", "--to", "normal"]);
    assert_state(&agent, "box", "normal", &[], &[], "restored");
    assert_eq!(connect_errno(&cg, "127.0.0.1", port), 0);
}
