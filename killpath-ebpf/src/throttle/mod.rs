//! Level 1, throttle: token buckets on syscalls and egress traffic.
//!
//! Buckets are GCRA state (see `killpath_common::Bucket`, and `bucket.rs`
//! here): charging an operation is one atomic add on the bucket's
//! theoretical arrival time, so tasks on different CPUs share one exact
//! budget without a lock (tracing programs may not take bpf_spin_lock).
//!
//! - Syscalls (`syscalls.rs`): raw_tracepoint/sys_exit. It is attached only
//!   while some target has a ceiling on `all` or on a class without a hook
//!   of its own here, so with nothing throttled no per-syscall hook runs
//!   at all. Classes with their own hook (`classes.rs`: fork, exec; net and
//!   fs-write at fexit in `syscall_exits.rs`, or net at the socket
//!   tracepoints in `net_events.rs`) are charged there. In pace mode an over-budget syscall
//!   completes, and the task is sent SIGSTOP (delivered on its return to
//!   user space, before its next instruction); the agent sends SIGCONT
//!   when the bucket has room again. A BPF program cannot sleep, so
//!   resuming needs the agent: while it is down a paused task stays paused
//!   (fail-safe). SIGSTOP alone could be undone by a sibling's SIGCONT,
//!   so the agent, on the event, also freezes the target's cgroup for the
//!   debt (cgroup v2 freezer: SIGCONT does not thaw it). Every call is
//!   charged, however deep the debt: pace never refuses.
//! - io_uring (`uring.rs`): raw_tracepoint/io_uring_submit_req (or
//!   io_uring_submit_sqe, 5.19–6.2) charges each submitted operation to its class, in the context
//!   of the submitter or of the ring's SQPOLL thread (a thread of the
//!   owner's process, in the owner's cgroup), and pauses like sys_exit.
//! - Deny mode for the `net` class (`syscalls.rs`): the cgroup sock_addr
//!   hooks (connect, datagram send with an address) fail the call with
//!   EAGAIN through bpf_set_retval (Linux 5.18). A raw tracepoint cannot
//!   fail a syscall, so other classes have no deny mode on kernels without
//!   fmod_ret.
//! - Egress (`egress.rs`): cgroup_skb/egress polices bytes and packets.
//!   Within the burst a packet passes; beyond it, it passes with a
//!   congestion notification (verdict 3: TCP's tcp_enter_cwr shrinks the
//!   congestion window instead of taking a loss); more than one more burst
//!   beyond, it is dropped with a notification (verdict 2) and not charged.
//!   TCP thus settles at the ceiling instead of collapsing into
//!   retransmission timeouts.
//!
//! The sock_addr, cgroup_skb and TC programs are shared with isolate (one
//! program per hook): they live in `isolate/` and call into this level.

pub(crate) mod bucket;
pub mod classes;
pub mod compat;
pub mod egress;
pub mod net_events;
pub mod syscall_exits;
pub mod syscalls;
pub mod uring;

pub use bucket::Verdict;
