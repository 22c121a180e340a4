//! `deploy/prometheus/killpath-rules.yml`: valid for Prometheus
//! (`promtool check rules`), and each alert fires on the series that should
//! raise it and stays quiet otherwise (`promtool test rules` with
//! `killpath-rules.test.yml`). The live server test (`prometheus.rs`)
//! loads the same file against a real agent.
use std::path::Path;

use super::{promtool, promtool_run};
use crate::support::process::show;

#[test]
fn metrics_rules_check_and_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let rules = dir.join("killpath-rules.yml");
    let out = promtool_run(&promtool, &["check", "rules", rules.to_str().unwrap()], "");
    assert!(out.status.success(), "promtool check rules: {}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"), "{}", show(&out));
    let tests = dir.join("killpath-rules.test.yml");
    let out = promtool_run(&promtool, &["test", "rules", tests.to_str().unwrap()], "");
    assert!(out.status.success(), "promtool test rules: {}", show(&out));
}
