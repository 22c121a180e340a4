//! Benchmark: what armed tripwires cost on the egress path. Loopback iperf3
//! with the client inside a target and outside every target, with and
//! without kernel-counted rules on that target (thresholds out of reach,
//! so nothing fires): every packet of the target is charged to its rules
//! in the cgroup skb egress hook, and every packet of the host pays the
//! hook's target lookup while any rule is armed.
use anyhow::Result;
use serde_json::json;

use super::{
    common::{check_interrupted, rotate},
    iperf::iperf,
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};

/// The target the rules watch.
const TARGET: &str = "twcost";
/// iperf3 test length per sample, seconds.
const SECS: u32 = 3;
/// The rules: critical (so the target is armed for isolate, as a real
/// critical rule makes it), on the egress metrics and destinations, one of
/// them for every target.
const RULES: &[(&str, &str, &str)] = &[
    ("twcost-bytes", TARGET, "egress-bytes"),
    ("twcost-packets", TARGET, "egress-packets"),
    ("twcost-dests", TARGET, "destinations"),
    ("twcost-every", "*", "egress-bytes"),
];

pub(super) fn tripwire_cost(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Cost of armed tripwires on egress".into();
    s.description = format!(
        "Loopback TCP, `iperf3 -c 127.0.0.1 -t {SECS} -J` against `iperf3 -s -1`, the client inside target \
         `{TARGET}` and outside every target, in two states: **none**, no tripwire; **armed**, {} critical \
         rules ({}) with thresholds out of reach, so every packet of the target is charged to its rules in \
         the cgroup skb egress hook and nothing fires. {} repetitions, the order of the states rotating. \
         Received bits per second, and per CPU-second of sender and receiver together (iperf3's own \
         `cpu_utilization_percent`, the less noisy figure on a shared machine).",
        RULES.len(),
        RULES.iter().map(|(_, t, m)| format!("`{m}` on `{t}`")).collect::<Vec<_>>().join(", "),
        p.overhead_reps
    );
    sb.call("create", json!({"name": TARGET}))?;
    let cg = sb.parent().join(TARGET);
    for rep in 0..p.overhead_reps {
        for armed in rotate(&[false, true], rep) {
            check_interrupted()?;
            let tag = if armed { "armed" } else { "none" };
            for (name, target, metric) in RULES {
                // Removed first: the previous state may have armed them.
                let _ = sb.kp(&["tripwire", "remove", name]);
                if armed {
                    sb.kp(&[
                        "tripwire",
                        "add",
                        name,
                        "--target",
                        target,
                        "--metric",
                        metric,
                        "--above",
                        "1000G",
                        "--window",
                        "1s",
                        "--action",
                        "isolate",
                        "--critical",
                    ])?;
                }
            }
            for (inside, place) in [(true, "client in the target"), (false, "client outside every target")] {
                let (bps, per_cpu) = iperf(SECS, inside.then_some(cg.as_path()))?;
                let id = format!("{}_{tag}", if inside { "in" } else { "out" });
                s.push(&id, &format!("iperf3 TCP, {place}, rules {tag}"), Unit::BitsPerSecond, bps);
                s.push(&format!("{id}_cpu"), &format!("iperf3 TCP per CPU-second, {place}, rules {tag}"), Unit::BitsPerCpuSecond, per_cpu);
                println!("bench:   tripwire cost, {place}, rules {tag}: {:.2} Gbit/s ({:.2} Gbit/CPU-s)", bps / 1e9, per_cpu / 1e9);
            }
        }
    }
    for (name, _, _) in RULES {
        let _ = sb.kp(&["tripwire", "remove", name]);
    }
    s.ratio("tripwire_in_cpu", "iperf3 per CPU-second in a target, tripwires armed / none (p50)", "in_armed_cpu", "in_none_cpu", 0.5, Some("≥ 0.95"));
    s.ratio("tripwire_in", "iperf3 throughput in a target, tripwires armed / none (p50)", "in_armed", "in_none", 0.5, Some("≥ 0.95"));
    s.ratio("tripwire_out_cpu", "iperf3 per CPU-second outside targets, tripwires armed / none (p50)", "out_armed_cpu", "out_none_cpu", 0.5, Some("≥ 0.95"));
    Ok(())
}
