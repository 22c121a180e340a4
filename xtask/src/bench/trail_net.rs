//! Benchmark: what the trail's network recording costs. Loopback iperf3
//! (the network-heavy workload) with the client inside a recording
//! target, inside a target that does not record, and outside every
//! target, with recording on (for the recording target) and off
//! everywhere. Inside a target every packet pays the trail's flow update
//! in the cgroup skb hooks; outside every target the hooks do not run at
//! all (they sit on the targets' cgroups) and the only host-wide trail
//! hook is one array read per TCP state change (inet_sock_set_state).
use anyhow::Result;
use serde_json::json;

use super::{
    common::{check_interrupted, rotate},
    iperf::iperf,
    sandbox::Sandbox,
    section::{Section, Unit},
    Params,
};

/// The target that records, and one that does not.
const REC: &str = "trailrec";
const OFF: &str = "trailoff";
/// iperf3 test length per sample, seconds.
const SECS: u32 = 3;

pub(super) fn trail_net(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Cost of the network trail".into();
    s.description = format!(
        "Loopback TCP, `iperf3 -c 127.0.0.1 -t {SECS} -J` against `iperf3 -s -1`, the client in target `{REC}` \
         (recording: every packet updates its flow counters in the cgroup skb hooks), in target `{OFF}` (not \
         recording, while `{REC}` records) and outside every target, with recording **on** for `{REC}` and **off** \
         everywhere. {} repetitions, the order of the states rotating. Received bits per second, and per CPU-second \
         of sender and receiver together (iperf3's own `cpu_utilization_percent`, the less noisy figure on a \
         shared machine).",
        p.overhead_reps
    );
    sb.call("create", json!({"name": REC}))?;
    sb.call("create", json!({"name": OFF}))?;
    let rec = sb.parent().join(REC);
    let off = sb.parent().join(OFF);
    for rep in 0..p.overhead_reps {
        for on in rotate(&[true, false], rep) {
            check_interrupted()?;
            sb.kp(&["trail", REC, if on { "--on" } else { "--off" }])?;
            let places: Vec<(&str, &str, Option<&std::path::Path>)> = if on {
                vec![
                    ("in_rec", "client in the recording target", Some(rec.as_path())),
                    ("in_off", "client in a target that does not record", Some(off.as_path())),
                    ("out_rec", "client outside every target, a target records", None),
                ]
            } else {
                vec![("out_none", "client outside every target, nothing records", None)]
            };
            for (id, place, cg) in places {
                let (bps, per_cpu) = iperf(SECS, cg)?;
                s.push(id, &format!("iperf3 TCP, {place}"), Unit::BitsPerSecond, bps);
                s.push(&format!("{id}_cpu"), &format!("iperf3 TCP per CPU-second, {place}"), Unit::BitsPerCpuSecond, per_cpu);
                println!("bench:   trail net, {place}: {:.2} Gbit/s ({:.2} Gbit/CPU-s)", bps / 1e9, per_cpu / 1e9);
            }
        }
    }
    let _ = sb.kp(&["trail", REC, "--off"]);
    s.ratio(
        "trail_net_out_cpu",
        "iperf3 per CPU-second outside targets, a target recording / nothing recording (p50)",
        "out_rec_cpu",
        "out_none_cpu",
        0.5,
        Some("≥ 0.95"),
    );
    s.ratio("trail_net_out", "iperf3 throughput outside targets, a target recording / nothing recording (p50)", "out_rec", "out_none", 0.5, Some("≥ 0.95"));
    s.ratio("trail_net_in_cpu", "iperf3 per CPU-second in a target, recording / not recording (p50)", "in_rec_cpu", "in_off_cpu", 0.5, None);
    s.ratio("trail_net_in", "iperf3 throughput in a target, recording / not recording (p50)", "in_rec", "in_off", 0.5, None);
    Ok(())
}
