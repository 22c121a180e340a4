//! `killpath verify-probe`: the short-lived process that `verify` starts
//! inside a target's cgroup. It tries each channel once, with a bounded
//! timeout, and prints one JSON line per channel: `{"channel", "ok", "error"}`
//! where `ok` means the operation went through from the inside. The agent
//! decides cut/OPEN from these lines and from what reached its listeners.
use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
    time::Duration,
};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
use serde_json::json;

use super::channel::Channel;

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

/// A probe that could not run here (the kernel lacks the family or the
/// device): neither cut nor open.
struct Unsupported(String);

fn report_skip(channel: &str, why: &str) {
    println!("{}", json!({"channel": channel, "ok": false, "skipped": true, "error": why}));
    let _ = std::io::stdout().flush();
}

/// socket(2) of `family`: Err(Unsupported) when the kernel has no such
/// family (EAFNOSUPPORT), Ok(Err) when it refused.
fn socket_of(family: i32, ty: i32, proto: i32) -> Result<std::io::Result<OwnedFd>, Unsupported> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            return Err(Unsupported(format!("this kernel has no address family {family} ({e})")));
        }
        return Ok(Err(e));
    }
    // SAFETY: fd was just returned by socket(2).
    Ok(Ok(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// rtnetlink: a link dump request; ok when the kernel answers.
fn netlink() -> Result<std::io::Result<()>, Unsupported> {
    let fd = match socket_of(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)? {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    Ok((|| {
        let tv = libc::timeval { tv_sec: 0, tv_usec: 500_000 };
        // SAFETY: setsockopt with a timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // nlmsghdr (len, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + rtgenmsg.
        let mut req = [0u8; 20];
        req[0..4].copy_from_slice(&20u32.to_ne_bytes());
        req[4..6].copy_from_slice(&(libc::RTM_GETLINK).to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // SAFETY: send(2) of a local buffer; the kernel is the default peer.
        if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        // SAFETY: recv(2) into a local buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return Err(if n < 0 { std::io::Error::last_os_error() } else { std::io::Error::other("no answer from rtnetlink") });
        }
        Ok(())
    })())
}

/// An AF_VSOCK stream socket: the door to the hypervisor and other VMs
/// (whether a transport carries it further depends on the host).
fn vsock() -> Result<std::io::Result<()>, Unsupported> {
    Ok(socket_of(libc::AF_VSOCK, libc::SOCK_STREAM, 0)?.map(drop))
}

/// struct xdp_umem_reg (include/uapi/linux/if_xdp.h), the v2 layout that
/// Linux 6.1 and later accept (a later tx_metadata_len sits in `pad`).
#[repr(C)]
struct XdpUmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    pad: u32,
}

const SOL_XDP: i32 = 283;
const XDP_UMEM_REG: i32 = 4;

/// An AF_XDP socket with a registered UMEM: the first step of every XSK.
fn xdp() -> Result<std::io::Result<()>, Unsupported> {
    let fd = match socket_of(libc::AF_XDP, libc::SOCK_RAW, 0)? {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    let len = 16 * 4096;
    // SAFETY: anonymous private mapping, unmapped below.
    let area = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if area == libc::MAP_FAILED {
        return Ok(Err(std::io::Error::last_os_error()));
    }
    let reg = XdpUmemReg { addr: area as u64, len: len as u64, chunk_size: 4096, headroom: 0, flags: 0, pad: 0 };
    // SAFETY: setsockopt with a struct that outlives the call.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), SOL_XDP, XDP_UMEM_REG, (&reg as *const XdpUmemReg).cast(), std::mem::size_of::<XdpUmemReg>() as u32) };
    let res = if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    drop(fd);
    // SAFETY: the mapping made above; the socket holding its pages is closed.
    unsafe { libc::munmap(area, len) };
    Ok(res)
}

/// TUNSETIFF (include/uapi/linux/if_tun.h), IFF_TUN, IFF_NO_PI.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;

/// struct ifreq: the name, then a union whose first member is the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _rest: [u8; 22],
}

fn ifreq(name: &str, flags: i16) -> IfReq {
    let mut r = IfReq { name: [0; 16], flags, _rest: [0; 22] };
    let n = name.len().min(15);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

/// Opens /dev/net/tun and creates TUN device `name` on it. Where the node
/// is missing (the tun module not loaded yet), does what a workload would:
/// makes its own 10:200 node, whose open loads the module
/// (request_module("char-major-10-200")).
fn tun_create(name: &str) -> Result<std::io::Result<std::fs::File>, Unsupported> {
    let open = |p: &std::path::Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
    let f = match open(std::path::Path::new("/dev/net/tun")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let node = std::env::temp_dir().join(format!("killpath-tun-{}", std::process::id()));
            let c = match std::ffi::CString::new(node.as_os_str().as_encoded_bytes()) {
                Ok(c) => c,
                Err(_) => return Err(Unsupported("no /dev/net/tun, and no path for a private node".into())),
            };
            // SAFETY: mknod(2) with a NUL-terminated path alive for the call.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 200)) } < 0 {
                return Ok(Err(std::io::Error::last_os_error()));
            }
            let r = open(&node);
            let _ = std::fs::remove_file(&node);
            match r {
                Ok(f) => f,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO)) => {
                    return Err(Unsupported(format!("no TUN driver in this kernel ({e})")));
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Err(e) => return Ok(Err(e)),
    };
    let mut req = ifreq(name, IFF_TUN | IFF_NO_PI);
    // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Ok(Err(std::io::Error::last_os_error()));
    }
    Ok(Ok(f))
}

/// A new TUN device: opening /dev/net/tun and TUNSETIFF. The device goes
/// with the fd (not persistent).
fn tun() -> Result<std::io::Result<()>, Unsupported> {
    Ok(tun_create(&format!("kpvt{}", std::process::id()))?.map(drop))
}

/// Brings interface `name` up (SIOCSIFFLAGS through an inet socket).
fn link_up(name: &str) -> std::io::Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let mut req = ifreq(name, 0);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the local ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    req.flags |= libc::IFF_UP as i16;
    // SAFETY: as above.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One IPv4/UDP packet 10.255.255.1 -> 10.255.255.2:9 ("kp-tun").
fn tun_packet() -> Vec<u8> {
    let payload = b"kp-tun";
    let total = 20 + 8 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 255, 255, 1, 10, 255, 255, 2];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[0x30, 0x39, 0, 9]);
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
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

fn checksum(data: &[u8]) -> u16 {
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
