//! Level 2, capability `signal`: refuse signals to processes outside the
//! target (signals inside it, and signal 0 existence checks, stay allowed).
//! Whether the receiver is inside is decided from the receiver's own
//! cgroup: task->cgroups->dfl_cgrp, its ancestor at the target's depth,
//! and that cgroup's kernfs id — offsets from the running kernel's BTF.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::cap;

use super::{verdict, Detail};
use crate::{audit::Subject, kcgroup, maps::OFFSETS, targets};

/// security_task_kill(p, info, sig, cred).
#[lsm(hook = "task_kill")]
pub fn kp_degrade_task_kill(ctx: LsmContext) -> i32 {
    try_task_kill(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_task_kill(ctx: &LsmContext) -> Result<i32, i32> {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return Ok(prev);
    }
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return Ok(0);
    }
    let cfg = targets::config().ok_or(0)?;
    if cfg.degraded_targets == 0 && cfg.audited_targets == 0 {
        return Ok(0);
    }
    let (id, st) = targets::of_current_with_id(cfg.depth_mask).ok_or(0)?;
    let s = Subject::of(id, &st);
    if s.checked() & cap::SIGNAL == 0 {
        return Ok(0);
    }
    let o = OFFSETS.get(0).ok_or(0)?;
    if o.signal_valid == 0 {
        return Ok(0);
    }
    let p: u64 = ctx.arg(0);
    if kcgroup::task_ancestor(o, p, st.depth) == id {
        return Ok(0);
    }
    Ok(verdict(s, cap::SIGNAL.trailing_zeros(), Detail::default()))
}
