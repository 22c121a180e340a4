//! The activity trail (issue 16): what a target did outside itself,
//! recorded by kernel hooks, never by the workload. Two channels carry it
//! to the agent:
//! - [`EVENTS`], a ring buffer of fixed-size [`TrailEvent`]s, one per
//!   discrete event (an exec, a signal to a task outside the target, a file
//!   created/renamed/unlinked/truncated, a listen, an accepted connection, a
//!   refused connect, an escape). When the ring is full the event is dropped
//!   and counted at the target and the event's kind in
//!   [`super::trail_loss::BY_TARGET`] (host-wide in [`LOST`] only when that
//!   map is full): loss is never silent.
//! - [`FLOWS`], per-flow counters aggregated in the kernel (bytes and
//!   packets per target, protocol, destination), and [`FILE_WRITES`], per-file
//!   write counters: high-rate activity costs a map update, not an event.
//!   The agent snapshots them into the trail file (cumulative values) on its
//!   drain tick, at every level change and at stop.
//!
//! Recording is opt-in per target: [`ON`] holds the cgroup ids of targets
//! that record; every hook looks the task's innermost target up and then
//! [`ON`], so a host with no recording target pays one config read
//! ([`TrailConfig::recording`] is 0) per hook.

/// `RingBuf` of [`TrailEvent`]s.
pub const EVENTS: &str = "KP_TRAIL_EVENTS";
/// Byte size of [`EVENTS`] (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// `HashMap<u64, u32>`: target cgroup id → 1 while the target records.
pub const ON: &str = "KP_TRAIL_ON";

/// `Array<TrailConfig>` of one entry: the global switch.
pub const CONFIG: &str = "KP_TRAIL_CONFIG";

/// `PerCpuArray<u64>` indexed by [`kind`] (0..[`kind::COUNT`]): events
/// dropped because [`EVENTS`] was full; at [`LOST_FLOWS`] flows and at
/// [`LOST_FILES`] file-write entries that found their map full. Counted
/// here (host-wide, no target) only when [`super::trail_loss::BY_TARGET`],
/// where such loss is counted per target, is full.
pub const LOST: &str = "KP_TRAIL_LOST";
/// Index in [`LOST`]: a flow update that found [`FLOWS`] full.
pub const LOST_FLOWS: u32 = kind::COUNT;
/// Index in [`LOST`]: a file-write update that found [`FILE_WRITES`] full.
pub const LOST_FILES: u32 = kind::COUNT + 1;
/// Entries of [`LOST`].
pub const LOST_COUNT: u32 = kind::COUNT + 2;

/// `HashMap<FlowKey, FlowValue>` (atomic adds on the value).
pub const FLOWS: &str = "KP_TRAIL_FLOWS";
/// Capacity of [`FLOWS`].
pub const MAX_FLOWS: u32 = 16 * 1024;

/// `HashMap<FileKey, FileValue>`: writes per file (BPF LSM only).
pub const FILE_WRITES: &str = "KP_TRAIL_FILE_WRITES";
/// Capacity of [`FILE_WRITES`].
pub const MAX_FILE_WRITES: u32 = 16 * 1024;

/// Bytes of [`TrailEvent::text`]: a path, or an exec's argv (NUL-separated,
/// truncated; [`TrailEvent::truncated`] says so).
pub const TEXT_BYTES: usize = 512;

/// What happened ([`TrailEvent::kind`]). Numbers are stable: they are
/// written to trail files.
pub mod kind {
    /// A successful exec: text = filename NUL argv[0] NUL argv[1] ...
    /// (read in the kernel at sched_process_exec, before the new program
    /// runs a single instruction), value = argc.
    pub const EXEC: u32 = 0;
    /// A signal sent by a task of the target to a task outside it:
    /// arg = signal number | 1 << 16 when the kernel generated it on the
    /// task's behalf (SEND_SIG_PRIV or a positive si_code: an I/O signal,
    /// a timer), peer = the receiving tgid.
    pub const SIGNAL: u32 = 1;
    /// A connect (TCP) or first datagram (UDP) towards an address:
    /// addr/port/proto; arg = 1 when it was refused by the target's level.
    pub const CONNECT: u32 = 2;
    /// A listening socket: addr/port/proto of the bound address.
    pub const LISTEN: u32 = 3;
    /// A connection accepted on a listening socket: addr/port = the peer.
    pub const ACCEPT: u32 = 4;
    /// A file created (regular file, directory, node): text = path.
    pub const FILE_CREATE: u32 = 5;
    /// A file opened for writing (first write-open per file and task is
    /// an event; the bytes go to [`super::FILE_WRITES`]): text = path.
    pub const FILE_WRITE: u32 = 6;
    /// A file truncated: text = path.
    pub const FILE_TRUNCATE: u32 = 7;
    /// A rename: text = old path NUL new path.
    pub const FILE_RENAME: u32 = 8;
    /// An unlink or rmdir: text = path.
    pub const FILE_UNLINK: u32 = 9;
    /// A task of the target moved its cgroup membership out (an escape
    /// attempt, whether or not it was refused): arg = 1 when refused.
    pub const ESCAPE: u32 = 10;
    /// Number of kinds.
    pub const COUNT: u32 = 11;
}

/// The global switch ([`CONFIG`] entry 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrailConfig {
    /// Number of targets in [`ON`]; 0 = every hook returns at once.
    pub recording: u32,
    /// 1 when file hooks (BPF LSM) are attached and recording.
    pub files: u32,
}

/// One discrete event. Fixed size so the ring reserve is one verifier-known
/// size; unused fields are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrailEvent {
    /// The innermost target's cgroup id.
    pub target: u64,
    /// CLOCK_MONOTONIC ns (bpf_ktime_get_ns) of the event.
    pub time_ns: u64,
    /// Kind-specific count (exec: argc; a transfer: bytes).
    pub value: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// The target's effective level at that moment ([`super::level`]).
    pub level: u32,
    /// Thread group id (what user space calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Kind-specific (signal: number; connect: 1 = refused; escape: 1 = refused).
    pub arg: u32,
    /// Kind-specific: the receiving tgid of a signal.
    pub peer: u32,
    /// IPPROTO_TCP / IPPROTO_UDP / 0.
    pub proto: u16,
    /// AF_INET / AF_INET6 / 0.
    pub family: u16,
    /// Address (IPv4 in `addr[0]`, network byte order as the kernel holds it).
    pub addr: [u32; 4],
    /// Port in host byte order.
    pub port: u16,
    /// 1 when `text` was cut at [`TEXT_BYTES`] (or an argv at the argc cap).
    pub truncated: u8,
    pub _pad: u8,
    /// Bytes of `text` used.
    pub text_len: u32,
    /// The task's comm.
    pub comm: [u8; 16],
    /// A path or argv (see [`kind`]).
    pub text: [u8; TEXT_BYTES],
}

/// Which flow a [`FlowValue`] counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The innermost target's cgroup id.
    pub target: u64,
    /// Remote address (IPv4 in `addr[0]`, network byte order).
    pub addr: [u32; 4],
    /// Remote port, host byte order.
    pub port: u16,
    /// IPPROTO_TCP / IPPROTO_UDP / other IP protocol number.
    pub proto: u8,
    /// 0 = outgoing (the target connected or sent), 1 = incoming (accepted).
    pub direction: u8,
    /// AF_INET / AF_INET6.
    pub family: u16,
    pub _pad: [u8; 2],
}

/// Counters of one flow, updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Bytes sent by the target (egress, at the IP layer: headers included
    /// where the hook sees them; README says which).
    pub bytes: u64,
    /// Packets sent by the target.
    pub packets: u64,
    /// Bytes received by the target.
    pub bytes_in: u64,
    /// Packets received by the target.
    pub packets_in: u64,
    /// CLOCK_MONOTONIC ns of the first packet or connect.
    pub first_ns: u64,
    /// CLOCK_MONOTONIC ns of the latest one.
    pub last_ns: u64,
    /// Packets refused by the target's level (degrade/isolate).
    pub refused: u64,
    /// The target's level when the flow was first seen.
    pub first_level: u32,
    /// The highest level seen on this flow.
    pub max_level: u32,
}

/// Which file a [`FileValue`] counts: by inode, the path is in the
/// FILE_WRITE event that opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The innermost target's cgroup id.
    pub target: u64,
    /// Device number of the inode's superblock (s_dev).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Writes to one file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileValue {
    /// Write calls counted (file_permission MAY_WRITE).
    pub writes: u64,
    /// Bytes asked to be written, when the hook sees them (0 otherwise).
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the first and latest write.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// `Array<TrailOffsets>` of one entry: struct offsets the exec event
/// follows (filled by the agent from the kernel's BTF).
pub const OFFSETS: &str = "KP_TRAIL_OFFSETS";

/// Program names (the agent attaches them at start).
pub mod programs {
    /// raw_tracepoint/signal_generate: signals to tasks outside the target.
    pub const SIGNAL: &str = "kp_trail_signal";
}

/// Offsets of the fields the exec event reads to find the new program's
/// argv: `task_struct.mm`, `mm_struct.arg_start`, `mm_struct.arg_end`;
/// and `linux_binprm.file`, for the identity (device and inode) of the
/// file the kernel really executed, whatever name the workload gave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrailOffsets {
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// 1 when the three offsets above are filled in (else argv is left out).
    pub valid: u32,
    /// `linux_binprm.file`.
    pub bprm_file: u32,
    /// 1 when `bprm_file` is filled in (the rest of the walk uses
    /// [`crate::KernelOffsets`]' fs offsets, valid on their own).
    pub file_valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] u32s.
    unsafe impl aya::Pod for super::TrailOffsets {}
    // SAFETY: plain #[repr(C)] integers and byte arrays; every padding byte
    // is an explicit field, any bit pattern is valid.
    unsafe impl aya::Pod for super::TrailConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrailEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileValue {}
}
