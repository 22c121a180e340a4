//! Level 1: which kernel hook charges each syscall class.
//!
//! `raw_tracepoint/sys_exit` sees every syscall, but while it is attached
//! every task on the host takes the kernel's syscall-tracing slow path
//! (about +250 ns per syscall). A class with a hook of its own is charged
//! there instead, and sys_exit is attached only for `all` (and for a class
//! that has no hook of its own on this kernel):
//!
//! - `net`: fexit on connect/sendto/sendmsg/sendmmsg ([`NET_FEXITS`]) where
//!   the kernel has BPF trampolines; else the socket tracepoints
//!   ([`NET_EVENTS`]: each message sent, each TCP connect) with the cgroup
//!   sock_addr connect hooks for a UDP connect;
//! - `fork`: raw_tracepoint/sched_process_fork (the membership hook);
//! - `exec`: raw_tracepoint/sched_process_exec (the tripwire hook);
//! - `fs-write`: fexit on each syscall's own function ([`FS_WRITE_FEXITS`]),
//!   where the kernel has BPF trampolines.

/// `Array<u32>` with two entries, written by the agent at load before any
/// ceiling exists. Entry [`OWN_HOOK`], bit `c`: class `c` is charged by its
/// own hook, so sys_exit charges such a syscall to `all` only. Entry
/// [`SEES_IO_URING`], bit `c`: that hook also sees io_uring operations
/// (the socket tracepoints), so the io_uring hook charges them to `all` only.
pub const MAP: &str = "KP_CLASS_HOOKS";
pub const OWN_HOOK: u32 = 0;
pub const SEES_IO_URING: u32 = 1;

/// fexit programs of the `net` class: (program, syscall function).
pub const NET_FEXITS: &[(&str, &str)] = &[
    ("kp_net_connect", "__x64_sys_connect"),
    ("kp_net_sendto", "__x64_sys_sendto"),
    ("kp_net_sendmsg", "__x64_sys_sendmsg"),
    ("kp_net_sendmmsg", "__x64_sys_sendmmsg"),
];

/// Raw tracepoint programs of the `net` class where fexit is refused:
/// (program, tracepoint).
pub const NET_EVENTS: &[(&str, &str)] = &[("kp_net_send", "sock_send_length"), ("kp_net_tcp_connect", "inet_sock_set_state")];

/// fexit programs of the `fs-write` class: (program, the x86_64 syscall
/// function it is loaded for). Same syscalls as the class's sys_exit table.
pub const FS_WRITE_FEXITS: &[(&str, &str)] = &[
    ("kp_fsw_write", "__x64_sys_write"),
    ("kp_fsw_pwrite64", "__x64_sys_pwrite64"),
    ("kp_fsw_writev", "__x64_sys_writev"),
    ("kp_fsw_pwritev", "__x64_sys_pwritev"),
    ("kp_fsw_pwritev2", "__x64_sys_pwritev2"),
    ("kp_fsw_truncate", "__x64_sys_truncate"),
    ("kp_fsw_ftruncate", "__x64_sys_ftruncate"),
    ("kp_fsw_fallocate", "__x64_sys_fallocate"),
    ("kp_fsw_rename", "__x64_sys_rename"),
    ("kp_fsw_renameat", "__x64_sys_renameat"),
    ("kp_fsw_renameat2", "__x64_sys_renameat2"),
    ("kp_fsw_unlink", "__x64_sys_unlink"),
    ("kp_fsw_unlinkat", "__x64_sys_unlinkat"),
    ("kp_fsw_mkdir", "__x64_sys_mkdir"),
    ("kp_fsw_mkdirat", "__x64_sys_mkdirat"),
    ("kp_fsw_rmdir", "__x64_sys_rmdir"),
    ("kp_fsw_creat", "__x64_sys_creat"),
    ("kp_fsw_link", "__x64_sys_link"),
    ("kp_fsw_linkat", "__x64_sys_linkat"),
    ("kp_fsw_symlink", "__x64_sys_symlink"),
    ("kp_fsw_symlinkat", "__x64_sys_symlinkat"),
    ("kp_fsw_copy_file_range", "__x64_sys_copy_file_range"),
];
