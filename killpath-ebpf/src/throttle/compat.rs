//! Level 1, 32-bit syscalls (`int 0x80`, `sysenter`) on x86_64: a side
//! door out of a class ceiling unless they are charged too (see
//! `killpath_common::compat`). At sys_exit they carry i386 numbers (write
//! is 4, which is x86_64's stat): [`class_of`] reads TS_COMPAT from the
//! task's thread_info, as the kernel's `in_ia32_syscall()` does, and looks
//! the number up in the i386 table. At fexit they run functions of their
//! own (`__ia32_sys_write`, ...): one more program on each, below.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{fexit, map},
    maps::Array,
    programs::FExitContext,
};
use killpath_common::{compat, throttle};

use super::syscall_exits::class_exits;
use crate::{kcgroup::read, maps::OFFSETS};

#[map(name = "KP_SYSCALL_CLASS_IA32")]
pub static SYSCALL_CLASS_IA32: Array<u32> = Array::with_max_entries(compat::MAX_NR, 0);

/// Whether the current task is in a 32-bit syscall (TS_COMPAT, set at the
/// 32-bit entry and cleared at the next 64-bit one; checked at sys_exit,
/// so it describes the syscall exiting). False where the offset is
/// unknown (no BTF): then every number is read as x86_64's.
#[inline(always)]
fn in_compat_syscall() -> bool {
    let Some(o) = OFFSETS.get(0) else { return false };
    if o.compat_valid == 0 {
        return false;
    }
    // SAFETY: helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    read::<u32>(task, o.task_ti_status).is_some_and(|s| s & compat::TS_COMPAT != 0)
}

/// The class (1 + class, 0 for none) of 32-bit syscall `nr` whose
/// registers are at `regs`: socketcall by its call number (first argument,
/// in bx).
#[inline(always)]
fn class_of_ia32(nr: u64, regs: *const u8) -> u32 {
    if nr == u64::from(compat::SOCKETCALL) {
        return u32::from(socketcall_is_net(regs)) * (throttle::NET + 1);
    }
    if nr < u64::from(compat::MAX_NR) {
        return SYSCALL_CLASS_IA32.get(nr as u32).copied().unwrap_or(0);
    }
    0
}

/// Whether the socketcall whose registers are at `regs` is one of the
/// `net` class's calls.
#[inline(always)]
fn socketcall_is_net(regs: *const u8) -> bool {
    // SAFETY: bounded kernel read of one register slot.
    let Ok(call) = (unsafe { bpf_probe_read_kernel(regs.wrapping_add(compat::PT_REGS_BX) as *const u64) }) else { return false };
    let call = call & 0xffff_ffff;
    compat::SOCKETCALL_NET.contains(&call)
}

/// The table entry (1 + class, 0 for none) of the syscall `nr` exiting
/// with registers at `regs`, given the x86_64 table's answer `x64`.
#[inline(always)]
pub(crate) fn class_entry(nr: u64, regs: *const u8, x64: impl FnOnce() -> u32) -> u32 {
    if in_compat_syscall() {
        class_of_ia32(nr, regs)
    } else {
        x64()
    }
}

class_exits!(throttle::FS_WRITE =>
    kp_fsw32_write,
    kp_fsw32_pwrite64,
    kp_fsw32_writev,
    kp_fsw32_pwritev,
    kp_fsw32_pwritev2,
    kp_fsw32_truncate,
    kp_fsw32_ftruncate,
    kp_fsw32_truncate64,
    kp_fsw32_ftruncate64,
    kp_fsw32_fallocate,
    kp_fsw32_rename,
    kp_fsw32_renameat,
    kp_fsw32_renameat2,
    kp_fsw32_unlink,
    kp_fsw32_unlinkat,
    kp_fsw32_mkdir,
    kp_fsw32_mkdirat,
    kp_fsw32_rmdir,
    kp_fsw32_creat,
    kp_fsw32_link,
    kp_fsw32_linkat,
    kp_fsw32_symlink,
    kp_fsw32_symlinkat,
    kp_fsw32_copy_file_range,
);

class_exits!(throttle::NET => kp_net32_connect, kp_net32_sendto, kp_net32_sendmsg, kp_net32_sendmmsg);

/// `__ia32_compat_sys_socketcall(const struct pt_regs *regs)`: charged to
/// `net` only for connect and the sends.
#[fexit]
pub fn kp_net32_socketcall(ctx: FExitContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    if socketcall_is_net(regs) {
        super::classes::charge_class(throttle::NET);
    }
    0
}
