//! Maps shared by all programs. The agent pins the persistent ones under its bpffs
//! directory so that enforcement outlives the agent (fail-static).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use killpath_common::{
    Bucket, ConnectAllow, DenialKey, GuardConfig, KernelOffsets, Member, ProbeState, ProtectedInode, RateWindow, RecentMark, TargetState, ThrottleCounts,
    ThrottleKey, WriteAllow,
};

/// Upper bound on managed targets.
pub const MAX_TARGETS: u32 = 4096;

#[map(name = "KP_TARGETS")]
pub static TARGETS: HashMap<u64, TargetState> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_GUARD_CONFIG")]
pub static GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

#[map(name = "KP_GUARD_KILLS")]
pub static GUARD_KILLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "KP_GUARD_KILLS_BY_TARGET")]
pub static GUARD_KILLS_BY_TARGET: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_TARGETS, 0);

/// See `killpath_common::maps::GUARD_OUTSIDE_KILLED_AT`.
#[map(name = "KP_GUARD_OUTSIDE_KILLED_AT")]
pub static GUARD_OUTSIDE_KILLED_AT: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(killpath_common::counter::COUNT, 0);

#[map(name = "KP_DENIALS")]
pub static DENIALS: PerCpuHashMap<DenialKey, u64> = PerCpuHashMap::with_max_entries(MAX_TARGETS * 4, 0);

// LRU: rate windows of released targets age out instead of filling the map.
#[map(name = "KP_DENIAL_RATE")]
pub static DENIAL_RATE: LruHashMap<DenialKey, RateWindow> = LruHashMap::with_max_entries(MAX_TARGETS * 4, 0);

#[map(name = "KP_DENIAL_EVENTS")]
pub static DENIAL_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

// LPM tries must be created with BPF_F_NO_PREALLOC.
#[map(name = "KP_CONNECT_ALLOW")]
pub static CONNECT_ALLOW: LpmTrie<ConnectAllow, u8> = LpmTrie::with_max_entries(MAX_TARGETS, BPF_F_NO_PREALLOC);

#[map(name = "KP_OFFSETS")]
pub static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

#[map(name = "KP_WRITE_ALLOW")]
pub static WRITE_ALLOW: HashMap<WriteAllow, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_NETDEVS")]
pub static NETDEVS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

#[map(name = "KP_PROBE")]
pub static PROBE: Array<ProbeState> = Array::with_max_entries(1, 0);

#[map(name = "KP_THROTTLE")]
pub static THROTTLE: HashMap<ThrottleKey, Bucket> = HashMap::with_max_entries(MAX_TARGETS * 2, 0);

#[map(name = "KP_THROTTLE_COUNTS")]
pub static THROTTLE_COUNTS: PerCpuHashMap<ThrottleKey, ThrottleCounts> = PerCpuHashMap::with_max_entries(MAX_TARGETS * 2, 0);

#[map(name = "KP_SYSCALL_CLASS")]
pub static SYSCALL_CLASS: Array<u32> = Array::with_max_entries(killpath_common::throttle::MAX_SYSCALL_NR, 0);

#[map(name = "KP_THROTTLE_EVENTS")]
pub static THROTTLE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "KP_IOURING_CLASS")]
pub static IOURING_CLASS: Array<u32> = Array::with_max_entries(killpath_common::throttle::MAX_IOURING_OP, 0);

#[map(name = "KP_IOURING_OPCODE_OFFSET")]
pub static IOURING_OPCODE_OFFSET: Array<u32> = Array::with_max_entries(1, 0);

/// Marked tasks (threads included), as the object declares it: the agent
/// creates the map larger where the kernel can run more tasks at once
/// (`kernel::marks_capacity` in killpath-user). Preallocated: tracing
/// programs on older kernels (6.1) may only use preallocated hash maps.
pub const MAX_MEMBERS: u32 = 65536;

#[map(name = "KP_MEMBERS")]
pub static MEMBERS: HashMap<u32, Member> = HashMap::with_max_entries(MAX_MEMBERS, 0);

#[map(name = "KP_ESCAPES")]
pub static ESCAPES: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_TARGETS, 0);

#[map(name = "KP_ESCAPE_EVENTS")]
pub static ESCAPE_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map(name = "KP_MEMBER_AGENT")]
pub static MEMBER_AGENT: Array<u32> = Array::with_max_entries(1, 0);

/// See `killpath_common::maps::RELEASED`.
#[map(name = "KP_RELEASED")]
pub static RELEASED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// See `killpath_common::maps::MARK_SEQ`.
#[map(name = "KP_MARK_SEQ")]
pub static MARK_SEQ: Array<u64> = Array::with_max_entries(killpath_common::MARK_SEQ_SLOTS, 0);

/// See `killpath_common::maps::MARKS_RECENT`. Preallocated, as the marks
/// (tracing programs on 6.1 may only use preallocated hash maps).
#[map(name = "KP_MARKS_RECENT")]
pub static MARKS_RECENT: HashMap<RecentMark, u32> = HashMap::with_max_entries(killpath_common::MARKS_RECENT_ENTRIES, 0);

/// See `killpath_common::maps::MARKS_RECENT_LOST`.
#[map(name = "KP_MARKS_RECENT_LOST")]
pub static MARKS_RECENT_LOST: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "KP_MEMBER_LOST")]
pub static MEMBER_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "KP_PROTECTED_PIDS")]
pub static PROTECTED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

#[map(name = "KP_PROTECTED_DIRS")]
pub static PROTECTED_DIRS: HashMap<ProtectedInode, u32> = HashMap::with_max_entries(64, 0);

#[map(name = "KP_RAISES")]
pub static RAISES: HashMap<u64, killpath_common::raise::Raise> = HashMap::with_max_entries(MAX_TARGETS, 0);
