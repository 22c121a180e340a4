//! A real `prometheus` server (private config, storage and port) scrapes
//! the agent every second and evaluates `deploy/prometheus/killpath-rules.yml`;
//! its HTTP API is asked what it stored.
use std::{path::Path, process::Stdio, time::Duration};

use serde_json::Value;

use super::{agent_with_metrics, http_get, refused_connects, which, Sink};
use crate::{
    harness::{skip, wait_until},
    support::{net::free_tcp_port, process::run_bg},
};

/// The rules file the deploy directory ships.
fn rules_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/killpath-rules.yml")
}

/// A running `prometheus`, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts prometheus scraping `target` every second (job `killpath`),
    /// with the shipped rules, and waits until it is ready.
    fn start(dir: &Path, target: &str) -> Option<Self> {
        let Some(bin) = which("prometheus") else {
            skip("prometheus is not installed (`cargo xtask setup` installs Debian's prometheus package)");
            return None;
        };
        let config = dir.join("prometheus.yml");
        let rules = rules_file();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: killpath\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_tcp_port());
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, log };
        let ready = wait_until(Duration::from_secs(30), || {
            std::process::Command::new("curl").args(["-sf", "-o", "/dev/null", &format!("http://{}/-/ready", p.addr)]).status().is_ok_and(|s| s.success())
        });
        assert!(ready.is_some(), "prometheus never became ready:\n{}", p.log_text());
        Some(p)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH`, parsed; asserts `status: success`.
    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&format!("http://{}/api/v1/{path}", self.addr));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus {path}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "prometheus {path}: {v}");
        v
    }

    /// An instant query's single value (None: no series, or several).
    fn value(&self, promql: &str) -> Option<f64> {
        let q: String =
            promql.bytes().map(|b| if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        let v = self.api(&format!("query?query={q}"));
        match v["data"]["result"].as_array().map(Vec::as_slice) {
            Some([one]) => one["value"][1].as_str().and_then(|s| s.parse().ok()),
            _ => None,
        }
    }

    /// Waits until `promql` has value `want` (what it last had otherwise).
    fn wait_for(&self, promql: &str, want: f64) -> Result<(), Option<f64>> {
        let mut last = None;
        match wait_until(Duration::from_secs(20), || {
            last = self.value(promql);
            last == Some(want)
        }) {
            Some(()) => Ok(()),
            None => Err(last),
        }
    }

    /// Names of the alerts (pending or firing) whose `target` label is `target`.
    fn alerts_for(&self, target: &str) -> Vec<String> {
        let v = self.api("alerts");
        v["data"]["alerts"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["labels"]["target"] == target).filter_map(|x| x["labels"]["alertname"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

/// Prometheus scrapes the agent (`up` 1), stores `killpath_target_level`
/// 0 then 2 after a degrade, the exact count of connects the workload saw
/// refused, and its rule engine raises `KillpathTargetDegraded` and
/// `KillpathDenialsRising` for the target from the shipped rules.
#[test]
fn metrics_prometheus_scrapes_level_and_denials() {
    let Some((agent, addr)) = agent_with_metrics() else { return };
    let Some(prom) = Prometheus::start(agent.dir.path(), &addr) else { return };
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let level = r#"killpath_target_level{job="killpath",target="web"}"#;
    let up = r#"up{job="killpath"}"#;
    prom.wait_for(up, 1.0).unwrap_or_else(|v| panic!("up is {v:?}, not 1: {}\n{}", prom.api("targets"), prom.log_text()));
    prom.wait_for(level, 0.0).unwrap_or_else(|v| panic!("{level} is {v:?}, not 0: {}\n{}", prom.api("targets"), prom.log_text()));

    let r = agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    assert_eq!(r["level"], "degrade", "{r}");
    let sink = Sink::new();
    let refused = refused_connects(agent.target_cgroup("web").path(), &sink, 5);
    assert_eq!(refused, 5, "every connect from inside is refused");
    assert_eq!(sink.accepted(), 0, "no connect from inside reached the listener outside");

    prom.wait_for(level, 2.0).unwrap_or_else(|v| panic!("{level} is {v:?}, not 2: {}\n{}", prom.api("targets"), prom.log_text()));
    let denials = r#"killpath_target_denials_total{job="killpath",target="web",capability="net.connect"}"#;
    prom.wait_for(denials, refused as f64).unwrap_or_else(|v| panic!("{denials} is {v:?}, not {refused}"));
    let mut names = Vec::new();
    let fired = wait_until(Duration::from_secs(20), || {
        names = prom.alerts_for("web");
        names.iter().any(|n| n == "KillpathTargetDegraded") && names.iter().any(|n| n == "KillpathDenialsRising")
    });
    assert!(fired.is_some(), "alerts for web: {names:?}");
    assert!(!names.iter().any(|n| n == "KillpathTargetStopped" || n == "KillpathTargetIsolated"), "{names:?}");
}
