//! Refused isolate, restore and verify requests change nothing.
use super::{assert_level, in_target};
use crate::{
    harness::Agent,
    support::{
        process::{run_bg, show, text},
        status::stop,
    },
};

/// Errors leave nothing changed, and the agent keeps serving.
#[test]
fn isolate_and_restore_errors_change_nothing() {
    let Some(agent) = Agent::start() else { return };
    let _a = run_bg(&agent, "alive", &["sleep", "1000"], 1);
    let _s = run_bg(&agent, "dead", &["sleep", "1000"], 1);
    stop(&agent, "dead");
    let targets_now = |agent: &Agent| {
        let mut st = agent.json(&["status"]);
        for t in st["targets"].as_array_mut().unwrap() {
            t.as_object_mut().unwrap().remove("populated");
        }
        st["targets"].clone()
    };
    let before = targets_now(&agent);
    let journal_len = agent.journal().len();

    let fails = |args: &[&str], needles: &[&str]| {
        let out = agent.kp(args);
        assert!(!out.status.success(), "killpath {args:?} must fail: {}", show(&out));
        let err = text(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "killpath {args:?}: the error should say {n:?}: {}", show(&out));
        }
        assert_eq!(targets_now(&agent), before, "killpath {args:?} changed the targets");
        assert!(agent.kp(&["status"]).status.success(), "the agent stopped serving after {args:?}");
    };
    fails(&["isolate", "no-such-target"], &["unknown-target", "no-such-target"]);
    fails(&["isolate", "no-such-target", "--verify"], &["unknown-target", "no-such-target"]);
    fails(&["restore", "no-such-target", "--to", "normal"], &["unknown-target", "no-such-target"]);
    fails(&["verify", "no-such-target"], &["unknown-target", "no-such-target"]);
    // A stopped target: nothing left to isolate; its guard stays armed.
    fails(&["isolate", "dead"], &["wrong-level", "dead", "stopped"]);
    fails(&["isolate", "dead", "--verify"], &["wrong-level", "dead"]);
    fails(&["verify", "dead"], &["wrong-level", "dead"]);
    // Bad levels, and "restore" that would go up or stay.
    fails(&["restore", "alive", "--to", "bogus"], &["bogus"]);
    fails(&["restore", "alive", "--to", "isolate"], &["restore goes down"]);
    fails(&["restore", "alive", "--to", "normal"], &["restore goes down"]);
    fails(&["restore", "dead", "--to", "stopped"], &[]);
    // Unknown-target, wrong-level and bad-level refusals journal no change.
    let recs = agent.journal();
    assert!(recs[journal_len..].iter().all(|r| r["to_level"].is_null()), "a refused request journaled a level change: {:?}", &recs[journal_len..]);
    assert_level(&agent, "dead", "stopped", "after the refusals");
    assert_level(&agent, "alive", "normal", "after the refusals");

    // On an isolated target, a bad restore keeps it isolated.
    agent.json(&["isolate", "alive"]);
    let before = targets_now(&agent);
    let fails2 = |args: &[&str], needle: &str| {
        let out = agent.kp(args);
        assert!(!out.status.success() && text(&out.stderr).contains(needle), "killpath {args:?}: {}", show(&out));
        assert_eq!(targets_now(&agent), before, "killpath {args:?} changed the targets");
    };
    fails2(&["restore", "alive", "--to", "bogus"], "bogus");
    fails2(&["restore", "alive", "--to", "isolate"], "restore goes down");
    assert_level(&agent, "alive", "isolate", "after the refused restores");
    let out = in_target(&agent, "alive", &["ping", "-c1", "-W1", "127.0.0.1"]);
    assert!(!out.status.success(), "still cut: {}", show(&out));
}
