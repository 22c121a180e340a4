//! Level 2 in the kernel's maps: `--allow-connect` (LPM trie),
//! `--allow-write` (directory inodes), exact denial counters, and the
//! struct offsets the pointer-following hooks need.
use aya::{
    maps::{lpm_trie::Key, Array, MapData},
    Ebpf,
};
use killpath_common::{cap, maps, protect, ConnectAllow, DenialKey, KernelOffsets, WriteAllow};

use crate::{
    error::{Error, Result},
    kernel::{
        maps::{DegradeMaps, Maps},
        object::typed,
    },
};

/// Fills `KP_OFFSETS` with the struct offsets read from the running
/// kernel's BTF (Rust eBPF has no CO-RE) in a freshly loaded object.
/// Returns the map's handle: the caller keeps it for as long as it loads
/// programs, whose instructions refer to the map by this handle's fd.
pub fn fill_offsets(ebpf: &mut Ebpf, offsets: KernelOffsets) -> Result<Array<MapData, KernelOffsets>> {
    let mut map: Array<MapData, KernelOffsets> = typed(ebpf, maps::OFFSETS)?;
    map.set(0, offsets, 0).map_err(Error::map(format!("updating {}", maps::OFFSETS)))?;
    Ok(map)
}

impl Maps {
    fn degrade_maps(&mut self) -> Result<&mut DegradeMaps> {
        self.degrade.as_mut().ok_or_else(|| Error::Kernel("degrade maps not open".into()))
    }

    /// Adds an `--allow-connect` entry.
    pub fn allow_connect(&mut self, prefix_len: u32, key: ConnectAllow) -> Result<()> {
        let d = self.degrade_maps()?;
        d.allow.insert(&Key::new(prefix_len, key), 1, 0).map_err(Error::map(format!("updating {}", maps::CONNECT_ALLOW)))
    }

    /// Removes every `--allow-connect` entry of a target.
    pub fn clear_allow_connect(&mut self, cgroup_id: u64) -> Result<()> {
        let d = self.degrade_maps()?;
        let mine: Vec<Key<ConnectAllow>> = d.allow.keys().filter_map(|k| k.ok()).filter(|k| k.data().cgroup_id == cgroup_id.to_ne_bytes()).collect();
        for k in mine {
            let _ = d.allow.remove(&k);
        }
        Ok(())
    }

    /// Adds an `--allow-write` directory.
    pub fn allow_write(&mut self, key: WriteAllow) -> Result<()> {
        let d = self.degrade_maps()?;
        d.write_allow.insert(key, 1, 0).map_err(Error::map(format!("updating {}", maps::WRITE_ALLOW)))
    }

    /// Removes every `--allow-write` directory of a target.
    pub fn clear_allow_write(&mut self, cgroup_id: u64) -> Result<()> {
        let d = self.degrade_maps()?;
        let mine: Vec<WriteAllow> = d.write_allow.keys().filter_map(|k| k.ok()).filter(|k| k.cgroup_id == cgroup_id).collect();
        for k in mine {
            let _ = d.write_allow.remove(&k);
        }
        Ok(())
    }

    /// Removes a released target's denial counters (self-protection
    /// refusals included).
    pub fn clear_denials(&mut self, cgroup_id: u64) {
        if let Some(d) = self.degrade.as_mut() {
            for cap in (0..cap::COUNT).chain(protect::FIRST..protect::FIRST + protect::COUNT) {
                let _ = d.denials.remove(&DenialKey { cgroup_id, cap, _pad: 0 });
            }
        }
    }

    /// Denials of a target per capability bit index (exact: summed over CPUs).
    pub fn denials(&self, cgroup_id: u64) -> Vec<(u32, u64)> {
        let Some(d) = self.degrade.as_ref() else {
            return Vec::new();
        };
        (0..cap::COUNT)
            .filter_map(|i| {
                let v = d.denials.get(&DenialKey { cgroup_id, cap: i, _pad: 0 }, 0).ok()?;
                Some((i, v.iter().sum()))
            })
            .collect()
    }
}
