//! 32-bit syscalls on x86_64 (`int 0x80`, `sysenter`, `syscall` from a
//! 32-bit process) where the kernel has IA32 emulation (CONFIG_IA32_EMULATION,
//! on in Debian's and most distributions' kernels). Any process may use
//! them, a 64-bit one too (`int 0x80` with pointers below 4 GiB): they
//! have numbers of their own (arch/x86/entry/syscalls/syscall_32.tbl) and
//! functions of their own (`__ia32_sys_*`, `__ia32_compat_sys_*`), so a
//! class charged by x86_64 number (sys_exit) or at the `__x64_sys_*`
//! functions (fexit) would miss them: a side door out of a syscall
//! ceiling. sys_exit tells them apart by TS_COMPAT in the task's
//! thread_info (what the kernel's own `in_ia32_syscall()` reads) and looks
//! them up in [`MAP`]; the fexit plan adds a program on each 32-bit entry.

/// `Array<u32>` indexed by i386 syscall number: 1 + the syscall's class, 0
/// for none. Filled by the agent (`socketcall` is classed by its call
/// number at the hook, see [`SOCKETCALL_NET`]).
pub const MAP: &str = "KP_SYSCALL_CLASS_IA32";

/// Size of [`MAP`] (i386 numbers end below 512).
pub const MAX_NR: u32 = 512;

/// `thread_info.status` bit: a 32-bit syscall is running
/// (arch/x86/include/asm/thread_info.h).
pub const TS_COMPAT: u32 = 0x0002;

/// i386 `socketcall(call, args)`: one entry for every socket call (older
/// 32-bit C libraries use it for all of them).
pub const SOCKETCALL: u32 = 102;

/// Offset of `bx` in x86_64 `struct pt_regs`, the first argument of a
/// 32-bit syscall (fixed by the ABI, arch/x86/include/asm/ptrace.h).
pub const PT_REGS_BX: usize = 5 * 8;

/// `socketcall` calls of the `net` class (include/uapi/linux/net.h):
/// SYS_CONNECT, SYS_SEND, SYS_SENDTO, SYS_SENDMSG, SYS_SENDMMSG.
pub const SOCKETCALL_NET: [u64; 5] = [3, 9, 11, 16, 20];

/// fexit programs on the 32-bit entries of the `fs-write` class: (program,
/// the functions it may be loaded for, first found in the kernel's BTF
/// wins: names changed between versions).
pub const FS_WRITE_FEXITS: &[(&str, &[&str])] = &[
    ("kp_fsw32_write", &["__ia32_sys_write"]),
    ("kp_fsw32_pwrite64", &["__ia32_sys_ia32_pwrite64", "__ia32_compat_sys_x86_pwrite"]),
    ("kp_fsw32_writev", &["__ia32_sys_writev", "__ia32_compat_sys_writev"]),
    ("kp_fsw32_pwritev", &["__ia32_compat_sys_pwritev"]),
    ("kp_fsw32_pwritev2", &["__ia32_compat_sys_pwritev2"]),
    ("kp_fsw32_truncate", &["__ia32_compat_sys_truncate"]),
    ("kp_fsw32_ftruncate", &["__ia32_compat_sys_ftruncate"]),
    ("kp_fsw32_truncate64", &["__ia32_sys_ia32_truncate64", "__ia32_compat_sys_x86_truncate64"]),
    ("kp_fsw32_ftruncate64", &["__ia32_sys_ia32_ftruncate64", "__ia32_compat_sys_x86_ftruncate64"]),
    ("kp_fsw32_fallocate", &["__ia32_sys_ia32_fallocate", "__ia32_compat_sys_x86_fallocate"]),
    ("kp_fsw32_rename", &["__ia32_sys_rename"]),
    ("kp_fsw32_renameat", &["__ia32_sys_renameat"]),
    ("kp_fsw32_renameat2", &["__ia32_sys_renameat2"]),
    ("kp_fsw32_unlink", &["__ia32_sys_unlink"]),
    ("kp_fsw32_unlinkat", &["__ia32_sys_unlinkat"]),
    ("kp_fsw32_mkdir", &["__ia32_sys_mkdir"]),
    ("kp_fsw32_mkdirat", &["__ia32_sys_mkdirat"]),
    ("kp_fsw32_rmdir", &["__ia32_sys_rmdir"]),
    ("kp_fsw32_creat", &["__ia32_sys_creat"]),
    ("kp_fsw32_link", &["__ia32_sys_link"]),
    ("kp_fsw32_linkat", &["__ia32_sys_linkat"]),
    ("kp_fsw32_symlink", &["__ia32_sys_symlink"]),
    ("kp_fsw32_symlinkat", &["__ia32_sys_symlinkat"]),
    ("kp_fsw32_copy_file_range", &["__ia32_sys_copy_file_range"]),
];

/// fexit programs on the 32-bit entries of the `net` class (as above).
/// `kp_net32_socketcall` charges only the calls in [`SOCKETCALL_NET`].
pub const NET_FEXITS: &[(&str, &[&str])] = &[
    ("kp_net32_connect", &["__ia32_sys_connect"]),
    ("kp_net32_sendto", &["__ia32_sys_sendto"]),
    ("kp_net32_sendmsg", &["__ia32_compat_sys_sendmsg"]),
    ("kp_net32_sendmmsg", &["__ia32_compat_sys_sendmmsg"]),
    ("kp_net32_socketcall", &["__ia32_compat_sys_socketcall"]),
];

/// The function whose presence in BTF says this kernel runs 32-bit
/// syscalls at all (no IA32 emulation: nothing to cover).
pub const PRESENCE: &str = "__ia32_sys_write";
