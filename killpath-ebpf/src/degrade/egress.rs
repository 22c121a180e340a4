//! Level 2, `net.connect` per packet at cgroup skb egress. The sock_addr
//! hooks (`connect.rs`) only see new connects and UDP sends with an
//! address: a socket connected before the revocation, or a raw socket
//! opened before it, would keep sending. So every packet a target with
//! `net.connect` revoked sends is held to the same allow-list (same key:
//! v4-mapped address, port or the any-port entry) and dropped if it does
//! not match. The program is isolate's `kp_egress_skb` (one program per
//! hook, `isolate/skb.rs`), which calls [`skb`] only while some target is
//! degraded.
//!
//! cgroup_skb data starts at the network header (IPv4 or IPv6; the egress
//! hook runs in ip_finish_output / ip6_finish_output, before
//! fragmentation, so a socket's packet is whole here). What is parsed:
//! - IPv4 without options: destination address; for TCP, UDP, UDP-Lite
//!   and SCTP that are not fragments, the destination port. Fragments and
//!   other protocols (ICMP, ...) have no port here: only an any-port entry
//!   of their address lets them through. IPv4 options are not parsed
//!   (a source-route option hides the real destination): dropped.
//! - IPv6 fixed header: destination address; for TCP, UDP, UDP-Lite and
//!   SCTP directly after it, the destination port; other upper-layer
//!   protocols (ICMPv6, ESP, ...) need an any-port entry. Extension headers
//!   (hop-by-hop, routing, fragment, destination options, AH, mobility,
//!   HIP, shim6, experimental) are not parsed (a routing header hides the
//!   real destination): dropped.
//! - Anything else (unreadable, neither version 4 nor 6): dropped. The
//!   capability is revoked, so what cannot be checked does not pass.
//!
//! Replies of connections the target ACCEPTED are not outbound connects:
//! a TCP packet whose local port has a listening socket (looked up with
//! bpf_sk_lookup_tcp, only for packets that would be dropped) passes. A
//! workload that binds an outbound socket to its own listener's port
//! (SO_REUSEPORT) before the revocation keeps that connection: documented
//! as open.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release},
    programs::SkBuffContext,
};
use killpath_common::{cap, GuardConfig};

use super::{connect::allowed, label, record, Detail, Origin};
use crate::{
    abi::{AF_INET, AF_INET6},
    targets,
};

/// What to do with the packet.
///
/// A plain drop, for TCP too (not SKB_DROP_CN): the sender's call fails
/// with EPERM (UDP and raw sends), and TCP treats it like a lost packet,
/// retransmitting with exponential backoff, so the connection is held and
/// resumes when the capability is given back. With the congestion flag a
/// local drop makes TCP retry every 500 ms (TCP_RESOURCE_PROBE_INTERVAL)
/// and, with nothing in flight, abort the connection after tcp_retries2
/// (15) window probes, about 7.5 s (seen on Linux 6.1).
pub enum Verdict {
    Pass,
    Drop,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// The destination of a packet, as far as it was parsed.
struct Dest {
    v6: bool,
    /// Destination, IPv4 mapped into ::ffff:a.b.c.d.
    addr: [u8; 16],
    /// Source address (same form): the local end, for the listener lookup.
    saddr: [u8; 16],
    /// Ports in network byte order as on the wire (0: none parsed).
    dport_be: u16,
    sport_be: u16,
    proto: u8,
}

/// Verdict for one egress packet of a target's socket. The caller has
/// checked that some target is degraded (`GuardConfig::degraded_targets`).
#[inline(always)]
pub fn skb(cfg: &GuardConfig, ctx: &SkBuffContext) -> Verdict {
    let Some((id, st)) = targets::of_skb_with_id(cfg.depth_mask, ctx.skb.skb) else { return Verdict::Pass };
    if st.revoked & cap::NET_CONNECT == 0 {
        return Verdict::Pass;
    }
    let bit = cap::NET_CONNECT.trailing_zeros();
    let Some(d) = parse(ctx) else {
        let detail = Detail { label: label(b"egress packet (not parsed)"), ..Detail::default() };
        record(id, bit, detail, Origin::Packet);
        return Verdict::Drop;
    };
    if (d.dport_be != 0 && allowed(id, d.dport_be, d.addr)) || allowed(id, 0, d.addr) {
        return Verdict::Pass;
    }
    if d.proto == IPPROTO_TCP && d.sport_be != 0 && listener(ctx, &d) {
        return Verdict::Pass;
    }
    let family = if d.v6 { AF_INET6 as u32 } else { AF_INET as u32 };
    let detail = Detail { family, port: u16::from_be(d.dport_be) as u32, addr: d.addr, label: label(b"egress packet"), ..Detail::default() };
    record(id, bit, detail, Origin::Packet);
    Verdict::Drop
}

/// Parses the network header (and the ports) of the packet; None where
/// the destination cannot be known for sure (see the module doc).
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Dest> {
    let b0: u8 = ctx.load(0).ok()?;
    match b0 >> 4 {
        4 => {
            if b0 & 0x0f != 5 {
                // IPv4 options (or a bad IHL): not parsed.
                return None;
            }
            let frag = u16::from_be(ctx.load::<u16>(6).ok()?);
            let proto: u8 = ctx.load(9).ok()?;
            let src: [u8; 4] = ctx.load(12).ok()?;
            let dst: [u8; 4] = ctx.load(16).ok()?;
            let mut d = Dest { v6: false, addr: mapped(dst), saddr: mapped(src), dport_be: 0, sport_be: 0, proto };
            // MF set or a fragment offset: no (trustworthy) L4 header.
            if frag & 0x3fff == 0 && has_ports(proto) {
                let ports: [u8; 4] = ctx.load(20).ok()?;
                d.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
                d.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
            }
            Some(d)
        }
        6 => {
            let next: u8 = ctx.load(6).ok()?;
            if matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254) {
                // Extension headers: not parsed.
                return None;
            }
            let saddr: [u8; 16] = ctx.load(8).ok()?;
            let addr: [u8; 16] = ctx.load(24).ok()?;
            let mut d = Dest { v6: true, addr, saddr, dport_be: 0, sport_be: 0, proto: next };
            if has_ports(next) {
                let ports: [u8; 4] = ctx.load(40).ok()?;
                d.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
                d.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
            }
            Some(d)
        }
        _ => None,
    }
}

/// Upper-layer protocols with the destination port at offset 2.
#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE)
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12] = v4[0];
    a[13] = v4[1];
    a[14] = v4[2];
    a[15] = v4[3];
    a
}

/// The bpf_sock_tuple layouts (network byte order, as on the wire).
#[repr(C)]
struct Tuple4 {
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: u16,
    dport: u16,
}

#[repr(C)]
struct Tuple6 {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
}

/// Whether a TCP socket listens on the packet's local address and port:
/// then the packet belongs to a connection the target accepted. The tuple
/// is the one an incoming packet would carry (saddr = remote), with the
/// remote left 0:0 so that no established socket (the sender itself)
/// matches and only a listener can. BPF_F_CURRENT_NETNS: the netns of
/// the skb's device or socket.
#[inline(always)]
fn listener(ctx: &SkBuffContext, d: &Dest) -> bool {
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the tuples live on this stack frame for the helper call; a
    // socket the helper returns is released before returning.
    unsafe {
        let sk = if d.v6 {
            let mut t = Tuple6 { saddr: [0; 16], daddr: d.saddr, sport: 0, dport: d.sport_be };
            bpf_sk_lookup_tcp(ctx.skb.skb.cast(), (&mut t as *mut Tuple6).cast::<bpf_sock_tuple>(), core::mem::size_of::<Tuple6>() as u32, netns, 0)
        } else {
            let s = &d.saddr;
            let mut t = Tuple4 { saddr: [0; 4], daddr: [s[12], s[13], s[14], s[15]], sport: 0, dport: d.sport_be };
            bpf_sk_lookup_tcp(ctx.skb.skb.cast(), (&mut t as *mut Tuple4).cast::<bpf_sock_tuple>(), core::mem::size_of::<Tuple4>() as u32, netns, 0)
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
        true
    }
}
