//! Ending audit mode, and bad audit requests.
use super::{refused, row, workload, would, Receivers};
use crate::{harness::Agent, support::process::run_bg};

/// `restore --audit-off` reports what was counted, then nothing is counted
/// any more (the workload keeps connecting; the counters stay empty).
#[test]
fn audit_off_reports_and_goes_quiet() {
    let Some(agent) = Agent::start() else { return };
    let rx = Receivers::start();
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    agent.json(&["degrade", "web", "--revoke", "net.connect", "--audit"]);
    agent.json(&["isolate", "web", "--audit"]);
    let (ok, _, _) = workload(&cg, &rx, 3, 0);
    assert_eq!(ok, 3);
    assert_eq!((would(&agent, "web", "net.connect"), would(&agent, "web", "isolate.connects_and_sends")), (3, 3), "{}", row(&agent, "web"));

    let r = agent.json(&["restore", "web", "--audit-off"]);
    assert_eq!((r["would_have_refused"]["net.connect"].as_u64(), r["would_have_refused"]["isolate.connects_and_sends"].as_u64()), (Some(3), Some(3)), "{r}");
    assert_eq!(r["level"], "normal", "{r}");
    let st = row(&agent, "web");
    assert_eq!((st["audit"]["active"].as_bool(), st["would_have_refused"].as_object().map(|m| m.len())), (Some(false), Some(0)), "{st}");
    assert!(agent.journal().iter().any(|e| e["action"] == "audit-off" && e["phase"] == "result" && e["outcome"] == "ok"), "journaled");

    // Quiet: the same workload is not counted any more.
    let (ok, _, errs) = workload(&cg, &rx, 3, 0);
    assert_eq!((ok, errs.as_str()), (3, "[]"));
    assert_eq!(rx.wait_for((6, 0, 0, 0)).0, 6, "the listener outside got all six connections");
    let st = row(&agent, "web");
    assert_eq!(st["would_have_refused"].as_object().map(|m| m.len()), Some(0), "nothing counted after audit-off: {st}");
    assert!(refused(&agent, &["restore", "web", "--audit-off"]).contains("nothing in audit mode"));
}

/// Bad audit requests get a clear error naming the problem; nothing changes; the agent keeps running.
#[test]
fn audit_bad_input_is_refused_clearly() {
    let Some(agent) = Agent::start() else { return };
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let e = refused(&agent, &["degrade", "web", "--revoke", "net.nosuch", "--audit"]);
    assert!(e.contains("net.nosuch"), "names the unknown capability: {e}");
    let e = refused(&agent, &["isolate", "web", "--audit", "--verify"]);
    assert!(e.contains("--verify") && e.contains("--audit"), "{e}");
    let e = refused(&agent, &["restore", "web", "--audit-off"]);
    assert!(e.contains("nothing in audit mode"), "{e}");
    let e = refused(&agent, &["restore", "web", "--audit-off", "--to", "normal"]);
    assert!(e.contains("--audit-off") || e.contains("--to"), "{e}");
    let e = refused(&agent, &["isolate", "nosuch", "--audit"]);
    assert!(e.contains("nosuch"), "{e}");
    // Already enforced: nothing left to audit.
    agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    let e = refused(&agent, &["degrade", "web", "--revoke", "net.connect", "--audit"]);
    assert!(e.contains("nothing to audit") && e.contains("net.connect"), "{e}");
    agent.json(&["isolate", "web"]);
    let e = refused(&agent, &["isolate", "web", "--audit"]);
    assert!(e.contains("nothing to audit") && e.contains("already enforced"), "{e}");
    let st = row(&agent, "web");
    assert_eq!((st["level"].as_str(), st["audit"]["active"].as_bool()), (Some("isolate"), Some(false)), "nothing changed: {st}");
}
