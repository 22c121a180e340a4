//! The `execs` metric: raw_tracepoint/sched_process_exec, attached by the
//! agent at start (the tracepoint exists on every kernel killpath runs on;
//! it fires in the task after a successful exec, once per exec). While no
//! target has a rule it costs one config read per exec on the host.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use killpath_common::tripwire::metric;

use crate::targets;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn kp_tripwire_exec(ctx: RawTracePointContext) -> i32 {
    // Level 1: the `exec` class is charged here, not at sys_exit.
    crate::throttle::classes::on_exec();
    // Membership: a thread that exec'd took the leader's pid.
    crate::members::on_exec(&ctx);
    try_exec(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Option<i32> {
    let cfg = targets::config()?;
    // The activity trail's exec event (one config read while no target records).
    crate::trail::on_exec(ctx, &cfg);
    if !super::armed(&cfg) {
        return Some(0);
    }
    let (id, _) = targets::of_current_with_id(cfg.depth_mask)?;
    super::charge(id, metric::EXECS, 0, 1);
    Some(0)
}
