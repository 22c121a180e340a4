//! The trail's kernel maps as the agent holds them.
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use killpath_common::{
    trail::{self as t, FileKey, FileValue, FlowKey, FlowValue, TrailConfig, TrailOffsets},
    trail_loss::{self as tl, LostKey},
    trail_net::{ListenKey, LISTENING},
};

use crate::{
    error::{Error, Result},
    kernel::object::typed,
};

/// Handles on the trail maps.
pub struct TrailMaps {
    on: HashMap<MapData, u64, u32>,
    config: Array<MapData, TrailConfig>,
    lost: PerCpuArray<MapData, u64>,
    lost_by_target: PerCpuHashMap<MapData, LostKey, u64>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    files: HashMap<MapData, FileKey, FileValue>,
    offsets: Array<MapData, TrailOffsets>,
    /// Ports recording targets listen on (kernel side: trail/net.rs).
    listening: HashMap<MapData, ListenKey, u32>,
}

impl TrailMaps {
    /// Takes the handles out of the loaded object.
    pub fn from_object(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            on: typed(ebpf, t::ON)?,
            config: typed(ebpf, t::CONFIG)?,
            lost: typed(ebpf, t::LOST)?,
            lost_by_target: typed(ebpf, tl::BY_TARGET)?,
            flows: typed(ebpf, t::FLOWS)?,
            files: typed(ebpf, t::FILE_WRITES)?,
            offsets: typed(ebpf, t::OFFSETS)?,
            listening: typed(ebpf, LISTENING)?,
        })
    }

    /// Fills the offsets the exec event follows to argv (None: argv is
    /// left out, the filename is still recorded).
    pub fn fill_offsets(&mut self, o: Option<TrailOffsets>) -> Result<()> {
        self.offsets.set(0, o.unwrap_or_default(), 0).map_err(Error::map(t::OFFSETS))
    }

    /// Target cgroup ids that record now.
    pub fn recording(&self) -> Vec<u64> {
        self.on.keys().filter_map(std::result::Result::ok).collect()
    }

    /// Whether target `id` records.
    pub fn records(&self, id: u64) -> bool {
        self.on.get(&id, 0).is_ok()
    }

    /// Starts or stops recording target `id`, then the global switch.
    pub fn set(&mut self, id: u64, on: bool) -> Result<()> {
        if on {
            self.on.insert(id, 1, 0).map_err(Error::map(t::ON))?;
        } else if self.records(id) {
            self.on.remove(&id).map_err(Error::map(t::ON))?;
        }
        self.sync_config()
    }

    /// KP_TRAIL_CONFIG from KP_TRAIL_ON (the hooks' early return), keeping
    /// what the file hooks set.
    pub fn sync_config(&mut self) -> Result<()> {
        let mut c = self.config.get(&0, 0).unwrap_or_default();
        c.recording = self.recording().len() as u32;
        self.config.set(0, c, 0).map_err(Error::map(t::CONFIG))
    }

    /// The global switch as the kernel holds it.
    pub fn config(&self) -> TrailConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Sets whether the file hooks record (BPF LSM attached).
    pub fn set_files(&mut self, files: bool) -> Result<()> {
        let mut c = self.config.get(&0, 0).unwrap_or_default();
        c.files = u32::from(files);
        self.config.set(0, c, 0).map_err(Error::map(t::CONFIG))
    }

    /// KP_TRAIL_LOST summed over CPUs, by index (kinds, then flows, files):
    /// loss no target could be charged with (the per-target map was full).
    pub fn lost_host_wide(&self) -> Vec<u64> {
        (0..t::LOST_COUNT).map(|i| self.lost.get(&i, 0).map_or(0, |v| v.iter().sum())).collect()
    }

    /// Target `id`'s loss summed over CPUs, by index (kinds, then flows, files).
    pub fn lost_of(&self, id: u64) -> Vec<u64> {
        (0..t::LOST_COUNT).map(|index| self.lost_by_target.get(&LostKey { target: id, index, _pad: 0 }, 0).map_or(0, |v| v.iter().sum())).collect()
    }

    /// Cgroup ids with loss counts in the kernel.
    pub fn lost_targets(&self) -> std::collections::BTreeSet<u64> {
        self.lost_by_target.keys().filter_map(std::result::Result::ok).map(|k| k.target).collect()
    }

    /// Removes target `id`'s loss counts (after the agent folded them into
    /// its trail file).
    pub fn clear_lost(&mut self, id: u64) {
        for index in 0..t::LOST_COUNT {
            let _ = self.lost_by_target.remove(&LostKey { target: id, index, _pad: 0 });
        }
    }

    /// Flows of target `id`.
    pub fn flows_of(&self, id: u64) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().filter_map(std::result::Result::ok).filter(|(k, _)| k.target == id).collect()
    }

    /// File-write counters of target `id`.
    pub fn files_of(&self, id: u64) -> Vec<(FileKey, FileValue)> {
        self.files.iter().filter_map(std::result::Result::ok).filter(|(k, _)| k.target == id).collect()
    }

    /// Ports target `id` listens on, as the kernel holds them.
    pub fn listening_of(&self, id: u64) -> Vec<ListenKey> {
        self.listening.keys().filter_map(std::result::Result::ok).filter(|k| k.target == id).collect()
    }

    /// Drops target `id`'s flows, file counters and listening ports
    /// (released). A listening port is otherwise removed only when the
    /// listener closes in a task of a recording target: one still open
    /// at release (or closed after recording stopped) would stay, and a
    /// later target reusing the cgroup id would inherit it.
    pub fn forget(&mut self, id: u64) {
        for k in self.listening_of(id) {
            let _ = self.listening.remove(&k);
        }
        for (k, _) in self.flows_of(id) {
            let _ = self.flows.remove(&k);
        }
        for (k, _) in self.files_of(id) {
            let _ = self.files.remove(&k);
        }
    }
}
