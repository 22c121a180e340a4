//! Level 1, the `fs-write` and `net` classes at fexit of each of their
//! syscalls' functions (`__x64_sys_write`, `__x64_sys_connect`, ...; the
//! lists and the functions the agent loads them for are
//! `killpath_common::class_hooks::FS_WRITE_FEXITS` and `NET_FEXITS`).
//!
//! fexit (BPF trampolines, Linux 5.5, x86_64 with
//! DYNAMIC_FTRACE_WITH_DIRECT_CALLS) runs only when that function runs:
//! the rest of the host's syscalls pay nothing, unlike sys_exit. Where the
//! kernel refuses tracing programs (lockdown, no trampolines) the agent
//! leaves these classes to other hooks or sys_exit. At exit, not entry,
//! like sys_exit: a task stopped at entry would break a blocking call,
//! which then restarts and is charged twice. One program per function: a
//! tracing program is loaded for one attach target (its BTF id).
use aya_ebpf::{macros::fexit, programs::FExitContext};
use killpath_common::throttle;

/// One fexit program per syscall function of `class`. The section carries
/// no function name: the agent passes it at load.
macro_rules! class_exits {
    ($class:expr => $($name:ident),* $(,)?) => {$(
        #[fexit]
        pub fn $name(_ctx: FExitContext) -> i32 {
            super::classes::charge_class($class);
            0
        }
    )*};
}
pub(super) use class_exits;

class_exits!(throttle::FS_WRITE =>
    kp_fsw_write,
    kp_fsw_pwrite64,
    kp_fsw_writev,
    kp_fsw_pwritev,
    kp_fsw_pwritev2,
    kp_fsw_truncate,
    kp_fsw_ftruncate,
    kp_fsw_fallocate,
    kp_fsw_rename,
    kp_fsw_renameat,
    kp_fsw_renameat2,
    kp_fsw_unlink,
    kp_fsw_unlinkat,
    kp_fsw_mkdir,
    kp_fsw_mkdirat,
    kp_fsw_rmdir,
    kp_fsw_creat,
    kp_fsw_link,
    kp_fsw_linkat,
    kp_fsw_symlink,
    kp_fsw_symlinkat,
    kp_fsw_copy_file_range,
);

class_exits!(throttle::NET => kp_net_connect, kp_net_sendto, kp_net_sendmsg, kp_net_sendmmsg);
