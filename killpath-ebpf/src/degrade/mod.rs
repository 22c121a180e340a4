//! Level 2, degrade: refuse one capability at a time, with EPERM, while the
//! workload keeps running. Every refusal is counted per target and
//! capability (per-CPU, exact) and sampled into a ring buffer at most
//! DENIAL_EVENTS_PER_SEC times a second per (target, capability), so a
//! workload retrying in a loop cannot flood the agent.
//!
//! - `caps.rs`: capabilities with a BPF LSM hook of their own and plain
//!   arguments (net.listen, exec, fork, ptrace, mount, bpf, module, setid);
//! - `fswrite.rs`: `fs.write`, with the `--allow-write` directories;
//! - `signal.rs`: `signal`, decided from the receiver's cgroup;
//! - `connect.rs`: the network capabilities net.connect (with the
//!   `--allow-connect` list), net.raw and net.unix. They are enforced on
//!   the socket hooks isolate owns (cgroup sock_addr / sock, so they hold
//!   where BPF LSM is off, and the LSM socket hooks): those programs live
//!   in `isolate/` and call into `connect.rs`;
//! - `egress.rs`: net.connect per packet at cgroup skb egress (also a
//!   program isolate owns), so sockets connected before the revocation
//!   and raw sockets opened before it are held to the allow-list too.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes};
use killpath_common::{audit as audit_bits, DenialEvent, DenialKey, RateWindow, DENIAL_EVENTS_PER_SEC};

use crate::{
    abi::EPERM,
    audit::{self, Subject},
    maps::{DENIALS, DENIAL_EVENTS, DENIAL_RATE},
    targets,
};

mod caps;
pub mod connect;
pub mod egress;
mod fswrite;
pub(crate) mod signal;

/// Where a denial happened, for the sampled event.
#[derive(Clone, Copy, Default)]
pub struct Detail {
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    /// Kernel pointer to a NUL-terminated name (0: none).
    pub name_ptr: u64,
    /// What was refused, when no kernel pointer names it (all zero: none).
    pub label: [u8; 32],
}

/// A NUL-padded [`Detail::label`] from a constant string (at most 31 bytes).
pub const fn label(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < s.len() && i < 31 {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// Who a denial is charged to in its sampled event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A syscall of the current task: pid and comm come from it.
    Task,
    /// A packet at cgroup skb egress: it may be sent from softirq (TCP
    /// acks, retransmission timers) where the current task is unrelated,
    /// and cgroup_skb programs may not call bpf_get_current_pid_tgid /
    /// bpf_get_current_comm anyway; the event carries pid 0 and no comm.
    Packet,
}

/// Counts a denial of capability bit `bit` for target `cgroup_id`, samples
/// it (rate-limited), and returns -EPERM.
#[inline(always)]
pub fn deny(cgroup_id: u64, bit: u32, detail: Detail) -> i32 {
    record(cgroup_id, bit, detail, Origin::Task);
    -EPERM
}

/// A capability check refuses capability bit `bit` for target `s`: counts
/// and samples it (rate-limited) and returns -EPERM, or, when the
/// capability is only audited, counts and samples it as audit and
/// returns 0 (allowed).
#[inline(always)]
pub fn verdict(s: Subject, bit: u32, detail: Detail) -> i32 {
    if audit::refuse(&s, bit, detail, Origin::Task) {
        -EPERM
    } else {
        0
    }
}

/// Counts a real denial and samples it.
#[inline(always)]
pub fn record(cgroup_id: u64, bit: u32, detail: Detail, origin: Origin) {
    record_as(cgroup_id, bit, detail, origin, audit_bits::EVENT_REAL);
}

/// Counts a denial and samples it (at most DENIAL_EVENTS_PER_SEC per
/// target and capability, so a flood of refused packets or calls costs
/// one counter increment each and never floods the ring buffer). `flag`
/// is `audit::EVENT_AUDIT` for a would-be denial in audit mode: its
/// counter and rate window are keyed apart (`DenialKey::_pad` =
/// `audit::KEY_AUDIT`), so audit counts and real denials never mix.
#[inline(always)]
pub fn record_as(cgroup_id: u64, bit: u32, detail: Detail, origin: Origin, flag: u32) {
    // Tripwires count real denials only (a would-be denial in audit mode
    // is not one).
    if flag != audit_bits::EVENT_AUDIT {
        crate::tripwire::denial(cgroup_id, bit);
    }
    let key = DenialKey { cgroup_id, cap: bit, _pad: if flag == audit_bits::EVENT_AUDIT { audit_bits::KEY_AUDIT } else { 0 } };
    match DENIALS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, this CPU's slot only.
        Some(c) => unsafe { *c += 1 },
        None => {
            let _ = DENIALS.insert(key, 1, 0);
        }
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let sample = match DENIAL_RATE.get_ptr_mut(key) {
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
            let _ = DENIAL_RATE.insert(key, RateWindow { window_start_ns: now, events: 1 }, 0);
            true
        }
    };
    if sample {
        if let Some(mut slot) = DENIAL_EVENTS.reserve::<DenialEvent>(0) {
            let mut name = detail.label;
            if detail.name_ptr != 0 {
                // SAFETY: bounded kernel string read into a stack buffer.
                let _ = unsafe { bpf_probe_read_kernel_str_bytes(detail.name_ptr as *const u8, &mut name) };
            }
            let (pid, comm) = match origin {
                Origin::Task => ((bpf_get_current_pid_tgid() >> 32) as u32, bpf_get_current_comm().unwrap_or([0; 16])),
                Origin::Packet => (0, [0; 16]),
            };
            let ev = DenialEvent {
                name,
                cgroup_id,
                time_ns: now,
                pid,
                cap: bit,
                comm,
                family: detail.family,
                port: detail.port,
                addr: detail.addr,
                audit: flag,
                _pad: 0,
            };
            slot.write(ev);
            slot.submit(0);
        }
    }
}

/// The current task's target, if it has any of the capabilities in
/// `mask` revoked or audited ([`verdict`] then tells which).
#[inline(always)]
pub fn revoked(mask: u32) -> Option<Subject> {
    let cfg = targets::config()?;
    if cfg.degraded_targets == 0 && cfg.audited_targets == 0 {
        return None;
    }
    let (id, st) = targets::of_current_with_id(cfg.depth_mask)?;
    let s = Subject::of(id, &st);
    (s.checked() & mask != 0).then_some(s)
}
