//! `killpath probe`: what the running kernel can enforce, found by loading
//! a tiny program of each type the design needs (never by reading kernel
//! config), plus the cgroup v2 features the hard stop uses.
use std::{fs, path::Path};

use aya::{
    maps::Array,
    programs::{CgroupDevice, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, CgroupSysctl, Lsm, RawTracePoint, SchedClassifier, TracePoint},
    Btf, Ebpf,
};
use killpath_common::{maps, programs, ProbeState};
use serde::{Deserialize, Serialize};

use super::{
    cgroup::{self, Cgroup},
    object::OBJECT,
};

/// One program type and whether the kernel accepts it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramSupport {
    pub program_type: String,
    pub available: bool,
    pub detail: String,
}

/// What the running kernel offers, found by loading tiny programs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelFeatures {
    pub kernel: String,
    pub cgroup2_mount: Option<String>,
    pub cgroup_kill: bool,
    pub cgroup_freeze: bool,
    pub btf: bool,
    /// Contents of /sys/kernel/security/lsm (informational).
    pub active_lsms: Option<String>,
    pub program_types: Vec<ProgramSupport>,
    /// BPF LSM loads, attaches and its hook really ran.
    pub lsm_available: bool,
}

impl KernelFeatures {
    /// Whether a program type loads here.
    pub fn available(&self, program_type: &str) -> bool {
        self.program_types.iter().any(|p| p.program_type == program_type && p.available)
    }
}

fn support(program_type: &str, r: Result<String, String>) -> ProgramSupport {
    match r {
        Ok(detail) => ProgramSupport { program_type: program_type.into(), available: true, detail },
        Err(detail) => ProgramSupport { program_type: program_type.into(), available: false, detail },
    }
}

fn load_ok(what: &str, r: Result<(), aya::programs::ProgramError>) -> Result<String, String> {
    r.map(|()| format!("{what} loaded")).map_err(|e| format!("kernel refused to load {what}: {}", error_chain(&e)))
}

pub use crate::error::chain as error_chain;

macro_rules! prog {
    ($ebpf:expr, $name:expr, $ty:ty) => {{
        let p: Result<&mut $ty, String> = $ebpf
            .program_mut($name)
            .ok_or_else(|| format!("{} missing from the object", $name))
            .and_then(|p| p.try_into().map_err(|e: aya::programs::ProgramError| e.to_string()));
        p
    }};
}

/// Loads, attaches and fires the LSM probe: the hook must really run, since
/// an LSM program can attach where `bpf` is not an active LSM and then
/// never be called.
fn probe_lsm(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<String, String> {
    let btf = btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux): LSM programs need it")?;
    let p = prog!(ebpf, programs::PROBE_LSM, Lsm)?;
    p.load("socket_create", btf).map_err(|e| format!("kernel refused to load an lsm program: {} (BPF LSM is off or locked down)", error_chain(&e)))?;
    let link = p.attach().map_err(|e| format!("lsm program loaded but did not attach: {}", error_chain(&e)))?;
    let mut state: Array<_, ProbeState> = ebpf.map_mut(maps::PROBE).ok_or("probe map missing")?.try_into().map_err(|e: aya::maps::MapError| e.to_string())?;
    state.set(0, ProbeState { tgid: std::process::id(), hits: 0 }, 0).map_err(|e| e.to_string())?;
    // Any socket(2) call passes through security_socket_create.
    let _ = std::net::UdpSocket::bind("127.0.0.1:0");
    let hits = state.get(&0, 0).map(|s| s.hits).unwrap_or(0);
    let p = prog!(ebpf, programs::PROBE_LSM, Lsm)?;
    let _ = p.detach(link);
    if hits > 0 {
        Ok(format!("lsm/socket_create loaded, attached and ran ({hits} hit)"))
    } else {
        Err("lsm program attached but its hook never ran: `bpf` is not in the active LSM list".into())
    }
}

/// Loads a fresh copy of the object and checks that a BPF LSM hook really
/// runs on this kernel. The agent calls it before attaching its LSM hooks.
pub fn lsm_runs() -> Result<String, String> {
    let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("could not load the eBPF object: {}", error_chain(&e)))?;
    let btf = Btf::from_sys_fs().ok();
    probe_lsm(&mut ebpf, btf.as_ref())
}

/// Runs every probe. Needs CAP_BPF/CAP_SYS_ADMIN; without them every
/// program type is reported unavailable with the kernel's error.
pub fn features(cgroup_parent: Option<&Path>) -> KernelFeatures {
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mount = cgroup::cgroup2_mount().ok();
    // The root cgroup has neither cgroup.kill nor cgroup.freeze: look in a
    // scratch child of the agent's cgroup parent (or of the root).
    let (cgroup_kill, cgroup_freeze) = probe_cgroup_files(cgroup_parent.or(mount.as_deref()));
    let btf_obj = Btf::from_sys_fs().ok();
    let active_lsms = fs::read_to_string("/sys/kernel/security/lsm").ok().map(|s| s.trim().to_owned());

    let mut program_types = Vec::new();
    let mut lsm_available = false;
    match Ebpf::load(OBJECT) {
        Err(e) => program_types.push(support("all", Err(format!("could not load the eBPF object: {}", error_chain(&e))))),
        Ok(mut ebpf) => {
            let lsm = probe_lsm(&mut ebpf, btf_obj.as_ref());
            lsm_available = lsm.is_ok();
            program_types.push(support("lsm", lsm));
            program_types.push(support("cgroup_skb", prog!(ebpf, programs::PROBE_CGROUP_SKB, CgroupSkb).and_then(|p| load_ok("cgroup_skb", p.load()))));
            program_types.push(support(
                "cgroup_sock_addr",
                prog!(ebpf, programs::PROBE_SOCK_ADDR, CgroupSockAddr).and_then(|p| load_ok("cgroup_sock_addr/connect4", p.load())),
            ));
            program_types
                .push(support("cgroup_sock", prog!(ebpf, programs::PROBE_SOCK, CgroupSock).and_then(|p| load_ok("cgroup_sock/sock_create", p.load()))));
            // Isolation's own device and setsockopt programs (TUN/vhost
            // opens, AF_XDP set-up): loading them checks the helpers they
            // call are allowed for their types on this kernel.
            program_types.push(support(
                "cgroup_device",
                prog!(ebpf, programs::ISOLATE_DEVICE, CgroupDevice).and_then(|p| load_ok("cgroup_device (isolation's /dev/net/tun guard)", p.load())),
            ));
            program_types.push(support(
                "cgroup_sockopt",
                prog!(ebpf, programs::ISOLATE_SETSOCKOPT, CgroupSockopt)
                    .and_then(|p| load_ok("cgroup_sockopt/setsockopt (isolation's SOL_XDP guard)", p.load())),
            ));
            // Self-protection's sysctl guard (`protect.sysctl`): loading it
            // checks bpf_sysctl_get_name is allowed here (Linux 5.2+).
            program_types.push(support(
                "cgroup_sysctl",
                prog!(ebpf, programs::PROTECT_SYSCTL, CgroupSysctl)
                    .and_then(|p| load_ok("cgroup_sysctl (self-protection's task-limit and usermode-helper guard)", p.load())),
            ));
            program_types.push(support("sched_cls", prog!(ebpf, programs::PROBE_TC, SchedClassifier).and_then(|p| load_ok("sched_cls (tc/tcx)", p.load()))));
            program_types.push(support(
                "raw_tracepoint",
                prog!(ebpf, programs::GUARD_SYS_ENTER, RawTracePoint).and_then(|p| load_ok("raw_tracepoint (stop guard)", p.load())),
            ));
            program_types.push(support("tracepoint", prog!(ebpf, programs::PROBE_TRACEPOINT, TracePoint).and_then(|p| load_ok("tracepoint", p.load()))));
            // BPF trampolines (fentry/fexit): the fs-write class's own hook.
            let (fsw, fsw_fn) = killpath_common::class_hooks::FS_WRITE_FEXITS[0];
            let tracing = match btf_obj.as_ref() {
                None => Err("no kernel BTF: fexit programs need it".to_owned()),
                Some(btf) => prog!(ebpf, fsw, aya::programs::FExit).and_then(|p| load_ok(&format!("fexit/{fsw_fn}"), p.load(fsw_fn, btf))),
            };
            program_types.push(support("tracing", tracing));
            // The dead-man lease's tick itself (agent/deadman.rs).
            let tick =
                prog!(ebpf, killpath_common::deadman::PROGRAM, aya::programs::PerfEvent).and_then(|p| load_ok("perf_event (dead-man lease tick)", p.load()));
            program_types.push(support("perf_event", tick));
        }
    }
    KernelFeatures {
        kernel,
        cgroup2_mount: mount.map(|m| m.display().to_string()),
        cgroup_kill,
        cgroup_freeze,
        btf: btf_obj.is_some(),
        active_lsms,
        program_types,
        lsm_available,
    }
}

fn probe_cgroup_files(parent: Option<&Path>) -> (bool, bool) {
    let Some(parent) = parent else {
        return (false, false);
    };
    let scratch = Cgroup::new(parent.join(format!("killpath-probe-{}", std::process::id())));
    if scratch.create().is_err() {
        return (false, false);
    }
    let r = (scratch.has_kill(), scratch.has_freeze());
    let _ = scratch.remove();
    r
}
