//! cgroup device program on each target's cgroup (BPF_CGROUP_DEVICE):
//! while the target is isolated, no TUN/TAP or vhost device node may be
//! opened or created. The kernel runs it from devcgroup_check_permission:
//! at open(2) of a device node (inode_permission → devcgroup_inode_permission,
//! before the driver's open) and at mknod(2), for the task's own cgroup and
//! its ancestors. It does not run on reads or writes of an fd opened
//! before the isolation: that needs BPF LSM (`tun.rs`, file_permission).
//!
//! The links are multi-attach (cgroup bpf_links always are): every device
//! program on the cgroup's path must allow, so systemd's or a container
//! runtime's device allow-lists keep working alongside this one, and this
//! one allows everything else, and everything when the target is not
//! isolated.
use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};
use killpath_common::counter;

use super::Cut;
use crate::{
    audit,
    degrade::{label, Detail, Origin},
    targets,
};
// The cgroup programs' verdicts (`abi`).
use crate::abi::{CGROUP_ALLOW as ALLOW, CGROUP_REFUSE as REFUSE};

/// include/uapi/linux/bpf.h: access_type's low 16 bits.
const BPF_DEVCG_DEV_CHAR: u32 = 2;
/// include/uapi/linux/major.h and miscdevice.h: /dev/net/tun 10:200,
/// /dev/vhost-net 10:238, /dev/vhost-vsock 10:241.
const MISC_MAJOR: u32 = 10;
const TUN_MINOR: u32 = 200;
const VHOST_NET_MINOR: u32 = 238;
const VHOST_VSOCK_MINOR: u32 = 241;

#[cgroup_device]
pub fn kp_isolate_device(ctx: DeviceContext) -> i32 {
    try_device(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_device(ctx: &DeviceContext) -> Result<i32, i32> {
    // SAFETY: ctx.device is the kernel-provided bpf_cgroup_dev_ctx.
    let (access, major, minor) = unsafe { ((*ctx.device).access_type, (*ctx.device).major, (*ctx.device).minor) };
    if access & 0xffff != BPF_DEVCG_DEV_CHAR || major != MISC_MAJOR {
        return Ok(ALLOW);
    }
    if minor != TUN_MINOR && minor != VHOST_NET_MINOR && minor != VHOST_VSOCK_MINOR {
        return Ok(ALLOW);
    }
    match super::current_task_cut() {
        Cut::Open => Ok(ALLOW),
        Cut::Refuse => {
            targets::count(counter::ISOLATE_DEVICE_DENIALS);
            Ok(REFUSE)
        }
        Cut::Audit(id) => {
            let what = if minor == TUN_MINOR { label(b"/dev/net/tun") } else { label(b"/dev/vhost-*") };
            audit::record_isolation(id, counter::ISOLATE_DEVICE_DENIALS, Detail { label: what, ..Detail::default() }, Origin::Task);
            Ok(ALLOW)
        }
    }
}
