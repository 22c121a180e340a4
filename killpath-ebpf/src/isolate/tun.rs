//! TUN/TAP with BPF LSM: an isolated target creates, opens or attaches no
//! TUN/TAP device, and an fd of /dev/net/tun it opened before the
//! isolation neither writes (injects packets) nor reads.
//!
//! Hooks (drivers/net/tun.c, Linux 6.1 and later): TUNSETIFF on a new
//! device calls security_tun_dev_create(); on an existing one (a persistent
//! device made before the isolation) security_tun_dev_open() and then
//! security_tun_dev_attach(); TUNSETQUEUE calls
//! security_tun_dev_attach_queue(). A write(2) on a tun fd injects a packet
//! without any socket hook; it passes rw_verify_area() →
//! security_file_permission(), where [`file_verdict`] refuses it: that
//! check is called from self-protection's file_permission program (one
//! program per hook, `protect/cgroup.rs`).
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::KernelOffsets;

use super::lsm::lsm_verdict;
use crate::{kcgroup::read, targets};

/// MKDEV(10, 200) as the kernel stores it in inode.i_rdev (major << 20 | minor).
const TUN_RDEV: u32 = (10 << 20) | 200;
/// include/uapi/linux/stat.h.
const S_IFMT: u16 = 0o170_000;
const S_IFCHR: u16 = 0o020_000;

/// security_tun_dev_create(void): slot 0 holds the previous return value.
#[lsm(hook = "tun_dev_create")]
pub fn kp_isolate_lsm_tun_dev_create(ctx: LsmContext) -> i32 {
    verdict(ctx.arg(0))
}

/// security_tun_dev_open(security).
#[lsm(hook = "tun_dev_open")]
pub fn kp_isolate_lsm_tun_dev_open(ctx: LsmContext) -> i32 {
    verdict(ctx.arg(1))
}

/// security_tun_dev_attach(sk, security).
#[lsm(hook = "tun_dev_attach")]
pub fn kp_isolate_lsm_tun_dev_attach(ctx: LsmContext) -> i32 {
    verdict(ctx.arg(2))
}

/// security_tun_dev_attach_queue(security).
#[lsm(hook = "tun_dev_attach_queue")]
pub fn kp_isolate_lsm_tun_dev_attach_queue(ctx: LsmContext) -> i32 {
    verdict(ctx.arg(1))
}

#[inline(always)]
fn verdict(prev: i32) -> i32 {
    if prev != 0 {
        return prev;
    }
    lsm_verdict()
}

/// The verdict for a read or write on the file whose inode is `inode`:
/// -EPERM when it is /dev/net/tun (a char device 10:200, whatever its
/// path) and the current task's target is isolated (counted as audit,
/// and 0, when isolation is only audited). Called on every read and write
/// of the host: returns after one array lookup while no target is
/// isolated or audited.
#[inline(always)]
pub fn file_verdict(o: &KernelOffsets, inode: u64) -> i32 {
    if targets::config().is_none_or(|c| c.isolated_targets == 0 && c.audited_targets == 0) {
        return 0;
    }
    if inode == 0 || o.inode_i_rdev == 0 {
        return 0;
    }
    if read::<u16>(inode, o.inode_i_mode).unwrap_or(0) & S_IFMT != S_IFCHR {
        return 0;
    }
    if read::<u32>(inode, o.inode_i_rdev) != Some(TUN_RDEV) {
        return 0;
    }
    lsm_verdict()
}
