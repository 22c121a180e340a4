//! A flow's direction that the workload cannot forge: a per-socket mark
//! set when a recording target's socket connects out, read by the
//! cgroup_skb flow counters (`net::skb`).
//!
//! Why: `net::skb` takes a TCP packet whose local port the target listens
//! on (`KP_TRAIL_LISTENING`) for an accepted connection's, keyed by that
//! local port. A hostile workload could listen on P with SO_REUSEPORT
//! (both sockets SO_REUSEPORT, same uid: the bind conflict check lets a
//! second socket bind P beside the listener) and connect OUT from that
//! second socket: every byte it sent would be recorded as incoming on P
//! and the destination's flow would stay empty. With the mark, a socket
//! that connected is outgoing whatever its local port.
//!
//! Kernel interactions:
//! - The mark lives in a `BPF_MAP_TYPE_SK_STORAGE` map (Linux 5.2+): the
//!   storage is owned by the socket and freed with it (no table to fill
//!   or to evict from, no entry outliving the socket and reused by a later
//!   socket), and the map is created without `BPF_F_CLONE`, so a child
//!   socket accepted from a marked listener starts unmarked (the storage
//!   is copied at clone only for maps with that flag).
//! - Set in the cgroup `connect4`/`connect6` hooks (`isolate/sock.rs`,
//!   through `net::addr`): the kernel runs them from `__inet_stream_connect`
//!   (the protocol's `pre_connect`) before `tcp_v4_connect` /
//!   `tcp_v6_connect` sends the SYN, for connect(2), io_uring's connect
//!   and TCP Fast Open's sendmsg(MSG_FASTOPEN) alike; so the mark exists
//!   before the socket's first packet reaches the egress program (no race
//!   with the counters). `bpf_sk_storage_get` is allowed in sock_addr
//!   programs on the socket `ctx->sk` (a full socket) on both kernels we
//!   run (host 6.x, VM Debian 6.1).
//! - Read in the cgroup_skb programs: `__sk_buff->sk` is the socket the
//!   kernel runs the program for (egress: `sk_to_full_sk` of the sender;
//!   ingress: the socket the packet was delivered to, set by
//!   `__cgroup_bpf_run_filter_skb`), passed through `bpf_sk_fullsock`
//!   (request and timewait minisockets have no storage; the verifier
//!   requires a full socket for `bpf_sk_storage_get` here).
//!
//! Against a hostile workload:
//! - It cannot remove a mark from inside its sockets: only BPF programs
//!   and the map's fd reach the storage (the fd is the agent's and the
//!   map's pin is guarded like every killpath pin: see the threat model).
//! - A mark can only make traffic OUTGOING (keyed by the remote port, so
//!   the destination is named): a workload that connects a socket and
//!   then listens on it gets its listener's own packets (SYNs received)
//!   listed as outgoing to their senders, over-reporting, never hiding a
//!   destination; connections it accepts are new, unmarked sockets.
//! - The storage is charged to the socket's option memory
//!   (`net.core.optmem_max`): a workload that filled it first (socket
//!   filters, options) makes creation fail. That is counted in
//!   KP_TRAIL_LOST (flows, never silent) and the CONNECT event still
//!   names the destination; the socket then keeps the listening-port rule.
//! - A socket that connected before its target started recording is
//!   unmarked (the hooks mark only for recording targets, so targets that
//!   do not record pay nothing): it keeps the listening-port rule, as do
//!   UDP sockets (only TCP is ever taken for accepted).
use core::ptr;

use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get},
    macros::btf_map,
    programs::{SkBuffContext, SockAddrContext},
};
use killpath_common::trail::LOST_FLOWS;

use super::lost;

/// The mark (value 1) of a socket that connected out. Its name is
/// `killpath_common::trail_net::CONNECTED_OUT`.
#[btf_map(name = "KP_TRAIL_CONN_OUT")]
static CONNECTED: SkStorage<u32> = SkStorage::new();

/// cgroup connect4/connect6 of recording target `id`'s TCP socket: marks
/// the socket outgoing (created on first connect; a second connect of the
/// same socket finds it).
#[inline(always)]
pub fn mark_connect(ctx: &SockAddrContext, id: u64) {
    // SAFETY: ctx->sk is the connecting socket, a full socket the kernel
    // holds (and locks) for the duration of the hook.
    let v = unsafe { CONNECTED.get_or_insert_ptr_mut(ctx, None) };
    if v.is_null() {
        // Not created (option memory full, or out of memory): see the module doc.
        lost(id, LOST_FLOWS);
        return;
    }
    // SAFETY: a live storage value of this socket.
    unsafe { *v = 1 };
}

/// cgroup_skb ingress/egress: whether the packet's socket connected out.
#[inline(always)]
pub fn connected_out(ctx: &SkBuffContext) -> bool {
    // SAFETY: the program's context; `sk` read at its exact offset (the
    // verifier's ctx access rule for __sk_buff->sk).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
    }
    let map = ptr::from_ref(&CONNECTED).cast_mut().cast();
    // SAFETY: a full socket; flags 0 (lookup only), no initial value.
    !unsafe { bpf_sk_storage_get(map, full.cast(), ptr::null_mut(), 0) }.is_null()
}
