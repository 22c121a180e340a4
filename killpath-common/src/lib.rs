//! Types and names shared by killpath's kernel programs and its agent.
//!
//! Everything here is `#[repr(C)]` and plain data: the same bytes are read by
//! the eBPF programs (no_std, bpfel) and by the agent through aya maps.
#![no_std]

pub mod audit;
pub mod class_hooks;
pub mod compat;
pub mod deadman;
pub mod pace;
pub mod raise;
pub mod trail;
pub mod trail_files;
pub mod trail_loss;
pub mod trail_net;
pub mod tripwire;

/// Enforcement level of a target. Levels are cumulative and ordered.
pub mod level {
    /// Running normally, nothing enforced.
    pub const NORMAL: u32 = 0;
    /// Rate of action capped.
    pub const THROTTLE: u32 = 1;
    /// Capabilities revoked.
    pub const DEGRADE: u32 = 2;
    /// Cut off from everything outside the target.
    pub const ISOLATE: u32 = 3;
    /// Hard-stopped: every task killed, any new task killed by the guard.
    pub const STOPPED: u32 = 4;
}

/// Map names, shared so that the agent and the programs cannot disagree.
pub mod maps {
    /// `HashMap<u64 cgroup id, TargetState>`: every managed target.
    pub const TARGETS: &str = "KP_TARGETS";
    /// `Array<GuardConfig>` with one entry: lets the per-syscall guard exit
    /// on its first instructions when no target is stopped.
    pub const GUARD_CONFIG: &str = "KP_GUARD_CONFIG";
    /// `PerCpuArray<u64>` with one entry: tasks killed by the guard.
    pub const GUARD_KILLS: &str = "KP_GUARD_KILLS";
    /// `PerCpuHashMap<u64, u64>`: tasks killed by the guard per target
    /// cgroup id (the innermost target of the task, or its marked target).
    pub const GUARD_KILLS_BY_TARGET: &str = "KP_GUARD_KILLS_BY_TARGET";
    /// `PerCpuHashMap<u64, u64>`: per target cgroup id, when
    /// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) the guard last killed a task
    /// marked as the target's outside the target's cgroup, on each CPU. A
    /// stop reports its halt no earlier than such a kill after it began: the
    /// task ran user code until then, and the stop's own walk of the marks
    /// no longer sees it.
    pub const GUARD_OUTSIDE_KILLED_AT: &str = "KP_GUARD_OUTSIDE_KILLED_AT";
    /// `PerCpuArray<u64>` indexed by [`super::counter`]: isolation drops and denials.
    pub const COUNTERS: &str = "KP_COUNTERS";
    /// `PerCpuHashMap<DenialKey, u64>`: denials per target and capability.
    pub const DENIALS: &str = "KP_DENIALS";
    /// `HashMap<DenialKey, RateWindow>`: rate limit of sampled denial events.
    pub const DENIAL_RATE: &str = "KP_DENIAL_RATE";
    /// `RingBuf` of [`super::DenialEvent`]: sampled denials for the agent.
    pub const DENIAL_EVENTS: &str = "KP_DENIAL_EVENTS";
    /// `LpmTrie<ConnectAllow, u8>`: `--allow-connect` entries.
    pub const CONNECT_ALLOW: &str = "KP_CONNECT_ALLOW";
    /// `Array<KernelOffsets>` with one entry, filled by the agent from BTF.
    pub const OFFSETS: &str = "KP_OFFSETS";
    /// `HashMap<WriteAllow, u8>`: `--allow-write` directories.
    pub const WRITE_ALLOW: &str = "KP_WRITE_ALLOW";
    /// `HashMap<u32 ifindex, u64 cgroup id>`: host-side network devices
    /// (the veth of a container in its own network namespace) whose traffic
    /// belongs to a target; the TC program cuts it when the target is isolated.
    pub const NETDEVS: &str = "KP_NETDEVS";
    /// `Array<ProbeState>` with one entry: used by `probe` to see an LSM hook fire.
    pub const PROBE: &str = "KP_PROBE";
    /// `HashMap<ThrottleKey, Bucket>`: level-1 token buckets.
    pub const THROTTLE: &str = "KP_THROTTLE";
    /// `PerCpuHashMap<ThrottleKey, ThrottleCounts>`: what each bucket let
    /// through, paced or denied (exact: per-CPU, summed by the agent).
    pub const THROTTLE_COUNTS: &str = "KP_THROTTLE_COUNTS";
    /// `Array<u32>` indexed by x86_64 syscall number: 1 + the syscall's
    /// [`super::throttle`] class, 0 for none. Filled by the agent.
    pub const SYSCALL_CLASS: &str = "KP_SYSCALL_CLASS";
    /// `RingBuf` of [`super::ThrottleEvent`]: tasks paused by a pace
    /// ceiling, for the agent to resume on time.
    pub const THROTTLE_EVENTS: &str = "KP_THROTTLE_EVENTS";
    /// `Array<u32>` indexed by io_uring opcode: 1 + the operation's
    /// [`super::throttle`] class, 0 for none (charged to `all` only).
    /// Filled by the agent.
    pub const IOURING_CLASS: &str = "KP_IOURING_CLASS";
    /// `Array<u32>` with one entry: byte offset of `opcode` in the
    /// kernel's `struct io_kiocb`, from BTF; 0 while unknown (the opcode is
    /// never the struct's first member), and then nothing is charged.
    pub const IOURING_OPCODE_OFFSET: &str = "KP_IOURING_OPCODE_OFFSET";
    /// `HashMap<u32 task id, Member>`: the target each task belongs to,
    /// wherever it now sits (membership follows the task).
    pub const MEMBERS: &str = "KP_MEMBERS";
    /// `PerCpuHashMap<u64 target cgroup id, u64>`: escape attempts (a
    /// marked task that left its target's subtree) per target.
    pub const ESCAPES: &str = "KP_ESCAPES";
    /// `RingBuf` of [`super::EscapeEvent`]: each escape attempt, for the
    /// agent to journal, alert and revert.
    pub const ESCAPE_EVENTS: &str = "KP_ESCAPE_EVENTS";
    /// `PerCpuArray<u64>` with one entry: marks the kernel could not
    /// record (the members map was full).
    pub const MEMBER_LOST: &str = "KP_MEMBER_LOST";
    /// `Array<u32>` with one entry: the agent's tgid. Its own moves (adopt
    /// --pid of a task of another target) re-mark the task instead of
    /// counting as an escape.
    pub const MEMBER_AGENT: &str = "KP_MEMBER_AGENT";
    /// `HashMap<u64, u64>`: a released nested target's cgroup id → its heir,
    /// the enclosing target its tasks' marks were handed to. A mark of the
    /// released target that the hand-over missed (set by a hook while it
    /// ran) is the heir's.
    pub const RELEASED: &str = "KP_RELEASED";
    /// `Array<u64>` of [`super::MARK_SEQ_SLOTS`] counters: the kernel adds
    /// to slot [`super::mark_seq_slot`]`(target)` before and after every
    /// mark it writes naming `target` (never on a removal), so a reader who
    /// sees a target's slot unchanged across a read of every mark knows no
    /// mark of it was written meanwhile (a stop's check after the cgroup
    /// empties, `stop::marks`). Slots are shared between targets: a change
    /// may be another target's, which only costs that reader a walk.
    pub const MARK_SEQ: &str = "KP_MARK_SEQ";
    /// `HashMap<`[`super::RecentMark`]`, u32 tgid>`: the log of mark
    /// writes. After every mark written to `KP_MEMBERS` (by a kernel hook
    /// or by the agent), its (target, task) pair is added here, until the
    /// agent drains it (`BPF_MAP_LOOKUP_AND_DELETE_BATCH`) into its index
    /// of every mark (`kernel::mark_index` in killpath-user), so that a
    /// stop finds its target's marks without reading every mark on the
    /// host. Keyed by the pair, not the task: two writes of one task's mark
    /// naming different targets are two entries.
    pub const MARKS_RECENT: &str = "KP_MARKS_RECENT";
    /// `Array<u64>` with one entry: pairs that could not be added to
    /// `KP_MARKS_RECENT` (full). While it has not moved, the log is whole.
    pub const MARKS_RECENT_LOST: &str = "KP_MARKS_RECENT_LOST";
    /// `HashMap<u32 tgid, u32>`: killpath's own processes (the agent),
    /// which no task inside a target may signal or ptrace.
    pub const PROTECTED_PIDS: &str = "KP_PROTECTED_PIDS";
    /// `HashMap<ProtectedInode, u32>`: killpath's pin and state
    /// directories, below which no task inside a target may write.
    pub const PROTECTED_DIRS: &str = "KP_PROTECTED_DIRS";
    /// `HashMap<u64 cgroup id, Raise>`: levels the kernel raised on its
    /// own (see [`super::raise`]), until the agent adopts them.
    pub const RAISES: &str = "KP_RAISES";
}

/// Program names as they appear in the eBPF object.
pub mod programs {
    /// raw_tracepoint/sys_exit variant of the guard. Not attached (it
    /// would cost every syscall on the host); `probe` loads it to check
    /// that raw tracepoints load.
    pub const GUARD_SYS_ENTER: &str = "kp_guard_sys_enter";
    /// raw_tracepoint/sched_process_fork: kills a stopped target's task that forks.
    pub const GUARD_FORK: &str = "kp_guard_fork";
    /// raw_tracepoint/sched_switch: kills a stopped target's task when it
    /// leaves the CPU, so a pure CPU loop without syscalls is caught too.
    pub const GUARD_SWITCH: &str = "kp_guard_switch";
    /// Level 3, per-target cgroup hooks (attached to each target's cgroup).
    pub const ISOLATE_SKB: &str = "kp_isolate_skb";
    /// cgroup_skb/egress: isolation plus the level-1 egress byte/packet
    /// policer (loaded with the egress attach type, so it may return the
    /// congestion-notification verdicts 2 and 3).
    pub const EGRESS_SKB: &str = "kp_egress_skb";
    /// Level 1: raw_tracepoint/sys_exit syscall pacing. Attached only
    /// while some target has a syscall ceiling.
    pub const THROTTLE_SYS_EXIT: &str = "kp_throttle_sys_exit";
    /// Level 1: raw_tracepoint/io_uring_submit_req (io_uring_submit_sqe on 5.19–6.2): charges
    /// every io_uring operation at submission, SQPOLL rings included.
    /// Attached with the sys_exit hook.
    pub const THROTTLE_IO_URING: &str = "kp_throttle_io_uring";
    pub const ISOLATE_CONNECT4: &str = "kp_isolate_connect4";
    pub const ISOLATE_CONNECT6: &str = "kp_isolate_connect6";
    pub const ISOLATE_SENDMSG4: &str = "kp_isolate_sendmsg4";
    pub const ISOLATE_SENDMSG6: &str = "kp_isolate_sendmsg6";
    pub const ISOLATE_SOCK_CREATE: &str = "kp_isolate_sock_create";
    /// Level 3 at TC (TCX where available) on a target's host-side veth.
    pub const ISOLATE_TC: &str = "kp_isolate_tc";
    /// Level 3, host-wide BPF LSM hooks (attached once where BPF LSM is on).
    pub const ISOLATE_LSM_SOCKET_CREATE: &str = "kp_isolate_lsm_socket_create";
    pub const ISOLATE_LSM_SOCKET_CONNECT: &str = "kp_isolate_lsm_socket_connect";
    pub const ISOLATE_LSM_SOCKET_SENDMSG: &str = "kp_isolate_lsm_socket_sendmsg";
    pub const ISOLATE_LSM_SOCKET_RECVMSG: &str = "kp_isolate_lsm_socket_recvmsg";
    /// Level 3, per-target cgroup device hook: no /dev/net/tun,
    /// /dev/vhost-net or /dev/vhost-vsock open or mknod while isolated.
    pub const ISOLATE_DEVICE: &str = "kp_isolate_device";
    /// Level 3, per-target cgroup setsockopt hook: no SOL_XDP option (no
    /// UMEM, no rings: no AF_XDP socket set up) while isolated.
    pub const ISOLATE_SETSOCKOPT: &str = "kp_isolate_setsockopt";
    /// Self-protection, per-target cgroup sysctl hook: no write to the
    /// task limits or the kernel's usermode helpers from inside a target.
    pub const PROTECT_SYSCTL: &str = "kp_protect_sysctl";
    /// Level 3, host-wide BPF LSM hooks on TUN/TAP: no device created,
    /// opened or attached by an isolated target.
    pub const ISOLATE_LSM_TUN: &[(&str, &str)] = &[
        ("kp_isolate_lsm_tun_dev_create", "tun_dev_create"),
        ("kp_isolate_lsm_tun_dev_open", "tun_dev_open"),
        ("kp_isolate_lsm_tun_dev_attach", "tun_dev_attach"),
        ("kp_isolate_lsm_tun_dev_attach_queue", "tun_dev_attach_queue"),
    ];
    /// Level 2, host-wide BPF LSM hooks (one per capability hook).
    pub const DEGRADE_LSM: &[(&str, &str)] = &[
        ("kp_degrade_socket_listen", "socket_listen"),
        ("kp_degrade_bprm_check", "bprm_check_security"),
        ("kp_degrade_task_alloc", "task_alloc"),
        ("kp_degrade_ptrace_access", "ptrace_access_check"),
        ("kp_degrade_ptrace_traceme", "ptrace_traceme"),
        ("kp_degrade_sb_mount", "sb_mount"),
        ("kp_degrade_move_mount", "move_mount"),
        ("kp_degrade_sb_umount", "sb_umount"),
        ("kp_degrade_bpf", "bpf"),
        ("kp_degrade_module_request", "kernel_module_request"),
        ("kp_degrade_load_data", "kernel_load_data"),
        ("kp_degrade_read_file", "kernel_read_file"),
        ("kp_degrade_setuid", "task_fix_setuid"),
        ("kp_degrade_setgid", "task_fix_setgid"),
        ("kp_degrade_file_open", "file_open"),
        ("kp_degrade_path_truncate", "path_truncate"),
        ("kp_degrade_path_unlink", "path_unlink"),
        ("kp_degrade_path_mkdir", "path_mkdir"),
        ("kp_degrade_path_rmdir", "path_rmdir"),
        ("kp_degrade_path_rename", "path_rename"),
        ("kp_degrade_path_link", "path_link"),
        ("kp_degrade_path_symlink", "path_symlink"),
        ("kp_degrade_path_mknod", "path_mknod"),
        ("kp_degrade_path_chmod", "path_chmod"),
        ("kp_degrade_path_chown", "path_chown"),
        ("kp_degrade_task_kill", "task_kill"),
    ];
    /// Self-protection: host-wide BPF LSM hooks that refuse, for every task
    /// inside any target at any level, what would let it step out of the
    /// kill path (see [`super::protect`]).
    pub const PROTECT_LSM: &[(&str, &str)] = &[
        ("kp_protect_inode_permission", "inode_permission"),
        ("kp_protect_file_permission", "file_permission"),
        ("kp_protect_bpf", "bpf"),
        ("kp_protect_task_kill", "task_kill"),
        ("kp_protect_ptrace_access", "ptrace_access_check"),
        ("kp_protect_file_open", "file_open"),
        ("kp_protect_path_unlink", "path_unlink"),
        ("kp_protect_path_rmdir", "path_rmdir"),
        ("kp_protect_path_rename", "path_rename"),
        ("kp_protect_path_truncate", "path_truncate"),
        ("kp_protect_path_link", "path_link"),
        ("kp_protect_path_symlink", "path_symlink"),
        ("kp_protect_path_mknod", "path_mknod"),
        ("kp_protect_path_mkdir", "path_mkdir"),
        ("kp_protect_path_chmod", "path_chmod"),
        ("kp_protect_path_chown", "path_chown"),
        ("kp_protect_sb_mount", "sb_mount"),
        ("kp_protect_move_mount", "move_mount"),
        ("kp_protect_sb_umount", "sb_umount"),
    ];
    /// Tiny programs `probe` loads to learn what the kernel accepts.
    pub const PROBE_LSM: &str = "kp_probe_lsm";
    pub const PROBE_CGROUP_SKB: &str = "kp_probe_cgroup_skb";
    pub const PROBE_SOCK_ADDR: &str = "kp_probe_sock_addr";
    pub const PROBE_SOCK: &str = "kp_probe_sock";
    pub const PROBE_TC: &str = "kp_probe_tc";
    pub const PROBE_TRACEPOINT: &str = "kp_probe_tracepoint";
    /// raw_tracepoint/cgroup_attach_task: marks a task entering a target,
    /// catches a marked task leaving its target's subtree.
    pub const MEMBER_ATTACH: &str = "kp_member_attach";
    /// raw_tracepoint/sched_process_fork: the child inherits its parent's
    /// mark; catches clone3(CLONE_INTO_CGROUP) out of the subtree.
    pub const MEMBER_FORK: &str = "kp_member_fork";
    /// raw_tracepoint/sched_process_exit: drops the exiting task's mark.
    pub const MEMBER_EXIT: &str = "kp_member_exit";
}

/// Indexes of the `KP_COUNTERS` per-CPU array.
pub mod counter {
    /// Packets dropped on a cgroup skb hook of an isolated target.
    pub const ISOLATE_SKB_DROPS: u32 = 0;
    /// connect/sendmsg refused on a cgroup sock_addr hook.
    pub const ISOLATE_ADDR_DENIALS: u32 = 1;
    /// raw socket creation refused on the cgroup sock hook.
    pub const ISOLATE_SOCK_DENIALS: u32 = 2;
    /// Socket operations refused by a BPF LSM hook.
    pub const ISOLATE_LSM_DENIALS: u32 = 3;
    /// Packets dropped at TC on a target's network device.
    pub const ISOLATE_TC_DROPS: u32 = 4;
    /// /dev/net/tun, /dev/vhost-net, /dev/vhost-vsock opens or mknods
    /// refused on the cgroup device hook.
    pub const ISOLATE_DEVICE_DENIALS: u32 = 5;
    /// SOL_XDP options (AF_XDP setup) refused on the cgroup setsockopt hook.
    pub const ISOLATE_SOCKOPT_DENIALS: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
}

/// Deepest cgroup nesting level (root = 0) at which a target may sit. The
/// guard walks the current task's ancestors only at depths in use.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Per-target state, keyed by the target's cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetState {
    /// One of [`level`].
    pub level: u32,
    /// Nesting depth of the target's cgroup (root = 0).
    pub depth: u32,
    /// Revoked capabilities, a set of [`cap`] bits (level 2, degrade).
    pub revoked: u32,
    /// What runs in audit mode (counted like a refusal, not refused):
    /// [`audit`] bits.
    pub audit: u32,
}

/// Capabilities that `degrade` can revoke, one bit each.
pub mod cap {
    pub const NET_CONNECT: u32 = 1 << 0;
    pub const NET_LISTEN: u32 = 1 << 1;
    pub const NET_RAW: u32 = 1 << 2;
    pub const NET_UNIX: u32 = 1 << 3;
    pub const FS_WRITE: u32 = 1 << 4;
    pub const EXEC: u32 = 1 << 5;
    pub const FORK: u32 = 1 << 6;
    pub const SIGNAL: u32 = 1 << 7;
    pub const PTRACE: u32 = 1 << 8;
    pub const MOUNT: u32 = 1 << 9;
    pub const BPF: u32 = 1 << 10;
    pub const MODULE: u32 = 1 << 11;
    pub const SETID: u32 = 1 << 12;
    /// Number of capabilities (bits 0..COUNT).
    pub const COUNT: u32 = 13;
}

/// Self-protections (always on for every task inside a target where BPF
/// LSM runs). Their refusals are counted in `KP_DENIALS` and sampled into
/// `KP_DENIAL_EVENTS` like capability denials, at index `FIRST + n`.
pub mod protect {
    /// Writes to cgroupfs outside the task's target subtree (cgroup.procs,
    /// cgroup.threads, and clone3(CLONE_INTO_CGROUP) through the same check).
    pub const CGROUP_WRITE: u32 = 0;
    /// bpf(2).
    pub const BPF: u32 = 1;
    /// Signals to killpath's processes.
    pub const SIGNAL: u32 = 2;
    /// ptrace (and /proc/PID/mem, process_vm_*, pidfd_getfd) of killpath's processes.
    pub const PTRACE: u32 = 3;
    /// Writes, unlinks, renames below killpath's pin and state directories.
    pub const FILES: u32 = 4;
    /// Mounts onto, and unmounts of, cgroupfs and bpffs.
    pub const MOUNT: u32 = 5;
    /// Writes to `kernel.pid_max` and `kernel.threads-max` (the limits the
    /// membership map is sized from) and to the usermode helpers the kernel
    /// runs outside every target (`kernel.core_pattern`, `modprobe`, ...).
    /// A cgroup sysctl program: no BPF LSM needed.
    pub const SYSCTL: u32 = 6;
    /// Number of protections.
    pub const COUNT: u32 = 7;
    /// Denial-counter index of protection 0 (capabilities use 0..cap::COUNT).
    pub const FIRST: u32 = 16;
    /// Names, in index order.
    pub const NAMES: [&str; COUNT as usize] =
        ["protect.cgroup-write", "protect.bpf", "protect.signal", "protect.ptrace", "protect.files", "protect.mount", "protect.sysctl"];
}

/// Key of `KP_PROTECTED_DIRS`: a directory by device and inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectedInode {
    /// The kernel's dev_t of the directory's super block (MKDEV(major, minor)).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Key of the per-target, per-capability denial counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenialKey {
    pub cgroup_id: u64,
    /// Bit index of the capability (0..cap::COUNT).
    pub cap: u32,
    pub _pad: u32,
}

/// Fixed-window rate limit state for sampled denial events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window_start_ns: u64,
    pub events: u64,
}

/// Sampled denial events per (target, capability) per second.
pub const DENIAL_EVENTS_PER_SEC: u64 = 20;

/// A sampled denial, sent to the agent through the `KP_DENIAL_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenialEvent {
    pub cgroup_id: u64,
    pub time_ns: u64,
    pub pid: u32,
    /// Bit index of the capability.
    pub cap: u32,
    pub comm: [u8; 16],
    /// Address family (connects), 0 otherwise.
    pub family: u32,
    /// Destination port, host order (connects).
    pub port: u32,
    /// Destination address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// What was refused, when it has a name: the file (last path
    /// component) for fs.write, the program for exec. NUL-padded.
    pub name: [u8; 32],
    /// [`audit::EVENT_AUDIT`]: a would-be denial in audit mode (the
    /// operation was allowed); [`audit::EVENT_REAL`] otherwise.
    pub audit: u32,
    pub _pad: u32,
}

/// Key of the connect allow-list LPM trie: the target, then the port
/// (0 = any port), then the address as 16 bytes (IPv4 mapped into
/// ::ffff:a.b.c.d). The LPM prefix covers cgroup id + port + address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectAllow {
    /// The target's cgroup id in native byte order, as bytes: keeps the
    /// struct 2-byte aligned so that it follows the LPM key's u32
    /// prefix length without padding, as the kernel requires.
    pub cgroup_id: [u8; 8],
    /// Network byte order, as the sock_addr context gives it.
    pub port_be: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

/// Kernel struct field offsets, read by the agent from the running
/// kernel's BTF (/sys/kernel/btf/vmlinux) and handed to the programs that
/// must follow kernel pointers (fs.write, signal). Rust eBPF has no CO-RE
/// relocations, so this is how the same object works on 6.1 and 6.18.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when every fs.write offset below is filled in.
    pub fs_valid: u32,
    pub file_f_mode: u32,
    pub file_f_path: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_mode: u32,
    pub sb_s_dev: u32,
    /// 1 when every signal offset below is filled in.
    pub signal_valid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// dentry.d_name (struct qstr) and qstr.name: the name of a denied file.
    pub dentry_d_name: u32,
    pub qstr_name: u32,
    /// linux_binprm.filename: the program a denied exec named.
    pub bprm_filename: u32,
    /// 1 when the three name offsets above are filled in.
    pub names_valid: u32,
    /// task_struct.pid and task_struct.tgid: the task a membership hook
    /// is handed (attach, fork) by pointer.
    pub task_pid: u32,
    pub task_tgid: u32,
    /// 1 when the signal offsets, the two task offsets above and the three
    /// below are filled in: membership tracking needs all of them.
    pub members_valid: u32,
    /// task_struct.signal and signal_struct.live (an atomic_t): whether a
    /// thread group still has a live thread when one of its tasks exits.
    pub task_signal: u32,
    pub signal_live: u32,
    /// task_struct.flags: PF_EXITING, a task the cgroup migration skips.
    pub task_flags: u32,
    /// Self-protection: inode.i_private (a kernfs inode's kernfs_node),
    /// kernfs_node.parent (`__parent` since 6.15), super_block.s_magic,
    /// vfsmount.mnt_sb (task_struct.tgid is `task_tgid` above).
    pub inode_i_private: u32,
    pub kernfs_node_parent: u32,
    pub sb_s_magic: u32,
    pub vfsmount_mnt_sb: u32,
    /// 1 when the self-protection offsets above (and fs/signal's) are filled in.
    pub protect_valid: u32,
    /// inode.i_rdev: isolation's file_permission check of a TUN fd
    /// (resolved with the self-protection offsets, valid with them).
    pub inode_i_rdev: u32,
    /// task_struct.thread_info + thread_info.status: TS_COMPAT there marks a
    /// 32-bit syscall (see [`compat`]).
    pub task_ti_status: u32,
    /// 1 when `task_ti_status` is filled in.
    pub compat_valid: u32,
}

/// A task's membership: the target it entered (by `run`, `adopt`, a move
/// into the target's subtree, or a fork from a member), kept wherever the
/// task moves afterwards. Keyed by task id in `KP_MEMBERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The target's cgroup id.
    pub target: u64,
    /// Thread group (process) id of the task: what stop signals.
    pub tgid: u32,
    /// Escape attempts by this task.
    pub escapes: u32,
}

/// A key of `KP_MARKS_RECENT` (see [`maps::MARKS_RECENT`]): a mark of task
/// `tid` naming `target` was written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecentMark {
    /// The target's cgroup id.
    pub target: u64,
    /// The marked task.
    pub tid: u32,
    pub _pad: u32,
}

/// Entries of `KP_MARKS_RECENT`: the agent drains it every 200 ms, so it
/// holds ~40,000 mark writes a second before one is lost (then the agent
/// reads every mark again).
pub const MARKS_RECENT_ENTRIES: u32 = 8192;

/// Slots of `KP_MARK_SEQ` (see [`maps::MARK_SEQ`]).
pub const MARK_SEQ_SLOTS: u32 = 4096;

/// The `KP_MARK_SEQ` slot of target `target` (its cgroup id).
#[inline(always)]
pub const fn mark_seq_slot(target: u64) -> u32 {
    (target % MARK_SEQ_SLOTS as u64) as u32
}

/// How a marked task left its target's subtree ([`EscapeEvent::kind`]).
pub mod escape {
    /// A write to some `cgroup.procs`/`cgroup.threads` outside the subtree.
    pub const ATTACH: u32 = 0;
    /// A member's child born outside the subtree: clone3(CLONE_INTO_CGROUP)
    /// with an outside cgroup, or a fork by a member that is outside.
    pub const BORN_OUTSIDE: u32 = 1;
    /// [`super::EscapeEvent::action`]: left to the agent (move it back, or
    /// kill it for isolated/stopped targets) and to the stop guard.
    pub const ACTION_AGENT: u32 = 0;
    /// [`super::EscapeEvent::action`]: killed in the kernel (the escaping
    /// task was the current one) because its target is isolated or stopped.
    pub const ACTION_KILLED: u32 = 1;
}

/// An escape attempt, sent to the agent through `KP_ESCAPE_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EscapeEvent {
    /// The target the task belongs to.
    pub target: u64,
    /// Cgroup id the task went to.
    pub dst_cgroup: u64,
    pub time_ns: u64,
    /// The escaping task and its process.
    pub pid: u32,
    pub tgid: u32,
    /// The process that made the move (the writer, or the clone3 parent).
    pub by_tgid: u32,
    /// One of [`escape`]: ATTACH or BORN_OUTSIDE.
    pub kind: u32,
    /// The target's level when it happened.
    pub level: u32,
    /// [`escape::ACTION_AGENT`] or [`escape::ACTION_KILLED`].
    pub action: u32,
}

/// Key of the `--allow-write` map: a directory (by device and inode) below
/// which a target may still write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteAllow {
    pub cgroup_id: u64,
    /// The kernel's dev_t of the directory's super block (MKDEV(major, minor)).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Prefix bits of [`ConnectAllow`] before the address (cgroup id, port, pad).
pub const CONNECT_ALLOW_FIXED_BITS: u32 = 64 + 16 + 16;

/// Global switches read first by every hot-path program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// Number of targets at level STOPPED. Zero: the guard returns at once.
    pub stopped_targets: u32,
    /// Bit d set: some target sits at cgroup depth d.
    pub depth_mask: u32,
    /// Number of targets at level ISOLATE or above. Zero: the host-wide LSM
    /// socket hooks return at once.
    pub isolated_targets: u32,
    /// Number of targets with any revoked capability. Zero (and nothing
    /// isolated): every degrade hook returns at once.
    pub degraded_targets: u32,
    /// Number of targets with a syscall ceiling. Zero: the sys_exit
    /// throttle returns at once (and is detached besides).
    pub syscall_throttled: u32,
    /// Number of targets with an egress ceiling. Zero: the egress policer
    /// is skipped.
    pub egress_throttled: u32,
    /// Bit d set: some throttled target sits at cgroup depth d.
    pub throttle_depth_mask: u32,
    /// Number of targets with something in audit mode.
    pub audited_targets: u32,
    /// How many of `isolated_targets`, `stopped_targets` and
    /// `degraded_targets` are armed rather than in force: a target the
    /// kernel may raise on its own (a critical tripwire, a lease; see
    /// [`raise`]) is counted in advance, so the hooks already look it up
    /// when the kernel raises it and only the agent ever writes this map.
    /// Kept so that every writer (the agent, the no-agent stop) preserves them.
    pub armed_isolate: u32,
    pub armed_stop: u32,
    pub armed_degrade: u32,
    /// Number of targets with an armed tripwire rule counted in the kernel.
    /// Zero: the tripwire counting in every hook returns at once.
    pub tripwire_targets: u32,
    /// Number of targets with a dead-man lease. Zero: no hook reads a deadline.
    pub leased_targets: u32,
}

/// Level 1, throttle: bucket classes and modes.
pub mod throttle {
    /// Syscall classes (a syscall belongs to at most one, plus ALL).
    pub const NET: u32 = 0;
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const FS_WRITE: u32 = 3;
    pub const ALL: u32 = 4;
    /// Number of syscall classes.
    pub const SYSCALL_CLASSES: u32 = 5;
    /// Egress buckets (cgroup skb egress, and TC ingress on a `--netdev`).
    pub const EGRESS_BYTES: u32 = 5;
    pub const EGRESS_PACKETS: u32 = 6;
    /// The same ceilings at TC on a `--netdev` device, as buckets of their
    /// own: a packet of a target's socket passes both the cgroup hook and
    /// the veth, and one shared bucket would charge it twice.
    pub const EGRESS_BYTES_TC: u32 = 7;
    pub const EGRESS_PACKETS_TC: u32 = 8;
    /// Number of bucket classes.
    pub const COUNT: u32 = 9;
    /// Over-budget syscalls still run; the task is paused until its
    /// bucket has room again.
    pub const MODE_PACE: u32 = 0;
    /// Over-budget operations fail with EAGAIN (where a hook can fail them).
    pub const MODE_DENY: u32 = 1;
    /// Size of the syscall-class table (x86_64 syscall numbers).
    pub const MAX_SYSCALL_NR: u32 = 512;
    /// Size of the io_uring opcode-class table (opcodes are a u8).
    pub const MAX_IOURING_OP: u32 = 256;
}

/// Key of a level-1 token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    pub cgroup_id: u64,
    /// One of the [`throttle`] classes.
    pub class: u32,
    pub _pad: u32,
}

/// A token bucket kept as GCRA state (theoretical arrival time), so the
/// kernel updates it with one atomic add and no lock: an operation of `n`
/// units moves `tat_ns` forward by `n * cost_ps / 1000`; it is over budget
/// when `tat_ns` runs more than `tau_ns` (the burst) ahead of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Picoseconds of budget one unit costs: 10^12 / ceiling per second.
    pub cost_ps: u64,
    /// Burst tolerance in nanoseconds (burst units × cost).
    pub tau_ns: u64,
    /// Theoretical arrival time, CLOCK_MONOTONIC ns.
    pub tat_ns: u64,
    /// [`throttle::MODE_PACE`] or [`throttle::MODE_DENY`].
    pub mode: u32,
    pub _pad: u32,
}

/// Per-CPU counts of one bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleCounts {
    /// Units let through within budget (syscalls, bytes or packets).
    pub passed: u64,
    /// Operations that crossed the ceiling and paused their task (pace),
    /// or packets passed with a congestion notification (egress).
    pub paced: u64,
    /// Operations refused (deny mode) or packets dropped (egress).
    pub denied: u64,
}

/// A task paused by a pace ceiling: the agent resumes it at `resume_at_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleEvent {
    /// The throttled target's cgroup id.
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC ns at which the bucket has room again (half a burst:
    /// [`pace::resume_at`]).
    pub resume_at_ns: u64,
    pub tgid: u32,
    pub class: u32,
}

/// Written by the agent before a probe, read back after it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeState {
    /// tgid whose hook invocations are counted.
    pub tgid: u32,
    /// Number of times the LSM probe hook ran for `tgid`.
    pub hits: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::TargetState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenialKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenialEvent {}
    // SAFETY: as above (u16 pad keeps it explicit).
    unsafe impl aya::Pod for super::ConnectAllow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WriteAllow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThrottleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThrottleCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThrottleEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Member {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RecentMark {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EscapeEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProtectedInode {}
}
