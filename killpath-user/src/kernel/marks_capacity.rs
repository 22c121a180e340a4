//! How many membership marks `KP_MEMBERS` holds, and whether that covers
//! every task the kernel can run.
//!
//! A mark the kernel cannot store (map full) leaves a task of a target
//! unmarked: it can leave the target's cgroup unseen, and a stop would not
//! find it afterwards. The map is keyed by task id and a mark is dropped
//! when its task exits, so it never needs more entries than tasks can be
//! alive at once: at most `kernel.threads-max` (copy_process refuses a
//! fork past `max_threads`, root included) and at most `kernel.pid_max`
//! (every task holds a pid below it). The agent sizes the map to the lower
//! of the two, plus [`HEADROOM`], when it creates it
//! (`EbpfLoader::map_max_entries`), never below the object's 65,536: with
//! systemd's default `pid_max` of 4,194,304, a fixed 65,536 could be filled
//! by one target's threads.
//!
//! The map is preallocated (tracing programs on 6.1 may only use
//! preallocated hash maps), so its memory follows `threads-max`, which
//! the kernel derives from RAM: 72 bytes an entry plus 16 a bucket (the
//! bench measured +12 MB of map memory at 193,748 against 65,536).
//! A pinned map keeps the size it was created with, so the size is part
//! of the pin generation's name (`pins::generation_for`): an agent started
//! after a limit was raised takes the marks over into a new generation.
//! Root may raise either limit while the agent runs, so `status` compares
//! the live limits with the map's real size on every call.
use std::path::Path;

/// The object's own size for `KP_MEMBERS`, kept as the least.
pub const MIN: u32 = 65_536;

/// `PID_MAX_LIMIT` on 64-bit (include/linux/threads.h: 4 * 1024 * 1024):
/// `pid_max` cannot go above it, so neither can the number of task ids.
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// The kernel's limits on live tasks, from /proc/sys/kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimit {
    /// `kernel.threads-max`.
    pub threads_max: u64,
    /// `kernel.pid_max` (the initial pid namespace's: the agent's own).
    pub pid_max: u64,
}

impl TaskLimit {
    /// Reads both sysctls; None if either is missing or unreadable.
    pub fn read() -> Option<Self> {
        let read = |name: &str| std::fs::read_to_string(Path::new("/proc/sys/kernel").join(name)).ok()?.trim().parse::<u64>().ok();
        Some(Self { threads_max: read("threads-max")?, pid_max: read("pid_max")? })
    }

    /// The most tasks that can be alive at once.
    pub fn tasks(&self) -> u64 {
        self.threads_max.min(self.pid_max)
    }
}

/// Room above the limit: copy_process reads `nr_threads` without a lock
/// ("triggers too late", kernel/fork.c), so forks racing on every CPU can
/// pass `threads-max` by a few.
pub const HEADROOM: u64 = 1024;

/// The `KP_MEMBERS` size that holds a mark for every task `limit` allows.
pub fn capacity_for(limit: Option<TaskLimit>) -> u32 {
    limit.map_or(MIN, |l| u32::try_from(l.tasks().saturating_add(HEADROOM).clamp(u64::from(MIN), u64::from(PID_MAX_LIMIT))).unwrap_or(PID_MAX_LIMIT))
}

/// `status`'s view: the map's real size against the live limits.
pub fn status(capacity: Option<u32>) -> serde_json::Value {
    let limit = TaskLimit::read();
    let short = match (capacity, limit) {
        (Some(c), Some(l)) if l.tasks() > u64::from(c) => Some(format!(
            "the kernel allows {} live tasks (threads-max {}, pid_max {}) but KP_MEMBERS holds {c} marks: past that, a target's new tasks go unmarked and can leave it unseen; restart the agent: it moves to a new pin generation with a map that large and takes the marks over",
            l.tasks(),
            l.threads_max,
            l.pid_max
        )),
        _ => None,
    };
    serde_json::json!({
        "capacity": capacity,
        "threads_max": limit.map(|l| l.threads_max),
        "pid_max": limit.map(|l| l.pid_max),
        "capacity_short": short,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(threads_max: u64, pid_max: u64) -> Option<TaskLimit> {
        Some(TaskLimit { threads_max, pid_max })
    }

    #[test]
    fn capacity_follows_the_lower_limit_within_bounds() {
        assert_eq!(capacity_for(None), MIN);
        assert_eq!(capacity_for(limit(192_724, 32_768)), MIN, "pid_max below the object's size");
        assert_eq!(capacity_for(limit(192_724, 4_194_304)), 192_724 + 1024, "threads-max binds, with headroom");
        assert_eq!(capacity_for(limit(u64::from(u32::MAX) * 2, 4_194_304)), PID_MAX_LIMIT);
        assert_eq!(capacity_for(limit(u64::MAX, u64::MAX)), PID_MAX_LIMIT);
    }

    #[test]
    fn status_names_a_short_map() {
        let live = TaskLimit::read().expect("/proc/sys/kernel is readable");
        let too_small = u32::try_from(live.tasks() - 1).expect("fits");
        let s = status(Some(too_small));
        assert!(s["capacity_short"].as_str().is_some_and(|m| m.contains("go unmarked")), "{s}");
        let s = status(Some(capacity_for(Some(live))));
        assert!(s["capacity_short"].is_null(), "{s}");
    }
}
