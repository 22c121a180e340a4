//! With BPF LSM (the VM): the capabilities only LSM hooks enforce are
//! counted in the scrape too. `exec` revoked: each exec the test tries
//! inside the target fails (seen from outside: the shell's exit status),
//! and `killpath_target_denials_total{capability="exec"}` counts each.
use super::{agent_with_metrics, promtool, promtool_run, sample, scrape};
use crate::support::{cgroup::in_cgroup_within, process::show, status::need_lsm};

#[test]
fn lsm_metrics_count_exec_denials() {
    let Some(promtool) = promtool() else { return };
    let Some((agent, addr)) = agent_with_metrics() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let _web = crate::support::process::run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web");
    agent.json(&["degrade", "web", "--revoke", "exec"]);
    let mut refused = 0;
    for _ in 0..3 {
        // sh moves itself into the target, then execs /bin/true: refused.
        let out = in_cgroup_within(60, cg.path(), &["/bin/true"]);
        assert_eq!(out.status.code(), Some(126), "exec inside the target must fail: {}", show(&out));
        refused += 1;
    }
    let m = scrape(&addr);
    let out = promtool_run(&promtool, &["check", "metrics"], &m);
    assert!(out.status.success(), "promtool check metrics: {}\n{m}", show(&out));
    assert_eq!(sample(&m, "killpath_lsm_attached", &[]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_level", &[("target", "web")]), Some(2.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_capability_revoked", &[("target", "web"), ("capability", "exec")]), Some(1.0), "{m}");
    assert_eq!(sample(&m, "killpath_target_denials_total", &[("target", "web"), ("capability", "exec")]), Some(f64::from(refused)), "{m}");
}
