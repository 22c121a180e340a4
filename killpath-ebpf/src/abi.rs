//! Kernel ABI numbers that hooks of several levels share: errno values,
//! address families and socket types (include/uapi/asm-generic/errno-base.h,
//! include/linux/socket.h, include/linux/net.h).

pub const EPERM: i32 = 1;
pub const EAGAIN: i32 = 11;

pub const AF_UNIX: i32 = 1;
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
pub const AF_PACKET: i32 = 17;

pub const SOCK_RAW: u32 = 3;
