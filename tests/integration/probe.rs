//! `probe` really loads programs: on the host BPF LSM is refused, in the VM
//! (Debian 6.1, lsm=...,bpf) it loads, attaches and its hook runs.
use crate::harness::Agent;

fn program(r: &serde_json::Value, ty: &str) -> serde_json::Value {
    r["program_types"].as_array().expect("program_types").iter().find(|p| p["program_type"] == ty).cloned().unwrap_or_else(|| panic!("no {ty} in {r}"))
}

fn check_common(r: &serde_json::Value) {
    assert!(r["cgroup2_mount"].is_string(), "{r}");
    assert_eq!(r["cgroup_kill"], true, "{r}");
    assert_eq!(r["cgroup_freeze"], true, "{r}");
    assert_eq!(r["btf"], true, "{r}");
    for ty in ["cgroup_skb", "cgroup_sock_addr", "cgroup_sock", "sched_cls", "raw_tracepoint", "tracepoint"] {
        assert_eq!(program(r, ty)["available"], true, "{ty}: {r}");
    }
}

#[test]
fn probe_host_refuses_lsm() {
    let Some(agent) = Agent::start() else { return };
    let r = agent.json(&["probe"]);
    check_common(&r);
    assert_eq!(r["lsm_available"], false, "{r}");
    let lsm = program(&r, "lsm");
    assert_eq!(lsm["available"], false);
    assert!(lsm["detail"].as_str().unwrap_or("").contains("lsm"), "detail names the problem: {lsm}");
    // The human output says so too.
    let out = agent.kp(&["probe"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("BPF LSM         UNAVAILABLE"));
}

#[test]
fn lsm_probe_available_in_vm() {
    let Some(agent) = Agent::start() else { return };
    let r = agent.json(&["probe"]);
    check_common(&r);
    let lsm = program(&r, "lsm");
    assert_eq!(lsm["available"], true, "BPF LSM should load, attach and run here: {lsm}");
    assert!(lsm["detail"].as_str().unwrap_or("").contains("ran"), "{lsm}");
    assert_eq!(r["lsm_available"], true);
    assert!(r["active_lsms"].as_str().unwrap_or("").split(',').any(|l| l == "bpf"), "{r}");
}
