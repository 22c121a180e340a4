//! Protection `protect.bpf`: no bpf(2) from inside a target. With it a root task
//! could delete its entry from KP_TARGETS, detach killpath's programs or
//! load its own. A target that has the `bpf` capability revoked is left to
//! degrade's own hook, so its refusals keep counting as capability denials.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use killpath_common::{cap, protect};

use super::{current_target, refuse};

/// security_bpf(cmd, attr, size[, token]). Linux 6.9 added the token
/// argument, which moves the previous program's return slot, so this hook
/// does not read it (an earlier refusal ends the chain anyway).
#[lsm(hook = "bpf")]
pub fn kp_protect_bpf(_ctx: LsmContext) -> i32 {
    match current_target() {
        Some((_, st)) if st.revoked & cap::BPF != 0 => 0,
        Some((id, _)) => refuse(id, protect::BPF),
        None => 0,
    }
}
