//! Tests: a pace ceiling never starves the workload. The bench once
//! measured 6/s under a 100/s ceiling in one repetition of three; whatever
//! the cause (a late or lost resume, a hold kept from the previous
//! ceiling, the pacer's own wake-ups), it shows from outside as a read
//! loop whose `syscr` rate falls well below its ceiling in some window.
use std::time::Duration;

use super::{throttle, READ_LOOP};
use crate::{
    harness::{alive, Agent},
    support::process::{py, run_bg, syscall_rate},
};

/// Ceilings in turn, changed down and up (100/s to 10/s, 10/s to
/// 10,000/s, 10,000/s to 10/s, as between the bench's repetitions): right
/// after each change, then again back to back, the read
/// loop's rate over one second, read from /proc/PID/io outside the
/// target, is at least 0.8× the ceiling (and at most 1.25×: the fresh
/// bucket's first burst is spent before the first window starts).
#[test]
fn throttle_pace_never_starves_the_workload() {
    let Some(agent) = Agent::start() else { return };
    let w = run_bg(&agent, "loop", &[py(), "-c", READ_LOOP], 1);
    let pid = w.pid();
    // The interpreter's start is paced like any syscalls: measure only once
    // the loop itself runs (it then makes nothing but reads).
    let free = syscall_rate(pid, Duration::from_millis(500));
    assert!(free > 50_000.0, "the unthrottled loop is too slow to show a ceiling: {free:.0}/s");
    let mut report = Vec::new();
    for ceiling in [100u64, 10, 10_000, 10] {
        let r = throttle(&agent, &["loop", "--syscalls", &format!("{ceiling}/s")]);
        assert_eq!(r["level"], "throttle", "{r}");
        // The new bucket starts full: let its burst (100 ms worth) pass.
        std::thread::sleep(Duration::from_millis(200));
        for window in 0..2 {
            let rate = syscall_rate(pid, Duration::from_secs(1));
            let ratio = rate / ceiling as f64;
            report.push(format!("{ceiling}/s window {window}: {rate:.1}/s ({ratio:.2}x)"));
            assert!(
                (0.8..=1.25).contains(&ratio),
                "ceiling {ceiling}/s, window {window} after the change: measured {rate:.1}/s ({ratio:.2}x)\nso far: {report:#?}\nagent log:\n{}",
                agent.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
            );
            assert!(alive(pid), "the paced loop died");
        }
    }
    eprintln!("{}", report.join("\n"));
}
