//! A scrape's [`Sample`] as the Prometheus text format (0.0.4), through
//! `prometheus-client`: a registry built fresh for each scrape from the
//! values just read (so a released target's series go away), plus the
//! counters kept since the agent started ([`super::recorded`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    recorded::{recorded, Labels},
    sample::Sample,
};
use crate::{degrade::Capability, target::level_name};

/// Builds gauge and counter families with the `killpath_` prefix.
struct Builder {
    registry: Registry,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Builder {
    fn gauge(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, i64)>) {
        let f: Family<Labels, Gauge> = Family::default();
        for (l, v) in rows {
            f.get_or_create(&l).set(v);
        }
        self.registry.register(name, help, f);
    }

    fn gauge_f64(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
        let f: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        for (l, v) in rows {
            f.get_or_create(&l).set(v);
        }
        self.registry.register(name, help, f);
    }

    /// A counter read from the kernel: its value as of now (the library
    /// adds `_total`).
    fn counter(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let f: Family<Labels, Counter> = Family::default();
        for (l, v) in rows {
            f.get_or_create(&l).inc_by(v);
        }
        self.registry.register(name, help, f);
    }
}

/// Level numbers as `killpath_target_level` reports them.
const LEVELS_HELP: &str = "Level the kernel enforces on the target: 0 normal, 1 throttle, 2 degrade, 3 isolate, 4 stopped (label level_name names it).";

/// The whole scrape, as text.
pub(super) fn encode(s: &Sample) -> Result<String, std::fmt::Error> {
    let mut b = Builder { registry: Registry::with_prefix("killpath") };
    let ts = &s.targets;
    let t1 = |name: &str| labels(&[("target", name)]);

    b.gauge("up", "1 while the agent serves (the scrape itself answered).", [(Labels::new(), 1)]);
    b.gauge("target_level", LEVELS_HELP, ts.iter().map(|t| (labels(&[("target", &t.name), ("level_name", level_name(t.level))]), t.level as i64)));
    b.gauge("targets", "Targets the agent manages.", [(Labels::new(), ts.len() as i64)]);
    b.gauge(
        "target_capability_revoked",
        "1 when the capability is revoked from the target (kernel entry), else 0.",
        ts.iter()
            .flat_map(|t| Capability::ALL.iter().map(move |c| (labels(&[("target", &t.name), ("capability", c.name())]), i64::from(t.revoked & c.bit() != 0)))),
    );
    b.gauge(
        "target_throttle_ceiling",
        "Throttle ceiling per class: syscalls, bytes or packets per second; `tasks` is the live task limit.",
        ts.iter().flat_map(|t| t.ceilings.iter().map(move |(class, v)| (labels(&[("target", &t.name), ("class", class)]), *v as i64))),
    );
    b.counter(
        "target_throttle",
        "Throttle bucket counts (kernel): outcome passed (units within budget), paced (over the ceiling: task paused; for egress, packets passed ECN-marked), \
         denied (refused; for egress, packets dropped).",
        ts.iter().flat_map(|t| {
            t.buckets.iter().flat_map(move |(class, c)| {
                let egress = class.starts_with("egress");
                [("passed", c.passed), (if egress { "marked" } else { "paced" }, c.paced), (if egress { "dropped" } else { "denied" }, c.denied)]
                    .map(|(o, v)| (labels(&[("target", &t.name), ("class", class), ("outcome", o)]), v))
            })
        }),
    );
    b.counter(
        "target_denials",
        "Refusals per capability (exact kernel counts, summed over CPUs).",
        ts.iter().flat_map(|t| t.denials.iter().map(move |(i, n)| (labels(&[("target", &t.name), ("capability", crate::degrade::name_of_index(*i))]), *n))),
    );
    b.counter(
        "target_protection_refusals",
        "Self-protection refusals (BPF LSM): the target's tasks reaching for the agent, its pins, files or cgroups.",
        ts.iter().flat_map(|t| t.protections.iter().map(move |(p, n)| (labels(&[("target", &t.name), ("protection", p)]), *n))),
    );
    b.counter(
        "target_escape_attempts",
        "Moves out of the target's cgroup the kernel saw (reverted by the agent).",
        ts.iter().filter_map(|t| t.escapes.map(|e| (t1(&t.name), e))),
    );
    b.counter(
        "target_guard_kills",
        "Tasks the stop guard killed in the target (forked, run or moved into it after its stop).",
        ts.iter().filter_map(|t| t.guard_kills.map(|n| (t1(&t.name), n))),
    );
    b.gauge("target_tasks", "Live tasks in the target's cgroup and below (cgroup.procs).", ts.iter().filter_map(|t| t.tasks.map(|n| (t1(&t.name), n as i64))));
    b.gauge(
        "target_last_stop_survivors",
        "Tasks still alive when the target's last stop gave up waiting (must be 0).",
        ts.iter().filter_map(|t| t.last_stop_survivors.map(|n| (t1(&t.name), n as i64))),
    );
    b.gauge("target_pending_approvals", "Actions on the target waiting for a human's approval.", ts.iter().map(|t| (t1(&t.name), t.pending as i64)));
    b.gauge(
        "target_tripwire_fired",
        "1 for each tripwire rule that fired on the target (once per arming).",
        ts.iter().flat_map(|t| t.tripwires.iter().map(move |(rule, _)| (labels(&[("target", &t.name), ("rule", rule)]), 1))),
    );
    b.gauge_f64(
        "target_tripwire_exposure_seconds",
        "Exposure window of a tripwire firing: the kernel's crossing to the action in force.",
        ts.iter().flat_map(|t| t.tripwires.iter().filter_map(move |(rule, us)| us.map(|us| (labels(&[("target", &t.name), ("rule", rule)]), us / 1e6)))),
    );
    b.registry.register("target_time_to_effect_seconds", "Receipt of a level change to the kernel enforcing it, per level reached.", recorded().effect.clone());

    b.counter("guard_kills", "Tasks the stop guard killed (fork or run inside a stopped target).", [(Labels::new(), s.guard_kills)]);
    b.counter("isolation_refusals", "Host-wide isolation refusals by kind (kernel counters).", s.isolation.iter().map(|(k, n)| (labels(&[("kind", k)]), *n)));
    b.counter("membership_marks_lost", "Membership marks the kernel could not store (map full).", s.marks_lost.map(|n| (Labels::new(), n)));
    b.gauge("lsm_attached", "1 when the BPF LSM programs are attached (full enforcement), 0 when this kernel has none.", [(Labels::new(), i64::from(s.lsm))]);
    b.gauge("programs_attached", "Host-wide program links pinned in the running generation.", [(Labels::new(), s.programs_attached as i64)]);
    b.gauge("target_links", "Per-target cgroup program links pinned in the running generation.", [(Labels::new(), s.target_links as i64)]);
    b.gauge(
        "pins_generation",
        "Pin generations present under the pin dir (1 normally; 2 during an upgrade); label generation names the running build's.",
        [(labels(&[("generation", &s.generation)]), s.generations as i64)],
    );
    b.gauge("journal_records", "Sequence number of the journal's last durable record.", [(Labels::new(), s.journal_records as i64)]);
    if let Some(v) = &s.verified {
        b.gauge(
            "journal_verify_ok",
            "1 when the journal's hash chain (and HMACs, and the head the agent wrote) verified, else 0.",
            [(Labels::new(), i64::from(v.ok))],
        );
        b.gauge_f64("journal_verify_timestamp_seconds", "When the journal was last verified (Unix time).", [(Labels::new(), v.at_unix_s)]);
    }
    b.registry.register(
        "target_stops_with_survivors",
        "Stops of the target that left a task alive when they gave up waiting (must stay 0).",
        recorded().stops_with_survivors.clone(),
    );
    b.registry.register("socket_requests", "Socket requests by command and outcome (ok or the error code).", recorded().requests.clone());
    b.registry.register(
        "socket_refused_callers",
        "Requests refused for who sent them (outcome forbidden): not root or the group, inside a target, not an approver.",
        recorded().refused.clone(),
    );

    let mut out = String::new();
    prometheus_text::encode(&mut out, &b.registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn encodes_target_and_agent_metrics_in_the_text_format() {
        let text = encode(&Sample::fixture()).expect("encode");
        assert!(text.contains("# TYPE killpath_target_level gauge\n"), "{text}");
        assert_eq!(line(&text, "killpath_target_level{"), Some(r#"killpath_target_level{target="web",level_name="degrade"} 2"#), "{text}");
        assert!(text.contains("# TYPE killpath_target_denials_total counter\n"), "{text}");
        assert_eq!(line(&text, r#"killpath_target_denials_total{target="web",capability="net.connect"}"#).map(|l| l.ends_with(" 5")), Some(true), "{text}");
        assert!(text.contains(r#"killpath_target_capability_revoked{target="web",capability="net.connect"} 1"#), "{text}");
        assert!(text.contains(r#"killpath_target_capability_revoked{target="web",capability="exec"} 0"#), "{text}");
        // Egress buckets name their outcomes as the policer acts.
        for (o, v) in [("passed", 10), ("marked", 2), ("dropped", 3)] {
            assert!(text.contains(&format!(r#"killpath_target_throttle_total{{target="web",class="egress-bytes",outcome="{o}"}} {v}"#)), "{o}: {text}");
        }
        assert!(text.contains(r#"killpath_target_tripwire_exposure_seconds{target="web",rule="burst"} 0.0015"#), "{text}");
        assert!(text.contains("killpath_up 1\n") && text.contains("killpath_journal_verify_ok 1\n") && text.contains("killpath_lsm_attached 0\n"), "{text}");
        assert!(text.contains(r#"killpath_pins_generation{generation="gen-0123456789abcdef"} 1"#), "{text}");
        assert!(text.contains("killpath_guard_kills_total 4\n"), "{text}");
        // Every sample has HELP and TYPE (what `promtool check metrics` asks).
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# HELP {family} ")) || text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        }
    }

    #[test]
    fn requests_are_counted_by_command_and_outcome() {
        use crate::client::protocol::{ErrorBody, Response};
        let before = encode(&Sample::fixture()).expect("encode");
        let key = r#"killpath_socket_refused_callers_total{command="unit-test-cmd"}"#;
        assert!(!before.contains(key));
        super::super::count_request("unit-test-cmd", &Response::ok(serde_json::Value::Null, serde_json::json!({})));
        super::super::count_request("unit-test-cmd", &Response::err(serde_json::Value::Null, ErrorBody::new("forbidden", "no")));
        let text = encode(&Sample::fixture()).expect("encode");
        assert!(text.contains(r#"killpath_socket_requests_total{command="unit-test-cmd",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"killpath_socket_requests_total{command="unit-test-cmd",outcome="forbidden"} 1"#), "{text}");
        assert!(text.contains(&format!("{key} 1")), "{text}");
    }
}
