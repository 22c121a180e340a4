//! Level 2, the network capabilities: `net.connect` (with the target's
//! `--allow-connect` list), `net.raw` and `net.unix`. They have no programs
//! of their own: the socket hooks are shared with isolate (one program per
//! hook, in `isolate/sock.rs` and `isolate/lsm.rs`), which call the
//! functions here once the target is not isolated. The cgroup sock_addr /
//! sock hooks make them hold where BPF LSM is off.
//!
//! Raw IP sockets are refused when `net.connect` OR `net.raw` is revoked:
//! a raw socket reaches any address without a connect, so the allow-list
//! could not hold otherwise. The cgroup sock_create hook runs in
//! inet_create/inet6_create only (AF_INET/AF_INET6); packet sockets
//! (packet_create) are refused by the BPF LSM socket_create hook alone.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    maps::lpm_trie::Key,
    programs::{LsmContext, SockAddrContext},
};
use killpath_common::{cap, ConnectAllow, CONNECT_ALLOW_FIXED_BITS};

use super::{label, revoked, verdict, Detail};
use crate::{
    abi::{AF_INET, AF_INET6, AF_PACKET, AF_UNIX, SOCK_RAW},
    audit::Subject,
    maps::CONNECT_ALLOW,
};

/// `net.connect` at cgroup sock_addr connect4/6 and sendmsg4/6: whether
/// target `s` may reach the address in `ctx`. A refusal is counted and
/// sampled (as audit, and allowed, when `net.connect` is only audited).
#[inline(always)]
pub fn addr_allowed(ctx: &SockAddrContext, v6: bool, s: Subject) -> bool {
    if s.checked() & cap::NET_CONNECT == 0 {
        return true;
    }
    let (addr, port_be) = destination(ctx, v6);
    if allowed(s.id, port_be, addr) || allowed(s.id, 0, addr) {
        return true;
    }
    verdict(s, cap::NET_CONNECT.trailing_zeros(), dest_detail(v6, addr, port_be)) == 0
}

/// A sampled event's detail for a destination.
#[inline(always)]
pub fn dest_detail(v6: bool, addr: [u8; 16], port_be: u16) -> Detail {
    Detail { family: if v6 { AF_INET6 as u32 } else { AF_INET as u32 }, port: u16::from_be(port_be) as u32, addr, ..Detail::default() }
}

/// The destination in a sock_addr context: address (IPv4 mapped into
/// ::ffff:a.b.c.d) and port in network byte order.
#[inline(always)]
pub fn destination(ctx: &SockAddrContext, v6: bool) -> ([u8; 16], u16) {
    // SAFETY: the kernel-provided bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    if v6 {
        for i in 0..4 {
            addr[i * 4..i * 4 + 4].copy_from_slice(&sa.user_ip6[i].to_ne_bytes());
        }
    } else {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    }
    (addr, sa.user_port as u16)
}

/// Longest-prefix match of (target, port, address) in the allow-list.
/// `port_be` 0 matches only entries without a port (any port).
#[inline(always)]
pub(super) fn allowed(id: u64, port_be: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(CONNECT_ALLOW_FIXED_BITS + 128, ConnectAllow { cgroup_id: id.to_ne_bytes(), port_be, _pad: 0, addr });
    CONNECT_ALLOW.get(&key).is_some()
}

/// The capability a raw or packet socket is refused under: `net.raw` when
/// it is revoked (the narrower one), else `net.connect`. Revoked ones
/// first, so that a real refusal is never recorded as audit; among
/// audited ones likewise.
#[inline(always)]
fn raw_cap(s: &Subject) -> u32 {
    let set = if s.revoked & (cap::NET_RAW | cap::NET_CONNECT) != 0 { s.revoked } else { s.checked() };
    if set & cap::NET_RAW != 0 {
        cap::NET_RAW
    } else {
        cap::NET_CONNECT
    }
}

/// `net.raw` and `net.connect` at cgroup sock_create (inet_create /
/// inet6_create), for a SOCK_RAW socket of `family` (AF_INET or AF_INET6)
/// of target `s`: whether it may be created. A refusal is counted and
/// sampled under the capability that refused it, with the socket's family
/// (as audit, and allowed, when that capability is only audited).
#[inline(always)]
pub fn raw_socket_allowed(s: Subject, family: u32) -> bool {
    if s.checked() & (cap::NET_RAW | cap::NET_CONNECT) == 0 {
        return true;
    }
    let what = if family == AF_INET6 as u32 { label(b"raw socket AF_INET6") } else { label(b"raw socket AF_INET") };
    verdict(s, raw_cap(&s).trailing_zeros(), Detail { label: what, ..Detail::default() }) == 0
}

/// `net.raw`, `net.connect` and `net.unix` at LSM socket_create(family,
/// type, ...): 0 or -EPERM. `net.raw` and `net.connect` refuse packet and
/// raw IP sockets (packet sockets have no cgroup hook: this is the only
/// place they are refused), `net.unix` unix sockets.
#[inline(always)]
pub fn lsm_socket_create(family: i32, ty: i32) -> i32 {
    // Raw IP and packet sockets only: netlink sockets are SOCK_RAW too, and
    // `ip`, `ss` and getaddrinfo(AI_ADDRCONFIG) need them.
    let raw = family == AF_PACKET || ((family == AF_INET || family == AF_INET6) && (ty & 0xf) == SOCK_RAW as i32);
    if raw {
        if let Some(s) = revoked(cap::NET_RAW | cap::NET_CONNECT) {
            let what = if family == AF_PACKET { label(b"packet socket AF_PACKET") } else { label(b"raw IP socket") };
            return verdict(s, raw_cap(&s).trailing_zeros(), Detail { label: what, ..Detail::default() });
        }
    }
    if family == AF_UNIX {
        if let Some(s) = revoked(cap::NET_UNIX) {
            return verdict(s, cap::NET_UNIX.trailing_zeros(), Detail::default());
        }
    }
    0
}

/// `net.unix` at LSM socket_connect(sock, address, addrlen): refuses
/// unix-socket connects, with sockets created before the revocation too.
/// 0 or -EPERM.
#[inline(always)]
pub fn lsm_socket_connect(ctx: &LsmContext) -> i32 {
    if let Some(s) = revoked(cap::NET_UNIX) {
        let addr: *const u16 = ctx.arg(1);
        // SAFETY: bounded kernel read of sockaddr.sa_family.
        let family = unsafe { bpf_probe_read_kernel(addr) }.unwrap_or(0);
        if i32::from(family) == AF_UNIX {
            return verdict(s, cap::NET_UNIX.trailing_zeros(), Detail::default());
        }
    }
    0
}
