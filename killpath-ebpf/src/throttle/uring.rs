//! Level 1, io_uring operations: one charge per submitted operation, at
//! raw_tracepoint/io_uring_submit_req (Linux 6.3+) or, on 5.19–6.2, the
//! same tracepoint's older name io_uring_submit_sqe: both take the
//! `struct io_kiocb *` first, and the agent picks the one this kernel's
//! BTF shows with that argument. Older kernels passed the opcode and no
//! request; the agent then reports io_uring as counted per io_uring_enter.
//!
//! One io_uring_enter can carry hundreds of operations, and a SQPOLL ring
//! makes no syscall at all: sys_exit sees neither. This tracepoint fires in
//! io_submit_sqe() for every request, before it is issued or punted to
//! io-wq, in the context of the task that submits: the io_uring_enter
//! caller, or the ring's SQPOLL thread. That thread is an io thread of the
//! ring owner's process (create_io_thread: same thread group, same
//! cgroup), so its ancestor cgroup ids are the owner's target.
//!
//! A raw tracepoint rather than the classic one: it needs no tracefs (not
//! mounted on every host) and no per-kernel record layout; its one
//! argument is the `struct io_kiocb *`, and the opcode's offset in it comes
//! from BTF (KP_IOURING_OPCODE_OFFSET, filled by the agent).
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext};
use killpath_common::throttle;

use super::syscalls::{charge_op, in_a_target};
use crate::{
    maps::{IOURING_CLASS, IOURING_OPCODE_OFFSET},
    targets,
};

// The section name only: the agent attaches it by the name BTF found.
#[raw_tracepoint(tracepoint = "io_uring_submit_req")]
pub fn kp_throttle_io_uring(ctx: RawTracePointContext) -> i32 {
    try_submit(&ctx).unwrap_or(0)
}

fn try_submit(ctx: &RawTracePointContext) -> Result<i32, i64> {
    let cfg = targets::config().ok_or(0i64)?;
    if cfg.syscall_throttled == 0 || !in_a_target(cfg.throttle_depth_mask) {
        return Ok(0);
    }
    let off = IOURING_OPCODE_OFFSET.get(0).copied().unwrap_or(0);
    if off == 0 || off > 4096 {
        return Ok(0);
    }
    // io_uring_submit_req(struct io_kiocb *req), and
    // io_uring_submit_sqe(struct io_kiocb *req, bool force_nonblock).
    let req: *const u8 = ctx.arg(0);
    // SAFETY: bounded kernel read of one byte of the request.
    let op = unsafe { bpf_probe_read_kernel(req.add(off as usize)) }?;
    let class = IOURING_CLASS.get(op as u32).copied().unwrap_or(0);
    let mut specific = if class == 0 { throttle::ALL } else { class - 1 };
    // Where net is charged at the socket tracepoints (`net_events.rs`),
    // a send or connect operation is charged there when it runs, in the
    // submitter's, SQPOLL or io-wq context: charging it here too would
    // count it twice.
    if specific == throttle::NET && super::classes::sees_io_uring(throttle::NET) {
        specific = throttle::ALL;
    }
    charge_op(cfg.throttle_depth_mask, specific);
    Ok(0)
}
