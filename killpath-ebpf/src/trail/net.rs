//! The trail's network part: per-flow counters in `KP_TRAIL_FLOWS` and the
//! CONNECT, LISTEN and ACCEPT events, for targets that record. Three kinds
//! of hooks call in here, each with ONE call and each returning after one
//! config read while no target records:
//! - cgroup_skb ingress and egress (`isolate/skb.rs`): [`skb`] adds the
//!   packet to its flow (bytes = skb->len at the IP layer,
//!   IP and transport headers included; a GSO batch of up to 64 KiB is one
//!   skb here, before segmentation, so it counts as one packet with one
//!   header). A packet the target's level drops counts in `refused`, not
//!   in bytes ([`skb_dropped`]). These hooks sit on targets' cgroups only: tasks outside
//!   every target never run them.
//! - cgroup sock_addr connect4/6 and sendmsg4/6 (`isolate/sock.rs`), after
//!   the verdict: [`addr`] emits CONNECT for every connect (TCP or UDP,
//!   arg = 1 when the level refused it) and for the first datagram to a
//!   destination (a UDP sendto with an address: the first time its flow is
//!   seen), and makes sure the flow exists, so a destination only ever
//!   refused is listed too.
//! - raw_tracepoint inet_sock_set_state ([`kp_trail_sock_state`], its own
//!   program, attached by the agent at start): LISTEN at CLOSE -> LISTEN
//!   (in the task calling listen(2)), the listening port forgotten at
//!   LISTEN -> CLOSE, ACCEPT at SYN_RECV -> ESTABLISHED of the child
//!   socket. That one runs in softirq for an arbitrary current task, so the
//!   target is found from the socket's cgroup (sk->sk_cgrp_data, inherited
//!   from the listener at clone; offsets from BTF in KP_TRAIL_NET_OFFSETS)
//!   and the event carries no pid (the kernel accepted it on the
//!   listener's behalf; the task that calls accept(2) comes later).
//!
//! Flows are keyed by (target, remote address, port, protocol,
//! direction). Direction 0: the target connected or sent, port = the
//! remote port; always so for a socket marked at connect (`direction.rs`:
//! a workload connecting out from a port it listens on is not taken for
//! an accepted connection). Direction 1: a connection the target accepted (an
//! unmarked TCP socket's packet whose local port is a port the target listens on, see
//! `KP_TRAIL_LISTENING`, or that already has such a flow: the last
//! packets after the listener closed), port = the LOCAL port the peer
//! reached, so many clients of one service are one flow per client
//! address, not per ephemeral port. IPv4-mapped IPv6 addresses are recorded as IPv4 (the
//! packets of such a socket are IPv4).
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference on purpose: by value they would be copied onto the BPF stack, 512 bytes shared with the levels' checks in the calling programs"
)]
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{RawTracePointContext, SkBuffContext, SockAddrContext},
};
use killpath_common::{
    trail::{kind, FlowKey, FlowValue, LOST_FLOWS},
    trail_net::{ListenKey, NetOffsets, MAX_LISTENING},
    GuardConfig, MAX_CGROUP_DEPTH,
};

use super::direction;

use super::{emit, enabled, lost, recording, records, FLOWS};
use crate::{
    abi::{AF_INET, AF_INET6},
    kcgroup::{self, read},
    maps::{OFFSETS, TARGETS},
    targets,
    throttle::bucket::xadd,
};

#[map(name = "KP_TRAIL_LISTENING")]
static LISTENING: HashMap<ListenKey, u32> = HashMap::with_max_entries(MAX_LISTENING, 0);

#[map(name = "KP_TRAIL_NET_OFFSETS")]
static NET_OFFSETS: Array<NetOffsets> = Array::with_max_entries(1, 0);

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// include/net/tcp_states.h.
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_RECV: u32 = 3;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

/// bpf_map_update_elem flag and its "already there" error.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// What [`skb`] just counted on this CPU, for [`skb_dropped`] (slot 0:
/// egress, 1: ingress; slot 2: [`addr`]'s new-flow value only): the skb's address, so a slot that a nested run
/// reused (a softirq interrupting a process-context send on this CPU) is
/// recognized and left alone.
#[derive(Clone, Copy)]
pub struct Counted {
    skb: u64,
    len: u64,
    key: FlowKey,
    /// Where a new flow's first value is built (off the stack: the BPF
    /// stack is shared with the levels' checks in the calling program).
    init: FlowValue,
}

#[map(name = "KP_TRAIL_SKB_LAST")]
static LAST: PerCpuArray<Counted> = PerCpuArray::with_max_entries(3, 0);

/// cgroup_skb hooks (`isolate/skb.rs`), FIRST, before the level checks:
/// counts the packet in its flow as sent (received) when its socket's
/// target records; [`skb_dropped`] moves it to `refused` when the level
/// then drops it. Counting first keeps the verifier's work small: called
/// after the verdict, this ran once per path through the levels' checks
/// and `kp_egress_skb` passed the verifier's 1M-instruction limit. Not
/// inlined for the same reason (a BPF-to-BPF call verified once).
#[inline(never)]
pub fn skb(ctx: &SkBuffContext, egress: bool) {
    if enabled().is_none() {
        return;
    }
    let Some(slot) = LAST.get_ptr_mut(if egress { 0 } else { 1 }) else { return };
    // SAFETY: this CPU's slot.
    unsafe { (*slot).skb = 0 };
    let Some(cfg) = targets::config() else { return };
    let Some((id, st)) = targets::of_skb_with_id(cfg.depth_mask, ctx.skb.skb) else { return };
    if !records(id) {
        return;
    }
    // An accepted connection: keyed by the local (listening) port. Its
    // port is in LISTENING while the listener is open; its last packets
    // (after the listener closed) find the flow it already has.
    let mut key = FlowKey { target: id, addr: [0; 4], port: 0, proto: 0, direction: 1, family: 0, _pad: [0; 2] };
    let Some((rport, lport)) = parse(ctx, egress, &mut key) else { return };
    key.port = lport;
    // A socket the target connected out from is outgoing whatever its
    // local port (`direction`: the mark set at connect); unmarked
    // sockets keep the listening-port rule below.
    // The mark is read last: only packets on a listened port (or of an
    // accepted flow) pay for the socket-storage lookup, not every packet
    // of an ordinary outgoing connection.
    let accepted = key.proto == IPPROTO_TCP
        && lport != 0
        && {
            let lk = ListenKey { target: id, port: lport, proto: IPPROTO_TCP as u16, _pad: 0 };
            // SAFETY: value not kept.
            unsafe { LISTENING.get(&lk) }.is_some() || FLOWS.get_ptr(&key).is_some()
        }
        && !direction::connected_out(ctx);
    if !accepted {
        key.port = rport;
        key.direction = 0;
    }
    // SAFETY: the program's context pointer.
    let len = unsafe { (*ctx.skb.skb).len } as u64;
    // SAFETY: this CPU's slot (a softirq that interrupts this very moment
    // on this CPU and creates a flow itself could hand its first counts
    // to this new flow: a window of a few instructions).
    count(&key, st.level, if egress { Add::Out(len) } else { Add::In(len) }, unsafe { &mut (*slot).init });
    // SAFETY: this CPU's slot, written field by field (the BPF stack is
    // shared with the levels' checks in the calling program: 512 bytes).
    unsafe {
        (*slot).key = key;
        (*slot).len = len;
        (*slot).skb = ctx.skb.skb as u64;
    }
}

/// cgroup_skb hooks, when the level dropped the packet [`skb`] counted:
/// takes its bytes and packet back and counts it as refused.
#[inline(never)]
pub fn skb_dropped(ctx: &SkBuffContext, egress: bool) {
    if enabled().is_none() {
        return;
    }
    let Some(slot) = LAST.get_ptr_mut(if egress { 0 } else { 1 }) else { return };
    // SAFETY: this CPU's slot.
    let (skb, len) = unsafe { ((*slot).skb, (*slot).len) };
    if skb == 0 || skb != ctx.skb.skb as u64 {
        return;
    }
    // SAFETY: this CPU's slot.
    unsafe { (*slot).skb = 0 };
    // SAFETY: the key is read from the slot in place (no stack copy).
    let Some(v) = FLOWS.get_ptr_mut(unsafe { &(*slot).key }) else { return };
    // SAFETY: a live map value; wrapping atomic adds take the counts back.
    unsafe {
        if egress {
            xadd(&raw mut (*v).bytes, len.wrapping_neg());
            xadd(&raw mut (*v).packets, u64::MAX);
        } else {
            xadd(&raw mut (*v).bytes_in, len.wrapping_neg());
            xadd(&raw mut (*v).packets_in, u64::MAX);
        }
        xadd(&raw mut (*v).refused, 1);
    }
}

/// What one packet or call adds to a flow.
#[derive(Clone, Copy)]
enum Add {
    Out(u64),
    In(u64),
    Refused,
    /// Only makes sure the flow exists (a connect, a first datagram).
    Seen,
}

/// Adds to the flow `key`, creating it on first sight (its value built
/// in `init`); a full map is counted at (target, LOST_FLOWS).
#[inline(always)]
fn count(key: &FlowKey, level: u32, add: Add, init: &mut FlowValue) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        apply(v, level, now, add);
        return;
    }
    let (out, inn, refused) = match add {
        Add::Out(n) => ((n, 1), (0, 0), 0),
        Add::In(n) => ((0, 0), (n, 1), 0),
        Add::Refused => ((0, 0), (0, 0), 1),
        Add::Seen => ((0, 0), (0, 0), 0),
    };
    // Field by field, volatile: LLVM would merge the zero stores into a
    // memset call, a third BPF frame that Linux 6.1 counts as 32 bytes of
    // stack (over 512 with `kp_egress_skb`'s own frame).
    // SAFETY: `init` is a live, aligned FlowValue.
    unsafe {
        let p: *mut FlowValue = init;
        core::ptr::write_volatile(&raw mut (*p).bytes, out.0);
        core::ptr::write_volatile(&raw mut (*p).packets, out.1);
        core::ptr::write_volatile(&raw mut (*p).bytes_in, inn.0);
        core::ptr::write_volatile(&raw mut (*p).packets_in, inn.1);
        core::ptr::write_volatile(&raw mut (*p).first_ns, now);
        core::ptr::write_volatile(&raw mut (*p).last_ns, now);
        core::ptr::write_volatile(&raw mut (*p).refused, refused);
        core::ptr::write_volatile(&raw mut (*p).first_level, level);
        core::ptr::write_volatile(&raw mut (*p).max_level, level);
    }
    match FLOWS.insert(key, &*init, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created it in between: add to that one.
        Err(e) if e == -EEXIST => {
            if let Some(p) = FLOWS.get_ptr_mut(key) {
                apply(p, level, now, add);
            }
        }
        Err(_) => lost(key.target, LOST_FLOWS),
    }
}

#[inline(always)]
fn apply(v: *mut FlowValue, level: u32, now: u64, add: Add) {
    // SAFETY: a live map value; counters use atomic adds (several CPUs
    // send on one flow), last_ns and max_level plain stores (a lost race
    // leaves a value some CPU just wrote).
    unsafe {
        match add {
            Add::Out(n) => {
                xadd(&raw mut (*v).bytes, n);
                xadd(&raw mut (*v).packets, 1);
            }
            Add::In(n) => {
                xadd(&raw mut (*v).bytes_in, n);
                xadd(&raw mut (*v).packets_in, 1);
            }
            Add::Refused => xadd(&raw mut (*v).refused, 1),
            Add::Seen => {}
        }
        (*v).last_ns = now;
        if level > (*v).max_level {
            (*v).max_level = level;
        }
    }
}

/// Parses the IP header and the ports (cgroup_skb data starts at the
/// network header) into `key`: family, protocol and the REMOTE address
/// (the destination on egress, the source on ingress); returns the
/// (remote, local) ports, host byte order, 0 where not parsed. IPv4
/// options are skipped by IHL; IPv6 extension headers are not walked (the
/// flow is then keyed without ports). Written into `key` in place: the
/// calling program's stack is mostly the levels' checks'.
#[inline(always)]
fn parse(ctx: &SkBuffContext, egress: bool, key: &mut FlowKey) -> Option<(u16, u16)> {
    let b0: u8 = ctx.load(0).ok()?;
    let l4 = match b0 >> 4 {
        4 => {
            let ihl = ((b0 & 0x0f) as usize) * 4;
            let frag = u16::from_be(ctx.load::<u16>(6).ok()?);
            key.proto = ctx.load(9).ok()?;
            key.family = AF_INET as u16;
            key.addr[0] = ctx.load(if egress { 16 } else { 12 }).ok()?;
            // MF set or a fragment offset: no transport header.
            if frag & 0x3fff == 0 && ihl >= 20 {
                ihl
            } else {
                0
            }
        }
        6 => {
            key.proto = ctx.load(6).ok()?;
            key.family = AF_INET6 as u16;
            key.addr = ctx.load(if egress { 24 } else { 8 }).ok()?;
            40
        }
        _ => return None,
    };
    if l4 == 0 || !matches!(key.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE) {
        return Some((0, 0));
    }
    // Bounded for the verifier: IHL is at most 60.
    let ports: [u16; 2] = ctx.load(l4 & 0x3f).ok()?;
    let (sport, dport) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    Some(if egress { (dport, sport) } else { (sport, dport) })
}

/// cgroup sock_addr connect4/6 and sendmsg4/6 (`isolate/sock.rs`), after
/// the verdict: CONNECT events and the flow's existence (see the module
/// doc). `refused`: the level refused the call. Not inlined, like [`skb`];
/// `V6` a constant, so that each program reads only its own context
/// fields (with a runtime flag LLVM selects between the two fields'
/// addresses, which the verifier refuses).
#[inline(never)]
pub fn addr<const V6: bool>(cfg: &GuardConfig, ctx: &SockAddrContext, is_connect: bool, refused: bool) {
    if enabled().is_none() {
        return;
    }
    let Some((id, level)) = recording(cfg) else { return };
    // The address as degrade reads it (IPv4 mapped into ::ffff:a.b.c.d):
    // field by field from the context, which the verifier requires (a
    // select between two context fields' addresses is refused).
    let (a, port_be) = crate::degrade::connect::destination(ctx, V6);
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    // SAFETY: the kernel-provided bpf_sock_addr context.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    // Built in place (no second copy of the address: this program's stack
    // is mostly the levels' checks').
    let mut key = FlowKey { target: id, addr: [0; 4], port: u16::from_be(port_be), proto, direction: 0, family: AF_INET6 as u16, _pad: [0; 2] };
    // ::ffff:a.b.c.d (an IPv4 destination, or a v6 socket's mapped one):
    // the socket sends IPv4 packets.
    if w(0) == 0 && w(4) == 0 && w(8) == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        key.family = AF_INET as u16;
        key.addr[0] = w(12);
    } else {
        key.addr = [w(0), w(4), w(8), w(12)];
    }
    // A TCP connect marks its socket outgoing (`direction`): its packets
    // are then never taken for an accepted connection's.
    if is_connect && proto == IPPROTO_TCP {
        direction::mark_connect(ctx, id);
    }
    // A datagram: an event the first time its destination is seen.
    let first = is_connect || FLOWS.get_ptr(&key).is_none();
    // The new flow's value is built in a per-CPU slot: this program's
    // stack is mostly the levels' checks'.
    let Some(slot) = LAST.get_ptr_mut(2) else { return };
    // SAFETY: this CPU's slot.
    count(&key, level, if refused { Add::Refused } else { Add::Seen }, unsafe { &mut (*slot).init });
    if first {
        emit(id, level, kind::CONNECT, |e| {
            e.proto = key.proto as u16;
            e.family = key.family;
            e.addr = key.addr;
            e.port = key.port;
            e.arg = refused as u32;
        });
    }
}

/// BPF LSM socket_connect (`isolate/lsm.rs`) when the level refused the
/// connect there. security_socket_connect runs before the protocol's
/// connect in __sys_connect_file, so where BPF LSM isolates, the cgroup
/// connect hook ([`addr`]) never sees a refused connect: the CONNECT
/// event (refused) and its flow are recorded here. The address is the
/// caller's sockaddr, already copied into the kernel; the protocol comes
/// from `struct socket`'s `type` (SOCK_STREAM: TCP, SOCK_DGRAM: UDP), the
/// short after the 4-byte `state` at the head of the struct on every
/// kernel since 2.6. Families other than IPv4/IPv6 are not flows.
#[inline(never)]
pub fn lsm_connect_refused(sock: u64, address: u64) {
    if enabled().is_none() {
        return;
    }
    let Some(cfg) = targets::config() else { return };
    let Some((id, level)) = recording(&cfg) else { return };
    let (Some(family), Some(port_be)) = (read::<u16>(address, 0), read::<u16>(address, 2)) else { return };
    let proto = match read::<u16>(sock, 4).unwrap_or(0) {
        1 => IPPROTO_TCP,
        2 => IPPROTO_UDP,
        _ => 0,
    };
    let mut key = FlowKey { target: id, addr: [0; 4], port: u16::from_be(port_be), proto, direction: 0, family: AF_INET as u16, _pad: [0; 2] };
    if i32::from(family) == AF_INET {
        let Some(a) = read::<u32>(address, 4) else { return };
        key.addr[0] = a;
    } else if i32::from(family) == AF_INET6 {
        // sockaddr_in6: sin6_addr at 8.
        let Some(a) = read::<[u32; 4]>(address, 8) else { return };
        // ::ffff:a.b.c.d: an IPv4 destination (as [`addr`] keys it).
        if a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
            key.addr[0] = a[3];
        } else {
            key.family = AF_INET6 as u16;
            key.addr = a;
        }
    } else {
        return;
    }
    let Some(slot) = LAST.get_ptr_mut(2) else { return };
    // SAFETY: this CPU's slot.
    count(&key, level, Add::Refused, unsafe { &mut (*slot).init });
    emit(id, level, kind::CONNECT, |e| {
        e.proto = key.proto as u16;
        e.family = key.family;
        e.addr = key.addr;
        e.port = key.port;
        e.arg = 1;
    });
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn kp_trail_sock_state(ctx: RawTracePointContext) -> i32 {
    try_sock_state(&ctx).unwrap_or(0)
}

/// inet_sock_set_state(const struct sock *sk, int oldstate, int newstate):
/// fired by inet_sk_set_state / tcp_set_state for every TCP state change
/// on the host (Linux 4.16+), so everything but the three transitions
/// returns after the config read and two compares.
#[inline(always)]
fn try_sock_state(ctx: &RawTracePointContext) -> Option<i32> {
    enabled()?;
    let old = ctx.arg::<u64>(1) as u32;
    let new = ctx.arg::<u64>(2) as u32;
    let sk: u64 = ctx.arg(0);
    let o = NET_OFFSETS.get(0)?;
    if o.valid == 0 {
        return None;
    }
    match (old, new) {
        (TCP_CLOSE, TCP_LISTEN) => {
            // In the task calling listen(2) (or io_uring's worker, in its cgroup).
            let cfg = targets::config()?;
            let (id, level) = recording(&cfg)?;
            let port = read::<u16>(sk, o.skc_num)?;
            let (family, addr) = sk_addr(sk, o, false)?;
            let lk = ListenKey { target: id, port, proto: IPPROTO_TCP as u16, _pad: 0 };
            if LISTENING.insert(&lk, 1, 0).is_err() {
                // Full: its connections count as outgoing flows; the event says the port.
                lost(id, LOST_FLOWS);
            }
            emit(id, level, kind::LISTEN, |e| {
                e.proto = IPPROTO_TCP as u16;
                e.family = family;
                e.addr = addr;
                e.port = port;
            });
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            // close(2) or exit of the owner: the current task's target.
            let cfg = targets::config()?;
            let (id, _) = recording(&cfg)?;
            let port = read::<u16>(sk, o.skc_num)?;
            let lk = ListenKey { target: id, port, proto: IPPROTO_TCP as u16, _pad: 0 };
            let _ = LISTENING.remove(&lk);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let (id, level) = target_of_sk(sk, o)?;
            if !records(id) {
                return None;
            }
            let port = u16::from_be(read::<u16>(sk, o.skc_dport)?);
            let (family, addr) = sk_addr(sk, o, true)?;
            emit(id, level, kind::ACCEPT, |e| {
                // Softirq: the current task is not the target's.
                e.pid = 0;
                e.tid = 0;
                e.uid = 0;
                e.comm = [0; 16];
                e.proto = IPPROTO_TCP as u16;
                e.family = family;
                e.addr = addr;
                e.port = port;
            });
        }
        _ => {}
    }
    Some(0)
}

/// The socket's remote (`remote`) or bound local address.
#[inline(always)]
fn sk_addr(sk: u64, o: &NetOffsets, remote: bool) -> Option<(u16, [u32; 4])> {
    let family = read::<u16>(sk, o.skc_family)?;
    if family as i32 == AF_INET6 {
        let a = read::<[u32; 4]>(sk, if remote { o.skc_v6_daddr } else { o.skc_v6_rcv_saddr })?;
        if a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
            return Some((AF_INET as u16, [a[3], 0, 0, 0]));
        }
        return Some((family, a));
    }
    Some((family, [read::<u32>(sk, if remote { o.skc_daddr } else { o.skc_rcv_saddr })?, 0, 0, 0]))
}

/// The innermost target of a socket's cgroup and the strictest level on
/// its path, following sk->sk_cgrp_data.cgroup and the cgroup's
/// ancestors (offsets from BTF, as `isolate::current_task_cut` does for a
/// task).
#[inline(always)]
fn target_of_sk(sk: u64, no: &NetOffsets) -> Option<(u64, u32)> {
    let cfg = targets::config()?;
    let o = OFFSETS.get(0)?;
    if o.signal_valid == 0 {
        return None;
    }
    let cgrp = read::<u64>(sk, no.sk_cgroup)?;
    let cgrp_level = kcgroup::level(o, cgrp);
    let mut found = 0u64;
    let mut levels = 0u32;
    let depths = targets::depths_up_to(cfg.depth_mask, cgrp_level);
    let mut depth = 0u32;
    while depth < MAX_CGROUP_DEPTH {
        if depths & (1u32 << depth) != 0 {
            let id = kcgroup::ancestor_unchecked(o, cgrp, depth);
            // SAFETY: value copied out at once.
            if let Some(st) = unsafe { TARGETS.get(id) } {
                if st.depth == depth {
                    found = id;
                    levels |= targets::level_bit(st.level);
                }
            }
        }
        depth += 1;
    }
    if levels == 0 {
        None
    } else {
        Some((found, targets::highest_level(levels)))
    }
}
