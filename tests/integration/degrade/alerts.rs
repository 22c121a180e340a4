//! Every degrade step raises one alert, the same in the journal, on the
//! event stream and in the operator's hook (which also carry the journal
//! head: the alert's own record).
use std::{thread, time::Duration};

use serde_json::{json, Value};

use super::{assert_fails, events::Events};
use crate::{
    harness::{wait_until, Agent},
    support::process::run_bg,
};

/// Every degrade step raises an alert: a high-priority journal record, a
/// line on the event stream, and the operator's hook with the alert as
/// JSON on stdin, all three the same alert. A refused degrade raises none.
#[test]
fn degrade_alert_journal_events_and_hook() {
    let hook_dir = tempfile::tempdir().expect("tempdir");
    let hook_file = hook_dir.path().join("alerts.jsonl");
    let hook = format!("cat >> '{}'", hook_file.display());
    let Some(agent) = Agent::start_with(&["--alert-hook", &hook]) else { return };
    let _t = run_bg(&agent, "alarm", &["sleep", "1000"], 1);
    let ev = Events::start(&agent);
    let hooked = |reason: &str| -> Vec<Value> {
        std::fs::read_to_string(&hook_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("hook got a line that is not JSON ({e}): {l:?}")))
            .filter(|a| a["target"] == "alarm" && a["reason"] == reason)
            .collect()
    };

    let steps: [(&str, &[&str]); 2] = [("drill-42", &[]), ("drill-43", &["--allow-connect", "127.0.0.1:80"])];
    for (reason, extra) in steps {
        let mut args = vec!["degrade", "alarm", "--revoke", "net.connect", "--reason", reason];
        args.extend_from_slice(extra);
        let r = agent.json(&args);
        assert!(
            wait_until(Duration::from_secs(10), || !hooked(reason).is_empty()).is_some(),
            "the alert hook never received the {reason} alert; hook file: {:?}\nagent log:\n{}",
            std::fs::read_to_string(&hook_file),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
        let h = hooked(reason);
        assert_eq!(h.len(), 1, "one hook run per alert: {h:?}");
        let a = &h[0];
        assert_eq!(a["type"], "alert", "{a}");
        assert_eq!(a["priority"], "high", "{a}");
        assert_eq!(a["action"], "degrade", "{a}");
        assert_eq!(a["level"], "degrade", "{a}");
        assert_eq!(a["revoked"], json!(["net.connect"]), "{a}");
        assert_eq!(a["allow_connect"], r["allow_connect"], "{a}");
        assert!(a["message"].as_str().is_some_and(|m| m.contains("alarm") && m.contains("net.connect")), "{a}");
        assert!(a["time_unix_us"].as_u64().is_some_and(|t| t > 0), "{a}");

        // The journal: a high-priority alert record after the degrade result.
        let recs = agent.journal();
        let j: Vec<&Value> = recs.iter().filter(|e| e["action"] == "alert" && e["target"] == "alarm" && e["params"]["reason"] == reason).collect();
        assert_eq!(j.len(), 1, "one journaled alert per step: {j:?}");
        assert_eq!(j[0]["phase"], "event", "{}", j[0]);
        assert_eq!(j[0]["high_priority"], true, "{}", j[0]);
        // The hook's alert also carries the journal head: the alert record itself.
        assert_eq!((&a["head"]["seq"], &a["head"]["hash"]), (&j[0]["seq"], &j[0]["hash"]), "{a}");
        let mut bare = a.clone();
        bare.as_object_mut().unwrap().remove("head");
        assert_eq!(j[0]["params"], bare, "the journal and the hook got the same alert");
        assert!(j[0]["seq"].as_u64() > r["journal_seq"].as_u64(), "the alert follows the degrade result: {} vs {r}", j[0]);

        // The event stream: the same alert.
        ev.wait(Duration::from_secs(10), "the alert on the stream", |e| e.iter().any(|e| e["target"] == "alarm" && e["reason"] == reason));
        let s: Vec<Value> = ev.of("alarm", "alert").into_iter().filter(|e| e["reason"] == reason).collect();
        assert_eq!(s, std::slice::from_ref(a), "the stream and the hook got the same alert");
    }
    assert_eq!(hooked("drill-43")[0]["allow_connect"], json!(["127.0.0.1:80"]));

    // A refused degrade raises no alert anywhere.
    let lines = std::fs::read_to_string(&hook_file).unwrap_or_default().lines().count();
    let journal_alerts = agent.journal().iter().filter(|e| e["action"] == "alert").count();
    let stream = ev.all().len();
    assert_fails(&agent, &["degrade", "alarm", "--revoke", "net.teleport", "--reason", "drill-44"], &["net.teleport"]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&hook_file).unwrap_or_default().lines().count(), lines, "no hook run for a refused degrade");
    assert_eq!(agent.journal().iter().filter(|e| e["action"] == "alert").count(), journal_alerts);
    assert_eq!(ev.all().len(), stream, "no event for a refused degrade");
    let v = agent.json(&["journal", "--verify"]);
    assert_eq!(v["ok"], true, "{v}");
}
