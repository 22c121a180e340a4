//! `killpath verify-probe`: the short-lived process that `verify` starts
//! inside a target's cgroup. It tries each channel once, with a bounded
//! timeout, and prints one JSON line per channel: `{"channel", "ok", "error"}`
//! where `ok` means the operation went through from the inside. The agent
//! decides cut/OPEN from these lines and from what reached its listeners.
use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
use serde_json::json;

use super::{
    channel::Channel,
    verify_probe_families::{link_up, netlink, tun, tun_create, tun_packet, vsock, xdp, Unsupported},
};

const TIMEOUT: Duration = Duration::from_millis(800);

/// Which channels to try, and where (the `verify-probe` flags, one per
/// channel that `verify.rs` passes).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The target's cgroup: the probe moves itself in first.
    #[arg(long)]
    pub join: Option<PathBuf>,
    #[arg(long)]
    pub tcp4: Option<SocketAddr>,
    #[arg(long)]
    pub tcp6: Option<SocketAddr>,
    #[arg(long)]
    pub udp: Option<SocketAddr>,
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    #[arg(long)]
    pub unix: Option<PathBuf>,
    #[arg(long)]
    pub icmp: bool,
    #[arg(long)]
    pub packet: bool,
    #[arg(long)]
    pub netlink: bool,
    #[arg(long)]
    pub vsock: bool,
    #[arg(long)]
    pub xdp: bool,
    #[arg(long)]
    pub tun: bool,
    /// Open a TCP connection, report it, wait for a line on stdin, then
    /// try to use it (the "established connection" channel).
    #[arg(long)]
    pub hold: Option<SocketAddr>,
    /// With --hold: before connecting, create TUN device NAME and bring
    /// it up; after the go line, write one packet into it (the tun-fd
    /// channel), then keep it until stdin closes.
    #[arg(long, requires = "hold")]
    pub hold_tun: Option<String>,
}

fn report_skip(channel: &str, why: &str) {
    println!("{}", json!({"channel": channel, "ok": false, "skipped": true, "error": why}));
    let _ = std::io::stdout().flush();
}

fn report(channel: &str, r: std::io::Result<()>) {
    let line = match r {
        Ok(()) => json!({"channel": channel, "ok": true}),
        Err(e) => json!({"channel": channel, "ok": false, "error": e.to_string()}),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn tcp(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(b"kp-probe\n")
}

fn udp(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind(if addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" })?;
    s.send_to(b"kp-udp", addr).map(|_| ())
}

/// A minimal DNS query for `killpath.test. A`; ok when an answer with the
/// same id comes back.
fn dns(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut q = vec![0x4b, 0x50, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["killpath", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, addr)?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf)?;
    if n >= 2 && buf[..2] == q[..2] {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected DNS answer"))
    }
}

pub(super) fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo to 127.0.0.1 over a raw socket; ok when the echo reply arrives.
fn icmp() -> std::io::Result<()> {
    let fd = socket::socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Icmp)?;
    let tv = nix::sys::time::TimeVal::new(0, 300_000);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)?;
    let mut pkt = [8u8, 0, 0, 0, 0x4b, 0x50, 0, 1, b'k', b'p'];
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let dst = SockaddrIn::new(127, 0, 0, 1, 0);
    socket::sendto(fd.as_raw_fd(), &pkt, &dst, socket::MsgFlags::empty())?;
    let mut buf = [0u8; 256];
    for _ in 0..8 {
        let n = socket::recv(fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty())?;
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        // Type 0 = echo reply with our identifier.
        if n >= ihl + 8 && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == [0x4b, 0x50] {
            return Ok(());
        }
    }
    Err(std::io::Error::other("no echo reply"))
}

fn unix(path: &PathBuf) -> std::io::Result<()> {
    let mut s = UnixStream::connect(path)?;
    s.write_all(b"kp-probe\n")
}

/// A packet socket is a way out that bypasses every IP hook.
fn packet() -> std::io::Result<()> {
    // ETH_P_ALL in network byte order.
    // SAFETY: plain socket(2) call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(0x0003u16.to_be())) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    unsafe { libc::close(fd) };
    Ok(())
}

fn hold(addr: SocketAddr, tun_name: Option<&str>) {
    // The TUN device first, before the cut: the agent finds it up and
    // configured when the connection below arrives.
    let tun = tun_name.and_then(|name| match tun_create(name) {
        Err(Unsupported(why)) => {
            report_skip("hold-tun", &why);
            None
        }
        Ok(Err(e)) => {
            report("hold-tun", Err(e));
            None
        }
        Ok(Ok(f)) => match link_up(name) {
            Ok(()) => {
                report("hold-tun", Ok(()));
                Some(f)
            }
            Err(e) => {
                report("hold-tun", Err(e));
                None
            }
        },
    });
    let mut s = match TcpStream::connect_timeout(&addr, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return report("hold", Err(e)),
    };
    report("hold", Ok(()));
    let mut line = String::new();
    let mut stdin = std::io::stdin().lock();
    let _ = stdin.read_line(&mut line);
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let r = s.write_all(b"kp-established\n").and_then(|()| {
        let mut b = [0u8; 16];
        match s.read(&mut b)? {
            0 => Err(std::io::Error::other("connection closed")),
            _ => Ok(()),
        }
    });
    report(Channel::EstablishedTcp.name(), r);
    if let Some(mut f) = tun {
        // One packet injected through the fd opened before the cut; the
        // agent judges by the device's rx_packets, then closes stdin.
        report(Channel::TunFd.name(), f.write_all(&tun_packet()));
        let _ = stdin.read_line(&mut line);
    }
}

/// Runs the probe and prints its results.
pub fn run(a: &ProbeArgs) {
    if let Some(cg) = &a.join {
        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()) {
            // Nothing is probed from outside the target.
            report("join", Err(e));
            return;
        }
    }
    if let Some(addr) = a.hold {
        return hold(addr, a.hold_tun.as_deref());
    }
    for ch in Channel::ALL {
        let r = match ch {
            Channel::Tcp4 => a.tcp4.map(tcp),
            Channel::Tcp6 => a.tcp6.map(tcp),
            Channel::Udp => a.udp.map(udp),
            Channel::Dns => a.dns.map(dns),
            Channel::Icmp => a.icmp.then(icmp),
            Channel::Unix => a.unix.as_ref().map(unix),
            Channel::Packet => a.packet.then(packet),
            Channel::Netlink => a.netlink.then(netlink).map(unsupported_as_skip(ch)).and_then(|r| r),
            Channel::Vsock => a.vsock.then(vsock).map(unsupported_as_skip(ch)).and_then(|r| r),
            Channel::Xdp => a.xdp.then(xdp).map(unsupported_as_skip(ch)).and_then(|r| r),
            Channel::Tun => a.tun.then(tun).map(unsupported_as_skip(ch)).and_then(|r| r),
            // `--hold` above; loopback is where every probe goes.
            Channel::EstablishedTcp | Channel::TunFd | Channel::Loopback => None,
        };
        if let Some(r) = r {
            report(ch.name(), r);
        }
    }
}

/// Reports an unsupported probe as skipped (and nothing else for it).
fn unsupported_as_skip(ch: Channel) -> impl Fn(Result<std::io::Result<()>, Unsupported>) -> Option<std::io::Result<()>> {
    move |r| match r {
        Ok(r) => Some(r),
        Err(Unsupported(why)) => {
            report_skip(ch.name(), &why);
            None
        }
    }
}
