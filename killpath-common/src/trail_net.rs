//! The network part of the trail (issue 16), beside the shared contract in
//! [`super::trail`]: the listening ports the flow counters need to tell an
//! accepted connection from an outgoing one, the struct offsets the
//! accept event follows from a socket to its cgroup, and the program the
//! agent attaches for LISTEN and ACCEPT.

/// `HashMap<ListenKey, u32>`: TCP ports a recording target listens on
/// (value 1). Filled at LISTEN, removed when the listener closes; a packet
/// whose local port is here belongs to a connection the target accepted
/// (flow direction 1, keyed by the local port).
pub const LISTENING: &str = "KP_TRAIL_LISTENING";
/// Capacity of [`LISTENING`].
pub const MAX_LISTENING: u32 = 4096;

/// `SkStorage<u32>` (a BTF map): value 1 on a socket a recording target
/// connected out from (set at connect). Such a socket's packets are
/// outgoing whatever its local port: a workload cannot pass traffic it
/// sends off as incoming by connecting from a port it listens on.
pub const CONNECTED_OUT: &str = "KP_TRAIL_CONN_OUT";

/// `Array<NetOffsets>` of one entry, filled by the agent from the kernel's BTF.
pub const OFFSETS: &str = "KP_TRAIL_NET_OFFSETS";

/// Program names (the agent attaches them at start).
pub mod programs {
    /// raw_tracepoint/inet_sock_set_state: LISTEN (CLOSE -> LISTEN, in the
    /// listening task) and ACCEPT (SYN_RECV -> ESTABLISHED of the child
    /// socket, in softirq: attributed through the socket's cgroup).
    pub const SOCK_STATE: &str = "kp_trail_sock_state";
}

/// A listening port of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// The innermost target's cgroup id.
    pub target: u64,
    /// Local port, host byte order.
    pub port: u16,
    /// IPPROTO_TCP.
    pub proto: u16,
    pub _pad: u32,
}

/// Byte offsets in `struct sock` (`__sk_common` is its first member).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOffsets {
    /// sock.sk_cgrp_data + sock_cgroup_data.cgroup: the socket's cgroup
    /// (Linux 5.15+; older kernels pack it in a tagged u64: not followed).
    pub sk_cgroup: u32,
    /// sock_common.skc_daddr / skc_rcv_saddr (IPv4, network byte order).
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    /// sock_common.skc_dport (network byte order) / skc_num (host order).
    pub skc_dport: u32,
    pub skc_num: u32,
    /// sock_common.skc_family.
    pub skc_family: u32,
    /// sock_common.skc_v6_daddr / skc_v6_rcv_saddr (struct in6_addr).
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// 1 when every offset above is filled in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, padding explicit.
    unsafe impl aya::Pod for super::ListenKey {}
    // SAFETY: plain #[repr(C)] u32s.
    unsafe impl aya::Pod for super::NetOffsets {}
}
