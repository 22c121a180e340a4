//! Level 1, the `net` class where the kernel refuses fexit but has the
//! socket tracepoints (Linux 6.3+ for sock_send_length): raw tracepoints
//! that run once per socket event, not once per syscall, so the tasks
//! outside targets pay one map read per send or TCP state change while a
//! net ceiling exists, and nothing per syscall.
//!
//! - sock_send_length(struct sock *sk, int ret, int flags): fired in
//!   sock_sendmsg_nosec after the protocol's sendmsg returned, in the
//!   sender's context: each send/sendto/sendmsg, each message of a
//!   sendmmsg, a write(2) on a socket, and an io_uring send when it runs
//!   (inline in io_uring_enter, or in the ring's SQPOLL / io-wq thread, in
//!   the owner's cgroup). The io_uring hook then leaves these operations
//!   to it (`uring.rs`), so each is charged once.
//! - inet_sock_set_state(const struct sock *sk, int oldstate, int
//!   newstate): TCP_CLOSE -> TCP_SYN_SENT happens only in tcp_v4/v6_connect
//!   (connect(2), a TCP Fast Open sendmsg, an io_uring connect), in the
//!   connecting task: one TCP connect. Other transitions (softirq, other
//!   sockets) return after two compares.
//! - A UDP connect has no tracepoint: it is charged at the cgroup
//!   sock_addr connect4/6 hook (`classes::net_verdict`), which cannot send
//!   a signal; the agent's freeze pauses the target there.
//!
//! Both pause like sys_exit: SIGSTOP at the end of the call (for a connect
//! that then waits for the handshake, the wait is interrupted and resumes
//! after SIGCONT without a second charge: the socket is already
//! connecting, and this transition does not happen again).
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use killpath_common::throttle;

/// include/net/tcp_states.h.
const TCP_SYN_SENT: u64 = 2;
const TCP_CLOSE: u64 = 7;

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn kp_net_send(_ctx: RawTracePointContext) -> i32 {
    super::classes::charge_class(throttle::NET);
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn kp_net_tcp_connect(ctx: RawTracePointContext) -> i32 {
    try_tcp_connect(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_tcp_connect(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    if old as u32 as u64 != TCP_CLOSE || new as u32 as u64 != TCP_SYN_SENT {
        return Ok(0);
    }
    super::classes::charge_class(throttle::NET);
    Ok(0)
}
