//! The channel catalog: every way out of a target that isolation cuts.
//! [`Channel`] is the single source of truth: the catalog in responses,
//! `probe`, `isolate --verify`, the verify probe and the drill all iterate
//! [`Channel::ALL`], so a new channel is one variant here (the compiler
//! then points at every match that must handle it), its kernel hook, and
//! its probe in `verify_probe.rs`.
use serde::{Deserialize, Serialize};

/// One way out of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Tcp4,
    Tcp6,
    Udp,
    Dns,
    Icmp,
    /// A TCP connection opened before the cut (not only new ones).
    EstablishedTcp,
    /// Services on the host's loopback.
    Loopback,
    Unix,
    Packet,
    /// AF_NETLINK sockets (rtnetlink, and messages to userspace listeners).
    Netlink,
    /// AF_VSOCK sockets (to the hypervisor or other VMs).
    Vsock,
    /// AF_XDP sockets (XSK: packets in and out through a UMEM, no stack).
    Xdp,
    /// New TUN/TAP devices: opening /dev/net/tun, creating or attaching a
    /// device (and the vhost-net/vhost-vsock device nodes).
    Tun,
    /// Reads, writes and new devices (TUNSETIFF) on a /dev/net/tun fd
    /// opened before the isolation.
    TunFd,
}

/// How `isolate --verify` proves a channel cut from inside the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The verify probe tries it and reports whether it went through.
    Probe,
    /// The probe sends; the verdict is whether anything arrived outside.
    Received,
    /// A connection opened from inside before the cut is used after it.
    Held,
    /// Covered by the other checks (every probe talks to loopback).
    Covered,
}

/// Whether the running kernel cuts a channel, and with what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelStatus {
    pub channel: String,
    pub enforced: bool,
    pub by: String,
}

/// The extra row for adopted targets on kernels without BPF LSM.
pub const PRE_ADOPT_SOCKETS: &str = "pre-adopt-sockets";

impl Channel {
    /// Every channel, in the order the catalog lists them.
    pub const ALL: [Channel; 14] = [
        Channel::Tcp4,
        Channel::Tcp6,
        Channel::Udp,
        Channel::Dns,
        Channel::Icmp,
        Channel::EstablishedTcp,
        Channel::Loopback,
        Channel::Unix,
        Channel::Packet,
        Channel::Netlink,
        Channel::Vsock,
        Channel::Xdp,
        Channel::Tun,
        Channel::TunFd,
    ];

    /// The name on the CLI, the socket and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Tcp4 => "tcp4",
            Channel::Tcp6 => "tcp6",
            Channel::Udp => "udp",
            Channel::Dns => "dns",
            Channel::Icmp => "icmp",
            Channel::EstablishedTcp => "established-tcp",
            Channel::Loopback => "loopback",
            Channel::Unix => "unix",
            Channel::Packet => "packet",
            Channel::Netlink => "netlink",
            Channel::Vsock => "vsock",
            Channel::Xdp => "xdp",
            Channel::Tun => "tun",
            Channel::TunFd => "tun-fd",
        }
    }

    /// The channel named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What cuts it: (the cgroup hooks, which every supported kernel has;
    /// the BPF LSM hooks, where BPF LSM runs). A channel with no cgroup
    /// mechanism is OPEN without BPF LSM.
    fn mechanism(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Channel::Tcp4 => (Some("cgroup connect4 + skb ingress/egress"), None),
            Channel::Tcp6 => (Some("cgroup connect6 + skb ingress/egress"), None),
            Channel::Udp | Channel::Dns => (Some("cgroup sendmsg4/6 + skb ingress/egress"), None),
            Channel::Icmp => (Some("cgroup sock_create (raw refused) + skb egress"), None),
            Channel::EstablishedTcp => (Some("cgroup skb ingress/egress drop every packet"), None),
            Channel::Loopback => (Some("cgroup skb hooks see loopback traffic too"), None),
            Channel::Unix => (None, Some("socket_create/connect/sendmsg/recvmsg")),
            Channel::Packet => (None, Some("socket_create (AF_PACKET refused)")),
            // No cgroup hook sees a netlink socket: sock_create and the
            // sock_addr hooks run for inet sockets only.
            Channel::Netlink => (None, Some("socket_create (AF_NETLINK refused), sendmsg/recvmsg on sockets opened before")),
            Channel::Vsock => (None, Some("socket_create (AF_VSOCK refused), sendmsg/recvmsg on sockets opened before")),
            Channel::Xdp => (
                Some("cgroup setsockopt refuses SOL_XDP: no UMEM or ring, so no XSK is set up after the isolation"),
                Some("socket_create (AF_XDP refused), sendmsg/recvmsg on XSKs set up before"),
            ),
            Channel::Tun => (
                Some("cgroup device refuses opening or creating /dev/net/tun (10:200), /dev/vhost-net (10:238), /dev/vhost-vsock (10:241)"),
                Some("tun_dev_create/open/attach/attach_queue"),
            ),
            // The cgroup device hook fires at open and mknod only.
            Channel::TunFd => {
                (None, Some("file_permission + tun_dev_create/open/attach (reads, writes and new devices on a /dev/net/tun fd opened before the isolation)"))
            }
        }
    }

    /// What a cgroup mechanism leaves open where BPF LSM is missing.
    fn open_without_lsm(self) -> Option<&'static str> {
        match self {
            // The rings of an XSK set up before the cut live in shared
            // memory; its TX kick is a sendto that only socket_sendmsg sees.
            Channel::Xdp => Some("an XSK set up before the isolation keeps working"),
            _ => None,
        }
    }

    /// How `--verify` checks it.
    pub fn check(self) -> Check {
        match self {
            Channel::Tcp4
            | Channel::Tcp6
            | Channel::Dns
            | Channel::Icmp
            | Channel::Unix
            | Channel::Packet
            | Channel::Netlink
            | Channel::Vsock
            | Channel::Xdp
            | Channel::Tun => Check::Probe,
            Channel::Udp => Check::Received,
            Channel::EstablishedTcp | Channel::TunFd => Check::Held,
            Channel::Loopback => Check::Covered,
        }
    }

    /// Whether this kernel cuts it and by what. `lsm_error` is None when
    /// BPF LSM hooks are attached and running.
    pub fn status(self, lsm_error: Option<&str>) -> ChannelStatus {
        let (enforced, by) = match (self.mechanism(), lsm_error) {
            ((Some(cg), Some(hooks)), None) => (true, format!("{cg}; BPF LSM {hooks}")),
            ((Some(cg), _), _) => match self.open_without_lsm() {
                Some(gap) => (true, format!("{cg}; OPEN without BPF LSM: {gap}")),
                None => (true, cg.to_owned()),
            },
            ((None, Some(hooks)), None) => (true, format!("BPF LSM {hooks}")),
            ((None, hooks), _) => {
                (false, format!("needs BPF LSM ({}), unavailable on this kernel (see `killpath probe`)", hooks.unwrap_or("its socket hooks")))
            }
        };
        ChannelStatus { channel: self.name().to_owned(), enforced, by }
    }
}

/// Every channel isolation covers, with the mechanism that cuts it here.
/// `adopted`: the target was adopted (`adopt`), so its processes may hold
/// sockets created before they joined it.
pub fn catalog(lsm_error: Option<&str>, adopted: bool) -> Vec<ChannelStatus> {
    let mut c: Vec<ChannelStatus> = Channel::ALL.iter().map(|ch| ch.status(lsm_error)).collect();
    if adopted && lsm_error.is_some() {
        // cgroup_skb and sock_addr hooks key on the cgroup a socket was
        // created in; a socket opened before `adopt` keeps the old one.
        c.push(ChannelStatus {
            channel: PRE_ADOPT_SOCKETS.into(),
            enforced: false,
            by: "sockets opened before `adopt` keep their old cgroup: only BPF LSM (socket_sendmsg/recvmsg) cuts them".into(),
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.name()), Some(c));
        }
        let mut names: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Channel::ALL.len());
    }

    #[test]
    fn without_lsm_only_lsm_channels_are_open() {
        let open: Vec<String> = catalog(Some("no lsm"), false).into_iter().filter(|c| !c.enforced).map(|c| c.channel).collect();
        assert_eq!(open, ["unix", "packet", "netlink", "vsock", "tun-fd"]);
        assert!(catalog(None, true).iter().all(|c| c.enforced), "with BPF LSM every channel is cut, adopted or not");
        assert_eq!(catalog(Some("no lsm"), true).last().map(|c| c.channel.as_str()), Some(PRE_ADOPT_SOCKETS));
    }

    #[test]
    fn gaps_are_named_only_where_they_exist() {
        // With BPF LSM no row mentions an opening.
        for c in catalog(None, false) {
            assert!(!c.by.contains("OPEN") && !c.by.contains("needs"), "{c:?}");
        }
        // Without it, xdp is cut for new XSKs but says what stays open.
        let xdp = Channel::Xdp.status(Some("no lsm"));
        assert!(xdp.enforced && xdp.by.contains("OPEN without BPF LSM"), "{xdp:?}");
        let tun = Channel::Tun.status(Some("no lsm"));
        assert!(tun.enforced && tun.by.contains("cgroup device") && !tun.by.contains("BPF LSM"), "{tun:?}");
    }
}
