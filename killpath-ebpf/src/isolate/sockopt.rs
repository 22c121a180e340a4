//! cgroup setsockopt program on each target's cgroup (BPF_CGROUP_SETSOCKOPT):
//! while the target is isolated, every SOL_XDP option is refused, so no
//! AF_XDP socket can get a UMEM or rings (XDP_UMEM_REG, XDP_*_RING) and
//! none can be bound to a queue. The kernel runs it from the setsockopt
//! syscall (__sys_setsockopt / do_sock_setsockopt) for every address
//! family, for sockets whose cgroup (the creator's) is in the target's
//! subtree: the one hook that reaches AF_XDP without BPF LSM (the cgroup
//! sock_create hook only runs for inet sockets). An XSK set up before the
//! isolation needs no further setsockopt: only BPF LSM cuts it
//! (socket_sendmsg/recvmsg).
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use killpath_common::counter;

use super::Cut;
use crate::{
    audit,
    degrade::{label, Detail, Origin},
    targets,
};
// The cgroup programs' verdicts (`abi`).
use crate::abi::{CGROUP_ALLOW as ALLOW, CGROUP_REFUSE as REFUSE};

/// include/linux/socket.h.
const SOL_XDP: i32 = 283;
/// The kernel hands the program at most one page of the option: above
/// that, optlen 0 tells it to use the caller's buffer untouched (Linux
/// 6.1 would otherwise fail the call with EFAULT).
const PAGE_SIZE: i32 = 4096;

#[cgroup_sockopt(setsockopt)]
pub fn kp_isolate_setsockopt(ctx: SockoptContext) -> i32 {
    try_setsockopt(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_setsockopt(ctx: &SockoptContext) -> Result<i32, i32> {
    let s = ctx.sockopt;
    // SAFETY: s is the kernel-provided bpf_sockopt context.
    let (level, optlen) = unsafe { ((*s).level, (*s).optlen) };
    if level == SOL_XDP {
        match super::current_task_cut() {
            Cut::Open => {}
            Cut::Refuse => {
                targets::count(counter::ISOLATE_SOCKOPT_DENIALS);
                return Ok(REFUSE);
            }
            Cut::Audit(id) => {
                audit::record_isolation(
                    id,
                    counter::ISOLATE_SOCKOPT_DENIALS,
                    Detail { label: label(b"SOL_XDP setsockopt"), ..Detail::default() },
                    Origin::Task,
                );
            }
        }
    }
    if optlen > PAGE_SIZE {
        // SAFETY: optlen is writable in setsockopt programs.
        unsafe { (*s).optlen = 0 };
    }
    Ok(ALLOW)
}
