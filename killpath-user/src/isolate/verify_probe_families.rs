//! The verify probes for what leaves a target without an inet socket:
//! netlink, vsock and AF_XDP sockets, and TUN devices (`verify_probe.rs`
//! runs them; each returns `Err(Unsupported)` where this kernel lacks the
//! family or the driver, which the table reports as skipped).
use std::{
    net::UdpSocket,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::verify_probe::checksum;

/// A probe that could not run here (the kernel lacks the family or the
/// device): neither cut nor open.
pub(super) struct Unsupported(pub(super) String);

/// socket(2) of `family`: Err(Unsupported) when the kernel has no such
/// family (EAFNOSUPPORT), Ok(Err) when it refused.
pub(super) fn socket_of(family: i32, ty: i32, proto: i32) -> Result<std::io::Result<OwnedFd>, Unsupported> {
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
pub(super) fn netlink() -> Result<std::io::Result<()>, Unsupported> {
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
pub(super) fn vsock() -> Result<std::io::Result<()>, Unsupported> {
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
pub(super) fn xdp() -> Result<std::io::Result<()>, Unsupported> {
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
pub(super) fn tun_create(name: &str) -> Result<std::io::Result<std::fs::File>, Unsupported> {
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
pub(super) fn tun() -> Result<std::io::Result<()>, Unsupported> {
    Ok(tun_create(&format!("kpvt{}", std::process::id()))?.map(drop))
}

/// Brings interface `name` up (SIOCSIFFLAGS through an inet socket).
pub(super) fn link_up(name: &str) -> std::io::Result<()> {
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
pub(super) fn tun_packet() -> Vec<u8> {
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
