//! What the agent reports about its targets: status rows, the stopped
//! state, whether its BPF LSM hooks are attached.
use killpath::kernel::cgroup::Cgroup;
use serde_json::Value;

use crate::{
    harness::{skip, Agent},
    support::process::assert_all_dead,
};

/// The row for `name` in `status --json`, if listed.
pub(crate) fn target_row(agent: &Agent, name: &str) -> Option<Value> {
    let st = agent.json(&["status"]);
    st["targets"].as_array().expect("status has a targets array").iter().find(|t| t["name"] == name).cloned()
}

pub(crate) fn guard_kills(agent: &Agent) -> u64 {
    agent.json(&["status"])["guard_kills"].as_u64().expect("status has guard_kills")
}

/// `killpath --json stop NAME`, asserting success.
pub(crate) fn stop(agent: &Agent, name: &str) -> Value {
    agent.json(&["stop", name])
}

/// A stop of `name` in a forced freeze/kill `order` (the request's
/// `order`, which the CLI does not offer; the bench uses it too), sent on
/// the agent's socket: the report.
pub(crate) fn stop_in_order(agent: &Agent, name: &str, order: &str) -> Value {
    use std::io::{BufRead as _, Write as _};
    let mut w = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect to the agent");
    w.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("read timeout");
    let req = serde_json::json!({"id": 1, "cmd": "stop", "args": {"name": name, "order": order}});
    w.write_all(format!("{req}\n").as_bytes()).expect("send the stop");
    let mut line = String::new();
    std::io::BufReader::new(w).read_line(&mut line).expect("the stop's answer");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"));
    assert_eq!(v["ok"], true, "stop in order {order}: {v}");
    v["result"].clone()
}

/// Everything a completed hard stop must show: the report says 0 survivors
/// and a time, every pid recorded before is dead, the cgroup (checked in
/// cgroup.events and cgroup.procs, recursively) is empty, and status says
/// the target is stopped, in the registry and in the kernel map.
pub(crate) fn assert_stopped(agent: &Agent, name: &str, cg: &Cgroup, report: &Value, before: &[i32]) {
    assert_eq!(report["survivors"], 0, "stop left survivors: {report}\nagent log:\n{}", agent.log_text());
    assert_eq!(report["level"], "stopped", "{report}");
    let tte = report["time_to_empty_us"].as_u64().unwrap_or_else(|| panic!("no time_to_empty_us: {report}"));
    assert!(tte > 0, "time_to_empty_us must be a measured time: {report}");
    let tth = report["time_to_halt_us"].as_u64().unwrap_or_else(|| panic!("no time_to_halt_us: {report}"));
    assert!(tth > 0 && tth <= tte, "halt ({tth} µs) must come before empty ({tte} µs): {report}");
    assert_all_dead(agent, &format!("after stop {name}"), before);
    for sub in cg.subtree() {
        assert_eq!(sub.populated().ok(), Some(false), "{} still populated after stop: {report}", sub.path().display());
        assert!(sub.procs().is_empty(), "{} still lists {:?}", sub.path().display(), sub.procs());
    }
    let row = target_row(agent, name).unwrap_or_else(|| panic!("status no longer lists {name}"));
    assert_eq!(row["level"], "stopped", "{row}");
    assert_eq!(row["kernel_level"], "stopped", "the guard must be armed in the kernel map: {row}");
    assert_eq!(row["tasks"], 0, "{row}");
    assert_eq!(row["last_stop"]["survivors"], 0, "{row}");
}

/// Whether the agent's BPF LSM hooks are attached (status.isolation.lsm).
pub(crate) fn lsm_attached(agent: &Agent) -> bool {
    agent.json(&["status"])["isolation"]["lsm"] == "attached"
}

/// Skips (fails under KILLPATH_TEST_STRICT) when BPF LSM hooks are not attached.
pub(crate) fn need_lsm(agent: &Agent) -> bool {
    lsm_attached(agent) || skip("needs BPF LSM hooks attached (runs in the VM: cargo xtask test --vm-only)")
}

/// The strings of a JSON array.
pub(crate) fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")).to_owned()).collect()
}
