//! Kernel ABI numbers that hooks of several levels share: errno values,
//! address families and socket types (include/uapi/asm-generic/errno-base.h,
//! include/linux/socket.h, include/linux/net.h), and the verdicts of the
//! cgroup programs that allow or refuse (sock_addr, sock, sockopt, device,
//! sysctl).

pub const EPERM: i32 = 1;
pub const EAGAIN: i32 = 11;

pub const AF_UNIX: i32 = 1;
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
pub const AF_PACKET: i32 = 17;

pub const SOCK_RAW: u32 = 3;

/// A cgroup program's verdict: allow the operation.
pub const CGROUP_ALLOW: i32 = 1;
/// A cgroup program's verdict: refuse it (EPERM, unless a sock_addr or
/// sockopt program set another return value).
pub const CGROUP_REFUSE: i32 = 0;
