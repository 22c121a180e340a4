//! Level 1, throttle, as the agent and CLI see it: ceilings, their
//! validation, the syscall classes, and the token buckets they become.
//!
//! Mechanism (see also killpath-ebpf/src/throttle/): each ceiling is a
//! GCRA token bucket in a pinned map. GCRA keeps one timestamp per bucket
//! (the "theoretical arrival time"); charging is one atomic add in the
//! kernel, and the average admitted rate is exactly the ceiling over any
//! window longer than the burst, whatever the number of CPUs or tasks.
//!
//! - here: ceilings, classes, and the buckets they become.
//! - [`maps`]: the buckets and counts in the kernel; [`hook`]: the sys_exit
//!   hook, attached only while a syscall ceiling exists; [`pacer`]: resumes
//!   paced tasks; [`tasks`]: `--tasks` through the pids controller.
pub mod class_hooks;
pub mod hook;
pub mod maps;
pub mod pacer;
pub mod tasks;

use std::collections::BTreeMap;

use killpath_common::{throttle as class, Bucket};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Lowest and highest ceilings for syscalls and packets, per second.
pub const MIN_RATE: u64 = 10;
pub const MAX_RATE: u64 = 1_000_000;
/// Egress byte ceilings, per second (10 B/s to 10 GB/s).
pub const MIN_BYTES: u64 = 10;
pub const MAX_BYTES: u64 = 10_000_000_000;
/// Burst: this much time's worth of the ceiling may pass at once.
pub const BURST_NS: u64 = 100_000_000;
/// Largest skb the egress policer must be able to pass within one burst
/// (a 64 KiB GSO/TSO segment on loopback, and 45 wire packets for it).
const MAX_SKB_BYTES: u64 = 65_536;
const MAX_SKB_SEGS: u64 = 64;

/// Syscall classes by name, as `--syscall-class CLASS=N/s` spells them.
pub const SYSCALL_CLASSES: &[(&str, u32)] =
    &[("net", class::NET), ("exec", class::EXEC), ("fork", class::FORK), ("fs-write", class::FS_WRITE), ("all", class::ALL)];

/// x86_64 syscall numbers of each class (`all` is every syscall).
/// net: the calls that reach another host (connect, sendto, sendmsg,
/// sendmmsg). fs-write: the calls that change file contents or the
/// namespace.
#[cfg(target_arch = "x86_64")]
const SYSCALL_TABLE: &[(u32, &[u32])] = &[
    (class::NET, &[42, 44, 46, 307]),
    (class::EXEC, &[59, 322]),
    (class::FORK, &[56, 57, 58, 435]),
    (class::FS_WRITE, &[1, 18, 20, 296, 328, 76, 77, 285, 82, 264, 316, 87, 263, 83, 258, 84, 85, 86, 265, 88, 266, 326]),
];

/// The same classes by i386 syscall number (arch/x86/entry/syscalls/
/// syscall_32.tbl), for 32-bit syscalls (`int 0x80`) on x86_64 (see
/// `killpath_common::compat`): truncate64/ftruncate64 are fs-write too;
/// socketcall (102) is classed by its call number in the hook.
#[cfg(target_arch = "x86_64")]
const SYSCALL_TABLE_IA32: &[(u32, &[u32])] = &[
    (class::NET, &[362, 369, 370, 345]),
    (class::EXEC, &[11, 358]),
    (class::FORK, &[2, 190, 120, 435]),
    (class::FS_WRITE, &[4, 181, 146, 334, 379, 92, 93, 193, 194, 324, 38, 302, 353, 10, 301, 39, 296, 40, 8, 9, 303, 83, 304, 377]),
];

/// The `KP_SYSCALL_CLASS_IA32` table: entry `nr` is 1 + class.
#[cfg(target_arch = "x86_64")]
pub fn syscall_class_table_ia32() -> Vec<(u32, u32)> {
    SYSCALL_TABLE_IA32.iter().flat_map(|(c, nrs)| nrs.iter().map(move |nr| (*nr, c + 1))).collect()
}

/// io_uring opcodes (include/uapi/linux/io_uring.h) of each class, chosen
/// to match the syscalls of the same class: net is what reaches another
/// host (SENDMSG 9, CONNECT 16, SEND 26, SEND_ZC 47, SENDMSG_ZC 48);
/// fs-write is what changes file contents or the namespace (WRITEV 2,
/// WRITE_FIXED 5, FALLOCATE 17, WRITE 23, RENAMEAT 35, UNLINKAT 36,
/// MKDIRAT 37, SYMLINKAT 38, LINKAT 39, FTRUNCATE 55, WRITEV_FIXED 61).
/// Every operation, these and all others, is charged to `all` too.
const IOURING_TABLE: &[(u32, &[u32])] = &[(class::NET, &[9, 16, 26, 47, 48]), (class::FS_WRITE, &[2, 5, 17, 23, 35, 36, 37, 38, 39, 55, 61])];

/// The `KP_IOURING_CLASS` table: entry `opcode` is 1 + class.
pub fn iouring_class_table() -> Vec<(u32, u32)> {
    IOURING_TABLE.iter().flat_map(|(c, ops)| ops.iter().map(move |op| (*op, c + 1))).collect()
}

/// What a syscall ceiling sees of io_uring on this kernel, for `probe`,
/// `throttle` and `status`: the tracepoint each operation is charged at,
/// else why it is counted per io_uring_enter only.
pub fn iouring_coverage(hook: std::result::Result<&str, &str>) -> serde_json::Value {
    match hook {
        Ok(tp) => serde_json::json!({
            "per_operation": true,
            "tracepoint": tp,
            "how": format!("each submitted io_uring operation is charged to its class (and to all) at the {tp} tracepoint, \
                    in the submitter's context or the ring's SQPOLL thread's, to the ring owner's target"),
            "sqpoll": "a SQPOLL ring is counted and paced: its operations are charged when the SQ thread submits them, and the \
                       freeze that pays the debt stops that thread too. Operations are counted when submitted, not when they \
                       complete (one punted to io-wq, or a multishot receive, is one charge); a ring shared with a process outside \
                       the target (fd passing, IORING_SETUP_ATTACH_WQ) is charged to the target of the task that submits",
        }),
        Err(why) => serde_json::json!({
            "per_operation": false,
            "how": format!("io_uring operations are not counted one by one here ({why}): an io_uring_enter is one syscall \
                            however many operations it carries, and a SQPOLL ring submits without any syscall, so it is not held \
                            by a syscall ceiling at all (only by --egress-* ceilings for its traffic)"),
            "sqpoll": "not seen",
        }),
    }
}

/// The `KP_SYSCALL_CLASS` table: entry `nr` is 1 + class, 0 for none.
pub fn syscall_class_table() -> Result<Vec<(u32, u32)>> {
    #[cfg(target_arch = "x86_64")]
    {
        Ok(SYSCALL_TABLE.iter().flat_map(|(c, nrs)| nrs.iter().map(move |nr| (*nr, c + 1))).collect())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(Error::InvalidRequest("syscall classes are only defined for x86_64 syscall numbers".into()))
    }
}

/// Name of a bucket class.
pub fn class_name(c: u32) -> &'static str {
    match c {
        class::NET => "net",
        class::EXEC => "exec",
        class::FORK => "fork",
        class::FS_WRITE => "fs-write",
        class::ALL => "all",
        class::EGRESS_BYTES => "egress-bytes",
        class::EGRESS_PACKETS => "egress-packets",
        class::EGRESS_BYTES_TC => "egress-bytes-tc",
        class::EGRESS_PACKETS_TC => "egress-packets-tc",
        _ => "unknown",
    }
}

/// pace or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Over-budget syscalls still succeed; the task is paused until the
    /// bucket is full again.
    #[default]
    Pace,
    /// Over-budget operations fail with EAGAIN (net class only).
    Deny,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pace" => Ok(Self::Pace),
            "deny" => Ok(Self::Deny),
            _ => Err(Error::InvalidRequest(format!("unknown throttle mode {s:?}: expected pace or deny"))),
        }
    }

    fn kernel(self) -> u32 {
        match self {
            Self::Pace => class::MODE_PACE,
            Self::Deny => class::MODE_DENY,
        }
    }
}

/// A target's ceilings, as stored in the registry and shown by `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Syscalls per second by class name (`all` for `--syscalls`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub syscalls: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_packets: Option<u64>,
    /// Live tasks (cgroup pids controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u64>,
    #[serde(default)]
    pub mode: Mode,
}

impl Ceilings {
    /// The ceiling (per second) that a bucket of class `class` enforces:
    /// the egress ceilings for both egress hooks, else the syscall class's.
    pub fn of_class(&self, class: u32) -> Option<u64> {
        match class {
            class::EGRESS_BYTES | class::EGRESS_BYTES_TC => self.egress_bytes,
            class::EGRESS_PACKETS | class::EGRESS_PACKETS_TC => self.egress_packets,
            _ => self.syscalls.get(class_name(class)).copied(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.syscalls.is_empty() && self.egress_bytes.is_none() && self.egress_packets.is_none() && self.tasks.is_none()
    }

    /// Checks ranges and the mode: an impossible ceiling is an error naming it.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::InvalidRequest("throttle needs at least one of --syscalls, --syscall-class, --egress-bytes, --egress-packets, --tasks".into()));
        }
        for (name, rate) in &self.syscalls {
            class_of(name)?;
            check_range(&format!("syscall ceiling {name}"), *rate, MIN_RATE, MAX_RATE)?;
            if self.mode == Mode::Deny && name != "net" {
                return Err(Error::InvalidRequest(format!(
                    "--mode deny cannot apply to the {name} class: a raw tracepoint cannot fail a syscall and this build has no fmod_ret hook; \
                     only net (connect, and sends with an address, via cgroup sock_addr hooks) can be denied. Use --mode pace"
                )));
            }
        }
        if let Some(b) = self.egress_bytes {
            check_range("--egress-bytes", b, MIN_BYTES, MAX_BYTES)?;
        }
        if let Some(p) = self.egress_packets {
            check_range("--egress-packets", p, MIN_RATE, MAX_RATE)?;
        }
        if let Some(t) = self.tasks {
            if t == 0 {
                return Err(Error::InvalidRequest("--tasks 0 would forbid the target's own tasks; use stop".into()));
            }
            if t > 4_194_304 {
                return Err(Error::InvalidRequest(format!("--tasks {t} exceeds the kernel's pid limit (4194304)")));
            }
        }
        Ok(())
    }

    /// The kernel buckets these ceilings become, by class.
    pub fn buckets(&self) -> Result<Vec<(u32, Bucket)>> {
        let mut out = Vec::new();
        for (name, rate) in &self.syscalls {
            let mode = if name == "net" { self.mode } else { Mode::Pace };
            out.push((class_of(name)?, bucket(*rate, 1, mode)));
        }
        if let Some(b) = self.egress_bytes {
            out.push((class::EGRESS_BYTES, bucket(b, MAX_SKB_BYTES, Mode::Pace)));
            out.push((class::EGRESS_BYTES_TC, bucket(b, MAX_SKB_BYTES, Mode::Pace)));
        }
        if let Some(p) = self.egress_packets {
            out.push((class::EGRESS_PACKETS, bucket(p, MAX_SKB_SEGS, Mode::Pace)));
            out.push((class::EGRESS_PACKETS_TC, bucket(p, MAX_SKB_SEGS, Mode::Pace)));
        }
        Ok(out)
    }

    /// Merges a new request into the current ceilings: what the request
    /// names changes, the rest stays (running throttle again dials live).
    pub fn merge(&mut self, new: &Ceilings) {
        for (k, v) in &new.syscalls {
            self.syscalls.insert(k.clone(), *v);
        }
        self.egress_bytes = new.egress_bytes.or(self.egress_bytes);
        self.egress_packets = new.egress_packets.or(self.egress_packets);
        self.tasks = new.tasks.or(self.tasks);
        self.mode = new.mode;
    }

    pub fn has_syscalls(&self) -> bool {
        !self.syscalls.is_empty()
    }

    pub fn has_egress(&self) -> bool {
        self.egress_bytes.is_some() || self.egress_packets.is_some()
    }

    /// Whether pacing needs the agent (to resume paused tasks).
    pub fn paces(&self) -> bool {
        self.syscalls.keys().any(|k| k != "net" || self.mode == Mode::Pace)
    }
}

fn check_range(what: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::InvalidRequest(format!("{what} {v}/s is out of range: ceilings go from {lo}/s to {hi}/s")));
    }
    Ok(())
}

/// Class number of a syscall class name.
pub fn class_of(name: &str) -> Result<u32> {
    SYSCALL_CLASSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "unknown syscall class {name:?}: expected one of {}",
            SYSCALL_CLASSES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// A GCRA bucket for `rate` units per second whose burst is
/// [`BURST_NS`] worth of the rate, and at least `min_burst` units.
pub fn bucket(rate: u64, min_burst: u64, mode: Mode) -> Bucket {
    let cost_ps = 1_000_000_000_000 / rate.max(1);
    let burst_units = (rate / (1_000_000_000 / BURST_NS)).max(min_burst).max(1);
    Bucket { cost_ps, tau_ns: burst_units.saturating_mul(cost_ps) / 1000, tat_ns: 0, mode: mode.kernel(), _pad: 0 }
}

/// Parses a rate: `1000`, `1000/s`, `10k/s`, `10M/s`, `1MB/s`, `64KiB/s`.
/// k/M/G are powers of 1000, Ki/Mi/Gi of 1024; a trailing `B` is allowed.
pub fn parse_rate(s: &str) -> Result<u64> {
    let bad = |why: &str| Error::InvalidRequest(format!("bad rate {s:?}: {why} (expected e.g. 1000/s, 10k/s, 1MB/s)"));
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(bad("unknown unit")),
    };
    n.checked_mul(mult).ok_or_else(|| bad("number too large"))
}

/// Parses `CLASS=RATE` (`--syscall-class net=10/s`).
pub fn parse_class_rate(s: &str) -> Result<(String, u64)> {
    let (c, r) = s.split_once('=').ok_or_else(|| Error::InvalidRequest(format!("bad --syscall-class {s:?}: expected CLASS=N/s, e.g. net=10/s")))?;
    class_of(c)?;
    Ok((c.to_owned(), parse_rate(r)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1000/s").unwrap(), 1000);
        assert_eq!(parse_rate("10k/s").unwrap(), 10_000);
        assert_eq!(parse_rate("1MB/s").unwrap(), 1_000_000);
        assert_eq!(parse_rate("64KiB/s").unwrap(), 65_536);
        assert_eq!(parse_rate("42").unwrap(), 42);
        assert!(parse_rate("/s").is_err());
        assert!(parse_rate("10q/s").is_err());
        assert!(parse_rate("99999999999999999999").is_err());
        assert_eq!(parse_class_rate("net=10/s").unwrap(), ("net".into(), 10));
        assert!(parse_class_rate("disk=10/s").unwrap_err().to_string().contains("unknown syscall class"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = Ceilings::default();
        assert!(c.validate().unwrap_err().to_string().contains("at least one"));
        c.syscalls.insert("all".into(), 5);
        assert!(c.validate().unwrap_err().to_string().contains("out of range"));
        c.syscalls.insert("all".into(), 100);
        c.validate().unwrap();
        c.mode = Mode::Deny;
        assert!(c.validate().unwrap_err().to_string().contains("cannot apply to the all class"));
        c.syscalls.clear();
        c.syscalls.insert("net".into(), 100);
        c.validate().unwrap();
        c.tasks = Some(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn buckets_hold_a_burst_and_the_rate() {
        let b = bucket(1000, 1, Mode::Pace);
        assert_eq!(b.cost_ps, 1_000_000_000);
        // 100 ms worth: 100 syscalls of 1 ms each.
        assert_eq!(b.tau_ns, 100_000_000);
        // 10/s: one syscall of burst.
        assert_eq!(bucket(10, 1, Mode::Pace).tau_ns, 100_000_000);
        // 1 MB/s egress: the burst covers at least one 64 KiB skb.
        let e = bucket(1_000_000, MAX_SKB_BYTES, Mode::Pace);
        assert!(e.tau_ns >= 65_536 * e.cost_ps / 1000);
    }

    #[test]
    fn a_paced_target_resumes_with_half_a_burst_of_room() {
        use killpath_common::pace::resume_at;
        // 100/s: a burst of 10 calls (100 ms); resumed 50 ms before the
        // bucket is full, so up to 50 ms of lateness costs no budget.
        let b = bucket(100, 1, Mode::Pace);
        let tat = 5_000_000_000;
        assert_eq!(resume_at(tat, b.tau_ns), tat - 50_000_000);
        // Never before the clock's origin.
        assert_eq!(resume_at(10, b.tau_ns), 0);
    }

    #[test]
    fn iouring_opcodes_have_one_class_each() {
        let t = iouring_class_table();
        let mut seen = std::collections::BTreeSet::new();
        for (op, c) in &t {
            assert!(*op < class::MAX_IOURING_OP, "opcode {op} past the table");
            assert!(seen.insert(*op), "opcode {op} in two classes");
            assert!(*c == class::NET + 1 || *c == class::FS_WRITE + 1);
        }
        // IORING_OP_SEND (26) and SENDMSG (9) are net, WRITE (23) fs-write.
        assert!(t.contains(&(26, class::NET + 1)) && t.contains(&(9, class::NET + 1)) && t.contains(&(23, class::FS_WRITE + 1)));
        assert_eq!(iouring_coverage(Err("old kernel"))["per_operation"], false);
    }

    #[test]
    fn merge_changes_only_what_is_named() {
        let mut a = Ceilings::default();
        a.syscalls.insert("all".into(), 1000);
        a.tasks = Some(10);
        let mut b = Ceilings::default();
        b.syscalls.insert("net".into(), 10);
        a.merge(&b);
        assert_eq!(a.syscalls.len(), 2);
        assert_eq!(a.tasks, Some(10));
    }
}
