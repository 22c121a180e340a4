//! Level 2, the capabilities with a BPF LSM hook of their own and plain
//! arguments. Each hook reads the previous LSM program's return value from
//! the slot after its last argument and passes a refusal on unchanged
//! (all but `bpf`, see there).
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use killpath_common::cap;

use super::{revoked, verdict, Detail};
use crate::maps::OFFSETS;

const CLONE_THREAD: u64 = 0x0001_0000;

/// The previous program's refusal (argument slot `prev_slot`), else
/// -EPERM if the current task's target has capability `mask` revoked.
#[inline(always)]
fn check(ctx: &LsmContext, prev_slot: usize, mask: u32) -> i32 {
    let prev: i32 = ctx.arg(prev_slot);
    if prev != 0 {
        return prev;
    }
    match revoked(mask) {
        Some(s) => verdict(s, mask.trailing_zeros(), Detail::default()),
        None => 0,
    }
}

/// net.listen: security_socket_listen(sock, backlog).
#[lsm(hook = "socket_listen")]
pub fn kp_degrade_socket_listen(ctx: LsmContext) -> i32 {
    check(&ctx, 2, cap::NET_LISTEN)
}

/// exec: security_bprm_check_security(bprm); the event names the program.
#[lsm(hook = "bprm_check_security")]
pub fn kp_degrade_bprm_check(ctx: LsmContext) -> i32 {
    try_bprm_check(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_bprm_check(ctx: &LsmContext) -> Result<i32, i32> {
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return Ok(prev);
    }
    let s = revoked(cap::EXEC).ok_or(0)?;
    let bprm: u64 = ctx.arg(0);
    let name_ptr = OFFSETS
        .get(0)
        .filter(|o| o.names_valid != 0)
        // SAFETY: bounded kernel read of bprm->filename.
        .and_then(|o| unsafe { bpf_probe_read_kernel((bprm + u64::from(o.bprm_filename)) as *const u64) }.ok())
        .unwrap_or(0);
    Ok(verdict(s, cap::EXEC.trailing_zeros(), Detail { name_ptr, ..Detail::default() }))
}

/// fork: security_task_alloc(task, clone_flags). Threads are not
/// processes: CLONE_THREAD stays allowed.
#[lsm(hook = "task_alloc")]
pub fn kp_degrade_task_alloc(ctx: LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_THREAD != 0 {
        return ctx.arg(2);
    }
    check(&ctx, 2, cap::FORK)
}

/// ptrace: security_ptrace_access_check(child, mode).
#[lsm(hook = "ptrace_access_check")]
pub fn kp_degrade_ptrace_access(ctx: LsmContext) -> i32 {
    check(&ctx, 2, cap::PTRACE)
}

/// ptrace: security_ptrace_traceme(parent).
#[lsm(hook = "ptrace_traceme")]
pub fn kp_degrade_ptrace_traceme(ctx: LsmContext) -> i32 {
    check(&ctx, 1, cap::PTRACE)
}

/// mount: security_sb_mount(dev_name, path, type, flags, data).
#[lsm(hook = "sb_mount")]
pub fn kp_degrade_sb_mount(ctx: LsmContext) -> i32 {
    check(&ctx, 5, cap::MOUNT)
}

/// mount: security_move_mount(from_path, to_path).
#[lsm(hook = "move_mount")]
pub fn kp_degrade_move_mount(ctx: LsmContext) -> i32 {
    check(&ctx, 2, cap::MOUNT)
}

/// mount: security_sb_umount(mnt, flags).
#[lsm(hook = "sb_umount")]
pub fn kp_degrade_sb_umount(ctx: LsmContext) -> i32 {
    check(&ctx, 2, cap::MOUNT)
}

/// bpf: security_bpf(cmd, attr, size[, token]). Linux 6.9 added the token
/// argument, which moves the previous program's return slot; so this hook
/// does not read it: for a target with `bpf` revoked, bpf(2) is refused.
#[lsm(hook = "bpf")]
pub fn kp_degrade_bpf(_ctx: LsmContext) -> i32 {
    match revoked(cap::BPF) {
        Some(s) => verdict(s, cap::BPF.trailing_zeros(), Detail::default()),
        None => 0,
    }
}

/// module: security_kernel_module_request(kmod_name).
#[lsm(hook = "kernel_module_request")]
pub fn kp_degrade_module_request(ctx: LsmContext) -> i32 {
    check(&ctx, 1, cap::MODULE)
}

/// module: security_kernel_load_data(id, contents) (init_module).
#[lsm(hook = "kernel_load_data")]
pub fn kp_degrade_load_data(ctx: LsmContext) -> i32 {
    check(&ctx, 2, cap::MODULE)
}

/// module: security_kernel_read_file(file, id, contents) (finit_module).
#[lsm(hook = "kernel_read_file")]
pub fn kp_degrade_read_file(ctx: LsmContext) -> i32 {
    check(&ctx, 3, cap::MODULE)
}

/// setid: security_task_fix_setuid(new, old, flags).
#[lsm(hook = "task_fix_setuid")]
pub fn kp_degrade_setuid(ctx: LsmContext) -> i32 {
    check(&ctx, 3, cap::SETID)
}

/// setid: security_task_fix_setgid(new, old, flags).
#[lsm(hook = "task_fix_setgid")]
pub fn kp_degrade_setgid(ctx: LsmContext) -> i32 {
    check(&ctx, 3, cap::SETID)
}
