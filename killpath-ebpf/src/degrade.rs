//! Level 2, degrade: refuse one capability at a time, with EPERM, while the
//! workload keeps running. Every refusal is counted per target and
//! capability (per-CPU, exact) and sampled into a ring buffer at most
//! DENIAL_EVENTS_PER_SEC times a second per (target, capability), so a
//! workload retrying in a loop cannot flood the agent.
//!
//! The network capabilities are also enforced on cgroup sock_addr / sock
//! hooks (see isolate.rs, which shares those programs), so they hold where
//! BPF LSM is off. The rest are BPF LSM hooks with plain arguments.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use killpath_common::{cap, DenialEvent, DenialKey, RateWindow, DENIAL_EVENTS_PER_SEC};

use crate::{
    maps::{DENIALS, DENIAL_EVENTS, DENIAL_RATE, OFFSETS},
    targets,
};

const EPERM: i32 = 1;
const CLONE_THREAD: u64 = 0x0001_0000;

/// Where a denial happened, for the sampled event.
#[derive(Clone, Copy, Default)]
pub struct Detail {
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    /// Kernel pointer to a NUL-terminated name (0: none).
    pub name_ptr: u64,
}

/// Counts a denial of capability bit `bit` for target `cgroup_id`, samples
/// it (rate-limited), and returns -EPERM.
#[inline(always)]
pub fn deny(cgroup_id: u64, bit: u32, detail: Detail) -> i32 {
    let key = DenialKey { cgroup_id, cap: bit, _pad: 0 };
    match DENIALS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, this CPU's slot only.
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = DENIALS.insert(&key, &1, 0);
        }
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let sample = match DENIAL_RATE.get_ptr_mut(&key) {
        Some(w) => {
            // SAFETY: map value pointer valid for this run. Races between
            // CPUs can let a few extra events through: bounded, harmless.
            unsafe {
                if now.wrapping_sub((*w).window_start_ns) >= 1_000_000_000 {
                    (*w).window_start_ns = now;
                    (*w).events = 0;
                }
                (*w).events += 1;
                (*w).events <= DENIAL_EVENTS_PER_SEC
            }
        }
        None => {
            let _ = DENIAL_RATE.insert(&key, &RateWindow { window_start_ns: now, events: 1 }, 0);
            true
        }
    };
    if sample {
        if let Some(mut slot) = DENIAL_EVENTS.reserve::<DenialEvent>(0) {
            let mut name = [0u8; 32];
            if detail.name_ptr != 0 {
                // SAFETY: bounded kernel string read into a stack buffer.
                let _ = unsafe { bpf_probe_read_kernel_str_bytes(detail.name_ptr as *const u8, &mut name) };
            }
            let ev = DenialEvent {
                name,
                cgroup_id,
                time_ns: now,
                pid: (bpf_get_current_pid_tgid() >> 32) as u32,
                cap: bit,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
                family: detail.family,
                port: detail.port,
                addr: detail.addr,
            };
            slot.write(ev);
            slot.submit(0);
        }
    }
    -EPERM
}

/// The current task's target if it has capability `mask` revoked.
#[inline(always)]
pub fn revoked(mask: u32) -> Option<u64> {
    let cfg = targets::config()?;
    if cfg.degraded_targets == 0 {
        return None;
    }
    let (id, st) = targets::of_current_with_id(cfg.depth_mask)?;
    (st.revoked & mask != 0).then_some(id)
}

#[inline(always)]
fn check(ctx: &LsmContext, prev_slot: usize, mask: u32) -> i32 {
    let prev: i32 = ctx.arg(prev_slot);
    if prev != 0 {
        return prev;
    }
    match revoked(mask) {
        Some(id) => deny(id, mask.trailing_zeros(), Detail::default()),
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
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let Some(id) = revoked(cap::EXEC) else { return 0 };
    let bprm: u64 = ctx.arg(0);
    let name_ptr = OFFSETS
        .get(0)
        .filter(|o| o.names_valid != 0)
        // SAFETY: bounded kernel read of bprm->filename.
        .and_then(|o| unsafe { bpf_probe_read_kernel((bprm + u64::from(o.bprm_filename)) as *const u64) }.ok())
        .unwrap_or(0);
    deny(id, cap::EXEC.trailing_zeros(), Detail { name_ptr, ..Detail::default() })
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
        Some(id) => deny(id, cap::BPF.trailing_zeros(), Detail::default()),
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
