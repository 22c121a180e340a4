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
    pub const ALL: [Channel; 9] =
        [Channel::Tcp4, Channel::Tcp6, Channel::Udp, Channel::Dns, Channel::Icmp, Channel::EstablishedTcp, Channel::Loopback, Channel::Unix, Channel::Packet];

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
        }
    }

    /// The channel named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What cuts it: `Ok(mechanism)` with cgroup hooks alone, `Err(hooks)`
    /// for the BPF LSM hooks it needs.
    fn mechanism(self) -> Result<&'static str, &'static str> {
        match self {
            Channel::Tcp4 => Ok("cgroup connect4 + skb ingress/egress"),
            Channel::Tcp6 => Ok("cgroup connect6 + skb ingress/egress"),
            Channel::Udp | Channel::Dns => Ok("cgroup sendmsg4/6 + skb ingress/egress"),
            Channel::Icmp => Ok("cgroup sock_create (raw refused) + skb egress"),
            Channel::EstablishedTcp => Ok("cgroup skb ingress/egress drop every packet"),
            Channel::Loopback => Ok("cgroup skb hooks see loopback traffic too"),
            Channel::Unix => Err("socket_create/connect/sendmsg/recvmsg"),
            Channel::Packet => Err("socket_create (AF_PACKET refused)"),
        }
    }

    /// How `--verify` checks it.
    pub fn check(self) -> Check {
        match self {
            Channel::Tcp4 | Channel::Tcp6 | Channel::Dns | Channel::Icmp | Channel::Unix | Channel::Packet => Check::Probe,
            Channel::Udp => Check::Received,
            Channel::EstablishedTcp => Check::Held,
            Channel::Loopback => Check::Covered,
        }
    }

    /// Whether this kernel cuts it and by what. `lsm_error` is None when
    /// BPF LSM hooks are attached and running.
    pub fn status(self, lsm_error: Option<&str>) -> ChannelStatus {
        let (enforced, by) = match (self.mechanism(), lsm_error) {
            (Ok(by), _) => (true, by.to_owned()),
            (Err(hooks), None) => (true, format!("BPF LSM {hooks}")),
            (Err(_), Some(_)) => (false, "needs BPF LSM, unavailable on this kernel (see `killpath probe`)".to_owned()),
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
        assert_eq!(open, ["unix", "packet"]);
        assert!(catalog(None, true).iter().all(|c| c.enforced), "with BPF LSM every channel is cut, adopted or not");
        assert_eq!(catalog(Some("no lsm"), true).last().map(|c| c.channel.as_str()), Some(PRE_ADOPT_SOCKETS));
    }
}
