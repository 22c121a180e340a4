//! Signals sent by a task of a recording target to a task outside it.
//! raw_tracepoint/signal_generate (kernel/signal.c, since 3.x) fires in
//! the sender's context for every signal generated, with the receiving
//! task, after the LSM check (a signal refused by degrade's `signal` or by
//! self-protection never gets here). Only the kernel's own SIGCHLD to a
//! parent outside (a task of the target exited: SEND_SIG_PRIV or a CLD_*
//! si_code) is left out. Other signals the kernel generates on the
//! target's behalf are recorded, flagged `kernel_generated`: a workload
//! can aim them (F_SETOWN + F_SETSIG on its own socket sends any signal to
//! any pid with si_code POLL_IN; a timer's sigevent), so leaving them out
//! would be a side door for killing outside processes unrecorded.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext, EbpfContext};
use killpath_common::trail::kind;

use super::{emit, enabled, records};
use crate::{
    kcgroup::{self, read},
    maps::OFFSETS,
    targets,
};

/// SEND_SIG_PRIV: a signal the kernel sends (include/linux/sched/signal.h).
const SEND_SIG_PRIV: u64 = 1;
/// Offset of si_code in struct kernel_siginfo (si_signo, si_errno, si_code: uapi).
const SI_CODE: u64 = 8;
/// SIGCHLD on x86_64 and arm64.
const SIGCHLD: u32 = 17;

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
    let kernel_generated = info == SEND_SIG_PRIV || (info > SEND_SIG_PRIV && read::<i32>(info, SI_CODE as u32).is_none_or(|code| code > 0));
    if kernel_generated && sig == SIGCHLD {
        return Some(0);
    }
    let o = OFFSETS.get(0)?;
    if o.signal_valid == 0 || kcgroup::task_ancestor(o, task, st.depth) == id {
        return Some(0);
    }
    let peer = if o.members_valid != 0 { read::<u32>(task, o.task_tgid).unwrap_or(0) } else { 0 };
    emit(id, st.level, kind::SIGNAL, |ev| {
        ev.arg = sig | (u32::from(kernel_generated) << 16);
        ev.peer = peer;
        // TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 already pending, ...
        ev.value = u64::from(result);
    });
    Some(0)
}
