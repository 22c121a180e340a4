//! `killpath probe`: what the running kernel can enforce, per level and per
//! capability, from the kernel features `kernel::probe` found (never from
//! reading kernel config). Requests the kernel cannot enforce fail with a
//! clear error elsewhere; this is the report.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    degrade::{self, CapabilityStatus},
    isolate,
    kernel::{
        btf,
        probe::{self, KernelFeatures},
    },
    protect::ProtectionStatus,
};

/// What `probe` found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeReport {
    /// The kernel's features (flattened: the same keys as before the split).
    #[serde(flatten)]
    pub kernel: KernelFeatures,
    /// Per level: what this kernel can enforce, in words.
    pub levels: Vec<LevelSupport>,
    /// Level 2: each capability and whether revoking it is enforceable here.
    pub capabilities: Vec<CapabilityStatus>,
    /// Self-protection (always on for every target where BPF LSM runs):
    /// each protection, on or off here.
    #[serde(default)]
    pub protections: Vec<ProtectionStatus>,
    /// Level 1: the hook that charges each syscall class here and what it
    /// costs the tasks outside every target.
    #[serde(default)]
    pub syscall_class_hooks: serde_json::Value,
    /// The activity trail's file events (BPF LSM only): recorded here or not.
    #[serde(default)]
    pub trail_files: crate::trail::files::FilesStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LevelSupport {
    pub level: String,
    pub enforceable: bool,
    pub detail: String,
}

/// Runs every probe. Needs CAP_BPF/CAP_SYS_ADMIN; without them every
/// program type is reported unavailable with the kernel's error.
pub fn run(cgroup_parent: Option<&Path>) -> ProbeReport {
    let f = probe::features(cgroup_parent);
    let guard = f.available("raw_tracepoint");
    let channels = isolate::catalog(if f.lsm_available { None } else { Some("BPF LSM unavailable on this kernel") }, false);
    let open: Vec<&str> = channels.iter().filter(|c| !c.enforced).map(|c| c.channel.as_str()).collect();
    let cut: Vec<&str> = channels.iter().filter(|c| c.enforced).map(|c| c.channel.as_str()).collect();
    // Cut with a gap where BPF LSM is missing (their `by` says which).
    let partly: Vec<&str> = channels.iter().filter(|c| c.enforced && c.by.contains("OPEN without BPF LSM")).map(|c| c.channel.as_str()).collect();
    let isolate_ok = f.available("cgroup_skb")
        && f.available("cgroup_sock_addr")
        && f.available("cgroup_sock")
        && f.available("cgroup_device")
        && f.available("cgroup_sockopt");
    let mut levels = vec![LevelSupport {
        level: "isolate".into(),
        enforceable: isolate_ok,
        detail: if !isolate_ok {
            "UNAVAILABLE: cgroup skb/sock_addr/sock/device/sockopt programs refused".into()
        } else if open.is_empty() {
            format!("cut: {}", cut.join(", "))
        } else if partly.is_empty() {
            format!("cut: {}; OPEN (needs BPF LSM): {}", cut.join(", "), open.join(", "))
        } else {
            format!("cut: {}; OPEN (needs BPF LSM): {}; partly OPEN (set up before the isolation): {}", cut.join(", "), open.join(", "), partly.join(", "))
        },
    }];
    levels.push(LevelSupport {
        level: "stopped".into(),
        enforceable: f.cgroup2_mount.is_some() && (f.cgroup_kill || f.cgroup_freeze),
        detail: format!(
            "{}; {}; kernel guard {}; stop thread {}",
            if f.cgroup_kill { "cgroup.kill" } else { "no cgroup.kill: per-pid SIGKILL walk of the frozen cgroup" },
            if f.cgroup_freeze { "cgroup.freeze" } else { "no cgroup.freeze" },
            if guard { "on (raw_tracepoint sched_process_fork/sched_switch)" } else { "UNAVAILABLE: raw_tracepoint refused" },
            crate::kernel::priority::stop_class_here(),
        ),
    });
    // Level 1 first in the list: syscall ceilings and what they see of
    // io_uring here (per operation where an io_uring submission
    // tracepoint taking the request and the io_kiocb offset exist).
    let iouring = btf::iouring_submit();
    let class_plan =
        crate::throttle::class_hooks::plan(btf::resolve().members_error.is_none(), f.available("tracing"), crate::throttle::class_hooks::net_events_exist());
    let class_words: Vec<String> = class_plan.iter().map(|(c, h)| format!("{} at {}", crate::throttle::class_name(*c), h.name())).collect();
    levels.insert(
        0,
        LevelSupport {
            level: "throttle".into(),
            enforceable: guard,
            detail: if guard {
                format!(
                    "syscalls: {} (only sys_exit costs every task on the host), paced with SIGSTOP + cgroup.freeze{}; io_uring: {}",
                    class_words.join(", "),
                    if f.cgroup_freeze { "" } else { " (NO cgroup.freeze: SIGSTOP only, which the target's own SIGCONT undoes)" },
                    match &iouring {
                        Ok(i) => format!("each operation charged at {}, SQPOLL rings included", i.tracepoint),
                        Err(e) => format!("per io_uring_enter only, SQPOLL rings NOT counted ({e})"),
                    },
                )
            } else {
                "UNAVAILABLE: raw_tracepoint refused (egress and --tasks ceilings still work)".into()
            },
        },
    );
    levels.push(super::deadman::probe(&f));
    let btf = btf::resolve();
    let lsm = (!f.lsm_available).then(|| "unavailable on this kernel".to_owned());
    // Off unless the probe loaded it (no entry: the object itself did not
    // load, and its entry says why).
    let sysctl = match f.program_types.iter().find(|p| p.program_type == "cgroup_sysctl") {
        Some(p) if p.available => None,
        Some(p) => Some(p.detail.clone()),
        None => Some(f.program_types.first().map_or_else(|| "not probed".to_owned(), |p| p.detail.clone())),
    };
    let protections = crate::protect::statuses(lsm.as_deref(), btf.protect_error.as_deref(), sysctl.as_deref());
    let capabilities = degrade::capabilities(&degrade::KernelGaps {
        lsm: (!f.lsm_available).then(|| "BPF LSM unavailable".to_owned()),
        fs: btf.fs_error,
        signal: btf.signal_error,
    });
    let syscall_class_hooks = crate::throttle::class_hooks::describe(&class_plan, None);
    let files_gap = lsm.as_ref().map(|e| format!("BPF LSM: {e}")).or_else(|| crate::trail::files::resolve_offsets().err().map(|e| format!("kernel BTF: {e}")));
    let trail_files = crate::trail::files::status(files_gap.as_deref());
    ProbeReport { kernel: f, levels, capabilities, protections, syscall_class_hooks, trail_files }
}
