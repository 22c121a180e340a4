//! Signals sent by a task of a recording target to a task outside it.
//! raw_tracepoint/signal_generate (kernel/signal.c, since 3.x) fires in
//! the sender's context for every signal generated, with the receiving
//! task, after the LSM check (a signal refused by degrade's `signal` or by
//! self-protection never gets here). Signals the kernel generates on the
//! target's behalf (SIGCHLD to a parent outside when a task exits, a
//! timer's SIGALRM) carry SEND_SIG_PRIV or a positive si_code and are left
//! out: they are not something the workload chose to send.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext, EbpfContext};
use killpath_common::{trail::kind, KernelOffsets};

use super::{emit, enabled, records};
use crate::{maps::OFFSETS, targets};

/// SEND_SIG_PRIV: a signal the kernel sends (include/linux/sched/signal.h).
const SEND_SIG_PRIV: u64 = 1;
/// Offset of si_code in struct kernel_siginfo (si_signo, si_errno, si_code: uapi).
const SI_CODE: u64 = 8;

/// Reads a `T` at `base + off` in kernel memory (None if unreadable).
#[inline(always)]
fn read<T: Copy>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// Cgroup id of `task`'s ancestor at `depth` (0 if shallower or unreadable).
#[inline(always)]
fn ancestor_id(o: &KernelOffsets, task: u64, depth: u32) -> u64 {
    let Some(cgrp) = read::<u64>(task, o.task_cgroups).and_then(|cs| read::<u64>(cs, o.css_set_dfl_cgrp)) else { return 0 };
    let level = read::<i32>(cgrp, o.cgroup_level).unwrap_or(-1);
    if level < depth as i32 {
        return 0;
    }
    read::<u64>(cgrp, o.cgroup_ancestors + depth * 8)
        .and_then(|anc| read::<u64>(anc, o.cgroup_kn))
        .and_then(|kn| read::<u64>(kn, o.kernfs_node_id))
        .unwrap_or(0)
}

/// signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result).
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn kp_trail_signal(ctx: RawTracePointContext) -> i32 {
    try_signal(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_signal(ctx: &RawTracePointContext) -> Option<i32> {
    enabled()?;
    let cfg = targets::config()?;
    let (id, st) = targets::of_current_with_id(cfg.depth_mask)?;
    if !records(id) {
        return Some(0);
    }
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: raw tracepoint arguments, five u64 slots.
    let (sig, info, task, result) = unsafe { (*args as u32, *args.add(1), *args.add(2), *args.add(4) as u32) };
    if info == SEND_SIG_PRIV {
        return Some(0);
    }
    if info > SEND_SIG_PRIV && read::<i32>(info, SI_CODE as u32).is_none_or(|code| code > 0) {
        return Some(0);
    }
    let o = OFFSETS.get(0)?;
    if o.signal_valid == 0 || ancestor_id(o, task, st.depth) == id {
        return Some(0);
    }
    let peer = if o.members_valid != 0 { read::<u32>(task, o.task_tgid).unwrap_or(0) } else { 0 };
    emit(id, st.level, kind::SIGNAL, |ev| {
        ev.arg = sig;
        ev.peer = peer;
        // TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 already pending, ...
        ev.value = u64::from(result);
    });
    Some(0)
}
