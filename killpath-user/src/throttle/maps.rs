//! Level 1 in the kernel's maps: a target's token buckets (`KP_THROTTLE`),
//! their exact per-CPU counts, and the syscall class table.
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use killpath_common::{compat, maps, throttle as tclass, Bucket, ThrottleCounts, ThrottleKey};

use crate::{
    error::{Error, Result},
    kernel::{
        maps::{Maps, ThrottleMaps},
        object::typed,
    },
};

/// Fills `KP_SYSCALL_CLASS` (x86_64 syscall number → class) and
/// `KP_SYSCALL_CLASS_IA32` (i386 number → class) in a freshly loaded
/// object. Returns the maps' handles: the caller keeps them for as long as
/// it loads programs, whose instructions refer to the maps by their fds.
pub fn fill_syscall_classes(ebpf: &mut Ebpf) -> Result<[Array<MapData, u32>; 2]> {
    let mut classes: Array<MapData, u32> = typed(ebpf, maps::SYSCALL_CLASS)?;
    if let Ok(table) = super::syscall_class_table() {
        for (nr, c) in table {
            classes.set(nr, c, 0).map_err(Error::map(format!("updating {}", maps::SYSCALL_CLASS)))?;
        }
    }
    let mut ia32: Array<MapData, u32> = typed(ebpf, compat::MAP)?;
    #[cfg(target_arch = "x86_64")]
    for (nr, c) in super::syscall_class_table_ia32() {
        ia32.set(nr, c, 0).map_err(Error::map(format!("updating {}", compat::MAP)))?;
    }
    Ok([classes, ia32])
}

/// Fills `KP_IOURING_CLASS` and `KP_IOURING_OPCODE_OFFSET` (the offset of
/// `io_kiocb.opcode` from BTF, 0 when unknown: then nothing is charged per
/// operation). Returns the handles, kept while programs load (as above).
pub fn fill_iouring(ebpf: &mut Ebpf, opcode_offset: Option<u32>) -> Result<(Array<MapData, u32>, Array<MapData, u32>)> {
    let mut classes: Array<MapData, u32> = typed(ebpf, maps::IOURING_CLASS)?;
    for (op, c) in super::iouring_class_table() {
        classes.set(op, c, 0).map_err(Error::map(format!("updating {}", maps::IOURING_CLASS)))?;
    }
    let mut offset: Array<MapData, u32> = typed(ebpf, maps::IOURING_OPCODE_OFFSET)?;
    offset.set(0, opcode_offset.unwrap_or(0), 0).map_err(Error::map(format!("updating {}", maps::IOURING_OPCODE_OFFSET)))?;
    Ok((classes, offset))
}

impl Maps {
    fn throttle_maps(&mut self) -> Result<&mut ThrottleMaps> {
        self.throttle.as_mut().ok_or_else(|| Error::Kernel("throttle maps not open".into()))
    }

    /// Installs a target's buckets (replacing all of its old ones) and
    /// recomputes the global switches. Bucket state starts fresh (full).
    pub fn set_throttle(&mut self, cgroup_id: u64, buckets: &[(u32, Bucket)]) -> Result<()> {
        let t = self.throttle_maps()?;
        for class in 0..tclass::COUNT {
            if !buckets.iter().any(|(c, _)| *c == class) {
                let _ = t.buckets.remove(&ThrottleKey { cgroup_id, class, _pad: 0 });
            }
        }
        for (class, b) in buckets {
            t.buckets.insert(ThrottleKey { cgroup_id, class: *class, _pad: 0 }, *b, 0).map_err(Error::map(format!("updating {}", maps::THROTTLE)))?;
        }
        self.sync_config()
    }

    /// Removes a target's buckets and counts.
    pub fn clear_throttle(&mut self, cgroup_id: u64) -> Result<()> {
        self.set_throttle(cgroup_id, &[])?;
        let t = self.throttle_maps()?;
        for class in 0..tclass::COUNT {
            let _ = t.counts.remove(&ThrottleKey { cgroup_id, class, _pad: 0 });
        }
        Ok(())
    }

    /// Classes with a bucket for this target.
    pub fn throttle_classes(&self, cgroup_id: u64) -> Vec<u32> {
        let Some(t) = self.throttle.as_ref() else {
            return Vec::new();
        };
        (0..tclass::COUNT).filter(|c| t.buckets.get(&ThrottleKey { cgroup_id, class: *c, _pad: 0 }, 0).is_ok()).collect()
    }

    /// Counts of one bucket, summed over CPUs.
    pub fn throttle_counts(&self, cgroup_id: u64, class: u32) -> ThrottleCounts {
        let Some(t) = self.throttle.as_ref() else {
            return ThrottleCounts::default();
        };
        let Ok(v) = t.counts.get(&ThrottleKey { cgroup_id, class, _pad: 0 }, 0) else {
            return ThrottleCounts::default();
        };
        v.iter().fold(ThrottleCounts::default(), |a, c| ThrottleCounts { passed: a.passed + c.passed, paced: a.paced + c.paced, denied: a.denied + c.denied })
    }

    /// Whether any target has a syscall ceiling (the sys_exit hook is needed).
    pub fn any_syscall_throttle(&self) -> bool {
        self.config().is_some_and(|c| c.syscall_throttled != 0)
    }
}
