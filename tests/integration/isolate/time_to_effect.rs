//! isolate and restore are timed, and the journal holds the same times.
use crate::{harness::Agent, support::process::run_bg};

/// isolate and restore report time to effect (and the map update inside
/// it) and journal intent + result with that time.
#[test]
fn isolate_reports_time_to_effect_and_journals_it() {
    let Some(agent) = Agent::start() else { return };
    let _a = run_bg(&agent, "timed", &["sleep", "1000"], 1);
    let r = agent.json(&["isolate", "timed", "--reason", "drill-8"]);
    let tte = r["time_to_effect_us"].as_u64().unwrap_or_else(|| panic!("no time_to_effect_us: {r}"));
    let mu = r["map_update_us"].as_u64().unwrap_or_else(|| panic!("no map_update_us: {r}"));
    eprintln!("isolate: time_to_effect_us={tte} map_update_us={mu}");
    assert!(mu > 0 && tte > 0, "measured times: {r}");
    assert!(mu <= tte, "the map update is part of the time to effect: {r}");
    assert!(tte < 1_000_000, "isolate is a map update, not a second: {r}");
    let r2 = agent.json(&["restore", "timed", "--to", "normal", "--reason", "drill-8 over"]);
    let rtte = r2["time_to_effect_us"].as_u64().unwrap_or_else(|| panic!("no time_to_effect_us: {r2}"));
    assert!(rtte > 0 && rtte < 1_000_000, "{r2}");

    let recs = agent.journal();
    for (action, resp, from, to, reason) in [("isolate", &r, 0, 3, "drill-8"), ("restore", &r2, 3, 0, "drill-8 over")] {
        let intent = recs
            .iter()
            .find(|e| e["action"] == action && e["phase"] == "intent" && e["target"] == "timed")
            .unwrap_or_else(|| panic!("no {action} intent in {recs:?}"));
        assert_eq!(intent["params"]["reason"], reason, "{intent}");
        assert_eq!(intent["from_level"], from, "{intent}");
        let result = recs
            .iter()
            .find(|e| e["action"] == action && e["phase"] == "result" && e["intent_seq"] == intent["seq"])
            .unwrap_or_else(|| panic!("no {action} result for intent {intent}"));
        assert_eq!(result["outcome"], "ok", "{result}");
        assert_eq!(result["to_level"], to, "{result}");
        assert_eq!(result["time_to_effect_us"], resp["time_to_effect_us"], "journal and response agree: {result} vs {resp}");
        assert_eq!(result["seq"], resp["journal_seq"], "the response names its journal record: {resp}");
        assert!(intent["seq"].as_u64() < result["seq"].as_u64());
    }
    let v = agent.json(&["journal", "--verify"]);
    assert_eq!(v["ok"], true, "{v}");
}
