//! Whole-map reads of a BPF hash map by BPF_MAP_LOOKUP_BATCH (Linux 5.6+):
//! one syscall per [`CHUNK`] entries, where aya's iterator makes two per
//! entry (`BPF_MAP_GET_NEXT_KEY`, then `BPF_MAP_LOOKUP_ELEM`). At a
//! thousand targets that is the difference between ~0.35 ms and ~1 ms a
//! walk, on paths a stop or the agent's periodic checks take.
//!
//! The chunk is small on purpose: the kernel walks a batch without a
//! preemption point (`__htab_map_lookup_and_delete_batch` copies bucket
//! after bucket; no cond_resched), and under `preempt=none` (this host's
//! 6.18 is built with it as its default) a thread inside that syscall
//! keeps its CPU from every task woken there, real-time ones included,
//! until it returns. A read of 1,024 marks (~0.4 ms in one syscall) on the
//! stop's marks thread delayed the death of the stopped task, and with it
//! the stop, by that much (bench run of 2026-12-04: the cgroup seen empty
//! right after the read ended, at 1,000 targets). Each return to user
//! space is a preemption point.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{maps::IterableMap, Pod};

/// `bpf_attr` of BPF_MAP_LOOKUP_BATCH (`include/uapi/linux/bpf.h`, the
/// `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `bpf` command number of BPF_MAP_LOOKUP_BATCH (Linux 5.6+).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The `bpf` command number of BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux
/// 5.6+): each bucket's entries are copied out and deleted under the
/// bucket's lock, so an entry the kernel writes during the read is either
/// read (and deleted) or left for the next one, never deleted unread.
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// Entries read per syscall: ~25 µs of kernel time at ~0.4 µs an entry,
/// the longest a CPU is held from a task woken there (see above); the
/// syscalls cost ~1 µs each.
const CHUNK: usize = 64;

/// The most entries asked for at once: a bucket holding more than the
/// count asked for fails the batch with ENOSPC, and the count is doubled
/// up to this (a hash of random-seeded keys: chains are a few long).
const MAX_CHUNK: usize = 1 << 16;

/// Every entry of hash map `map` (not a per-CPU one: its values are laid
/// out per CPU); None when the kernel refuses the batch (the caller walks
/// the map instead). A hash map's batch token is a bucket index (u32; 8
/// bytes reserved). Entries added or removed during the read may be seen
/// or not, as with a walk.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(map: &impl IterableMap<K, V>) -> Option<Vec<(K, V)>> {
    lookup_in_chunks(map, CHUNK, &mut |_| {})
}

/// Every entry of hash map `map`, each deleted as it is read (see
/// [`BPF_MAP_LOOKUP_AND_DELETE_BATCH`]); None when the kernel refuses the
/// batch (what was read before the refusal is deleted and lost: the caller
/// takes the map as unreadable).
pub fn take_all<K: Pod + Default, V: Pod + Default>(map: &impl IterableMap<K, V>) -> Option<Vec<(K, V)>> {
    batch_in_chunks(map, BPF_MAP_LOOKUP_AND_DELETE_BATCH, CHUNK, &mut |_| {})
}

/// [`lookup_all`], calling `after_chunk` with the number of entries read
/// so far after each syscall (between two, the thread is back in user
/// space: a class change it makes there takes effect at once).
pub fn lookup_all_then<K: Pod + Default, V: Pod + Default>(map: &impl IterableMap<K, V>, after_chunk: &mut dyn FnMut(usize)) -> Option<Vec<(K, V)>> {
    lookup_in_chunks(map, CHUNK, after_chunk)
}

/// [`lookup_all_then`], `chunk` entries asked for at first.
fn lookup_in_chunks<K: Pod + Default, V: Pod + Default>(map: &impl IterableMap<K, V>, chunk: usize, after_chunk: &mut dyn FnMut(usize)) -> Option<Vec<(K, V)>> {
    batch_in_chunks(map, BPF_MAP_LOOKUP_BATCH, chunk, after_chunk)
}

/// A whole-map batch `cmd` (a lookup, or a lookup and delete), `chunk`
/// entries asked for at first.
fn batch_in_chunks<K: Pod + Default, V: Pod + Default>(
    map: &impl IterableMap<K, V>,
    cmd: libc::c_long,
    chunk: usize,
    after_chunk: &mut dyn FnMut(usize),
) -> Option<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let start = chunk.max(1);
    let mut chunk = start;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a batch attr whose pointers name live buffers
        // of `count` keys and values of the map's sizes (aya checked K and
        // V against the map's key and value sizes when it typed the map;
        // both Pod) and two 8-byte tokens; the kernel writes at most that
        // much and sets `count` to the entries it wrote.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, (&raw mut attr).cast::<libc::c_void>(), std::mem::size_of::<BatchAttr>() as u32) };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        match err.and_then(|e| e.raw_os_error()) {
            None => {
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                // Back to small batches after a long bucket (the buffers
                // keep their size; `count` says how much of them to use).
                chunk = start;
                after_chunk(out.len());
            }
            // The last batch: ENOENT, with what it still read.
            Some(libc::ENOENT) => {
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                after_chunk(out.len());
                return Some(out);
            }
            // A bucket longer than `chunk`: nothing was read (the kernel
            // may have moved `out_batch` past empty buckets; starting
            // again from `in_batch` only walks them again), so the same
            // place is asked again with room for the bucket.
            Some(libc::ENOSPC) if n == 0 && chunk < MAX_CHUNK => {
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Some(_) => return None,
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aya::maps::{HashMap, MapData};

    use super::*;

    /// A map of its own, or None (and why) when this user cannot make one.
    fn map(entries: u32) -> Option<HashMap<MapData, u32, u64>> {
        match HashMap::<MapData, u32, u64>::create(entries, 0) {
            Ok(m) => Some(m),
            Err(e) => {
                assert!(std::env::var_os("KILLPATH_TEST_STRICT").is_none(), "strict run: creating a BPF map failed: {e}");
                eprintln!("skipped: creating a BPF hash map needs CAP_BPF (root): {e}");
                None
            }
        }
    }

    /// Every entry comes back once, across many small batches.
    #[test]
    fn every_entry_is_read_once_in_chunks() {
        let Some(mut m) = map(8192) else { return };
        let want: BTreeMap<u32, u64> = (0..3000u32).map(|k| (k * 7 + 1, u64::from(k) << 20)).collect();
        for (k, v) in &want {
            m.insert(k, v, 0).expect("insert");
        }
        let mut seen = Vec::new();
        let got = lookup_all_then(&m, &mut |n| seen.push(n)).expect("batch lookups");
        assert_eq!(got.len(), want.len(), "an entry read twice or missed");
        assert!(seen.len() >= want.len() / CHUNK && seen.windows(2).all(|w| w[0] < w[1]), "told after each chunk: {seen:?}");
        assert_eq!(got.into_iter().collect::<BTreeMap<_, _>>(), want);
    }

    /// A read that deletes returns every entry once and leaves the map
    /// empty; what is written after it stays for the next one.
    #[test]
    fn take_all_empties_the_map() {
        let Some(mut m) = map(4096) else { return };
        for k in 0..1000u32 {
            m.insert(k, u64::from(k), 0).expect("insert");
        }
        let mut got = take_all(&m).expect("batch lookup and delete");
        got.sort_unstable();
        assert_eq!(got, (0..1000u32).map(|k| (k, u64::from(k))).collect::<Vec<_>>());
        assert_eq!(m.keys().count(), 0, "entries left after the read");
        m.insert(7, 70, 0).expect("insert");
        assert_eq!(take_all(&m).expect("second read"), vec![(7, 70)]);
        assert_eq!(take_all(&m).expect("third read"), vec![]);
    }

    /// A bucket longer than the count asked for (ENOSPC, nothing read) is
    /// asked again with room for it: two entries in a two-bucket map share
    /// a bucket half of the time, read one entry a syscall.
    #[test]
    fn a_bucket_longer_than_the_chunk_is_read_whole() {
        for _ in 0..24 {
            let Some(mut m) = map(2) else { return };
            m.insert(11, 1, 0).expect("insert");
            m.insert(12, 2, 0).expect("insert");
            let mut got = lookup_in_chunks(&m, 1, &mut |_| {}).expect("batch lookups");
            got.sort_unstable();
            assert_eq!(got, vec![(11, 1), (12, 2)]);
        }
    }
}
