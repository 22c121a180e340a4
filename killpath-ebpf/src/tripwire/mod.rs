//! Tripwires: per-target metrics counted in the hooks that see their
//! events, checked against the rules the agent wrote into
//! `KP_TRIPWIRE_RULES` (see `killpath-common/src/tripwire.rs`).
//!
//! Each hook makes ONE call here, before its own verdict, so that a
//! critical rule raises the target's level on the crossing event itself
//! and the hook's own check (which reads `KP_TARGETS` after this call)
//! already refuses that event: the crossing packet is dropped, the
//! crossing connect refused. Nothing here runs while no target has a rule
//! (`GuardConfig.tripwire_targets == 0`): one config read per event.
//!
//! Windows are fixed (they restart `window_ns` after they began), per rule
//! and per target. Counting is one XADD (BPF cpu v1 has no fetch-add) and
//! a re-read: two CPUs crossing at once may both see a count above the
//! threshold before either marks the window fired, so a crossing can be
//! reported twice; the agent keeps the first and the raise is idempotent.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use killpath_common::{
    raise::cause,
    tripwire::{flag, metric, Crossing, DestKey, Rule, SlotList, Window, WindowKey, MAX_RULES, METRICS},
    GuardConfig,
};

use crate::{maps::MAX_TARGETS, raise, throttle::bucket::xadd};

mod exec;
mod hooks;

pub use hooks::{addr, denial, fork, skb, syscall};

#[map(name = "KP_TRIPWIRE_RULES")]
static RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

// Per metric, the slots with an active rule on it (written by the agent
// after the slots themselves, so a listed slot always holds its rule).
#[map(name = "KP_TRIPWIRE_ACTIVE")]
static ACTIVE: Array<SlotList> = Array::with_max_entries(METRICS, 0);

#[map(name = "KP_TRIPWIRE_WINDOWS")]
static WINDOWS: HashMap<WindowKey, Window> = HashMap::with_max_entries(MAX_TARGETS * 4, 0);

// LRU: destinations of past windows age out on their own.
#[map(name = "KP_TRIPWIRE_DESTS")]
static DESTS: LruHashMap<DestKey, u8> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "KP_TRIPWIRE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// BPF_NOEXIST: insert only if the key is absent.
const NOEXIST: u64 = 1;

/// Whether any target has a rule: the hooks' early return.
#[inline(always)]
pub fn armed(cfg: &GuardConfig) -> bool {
    cfg.tripwire_targets != 0
}

/// A destination (address, port) for the `destinations` metric.
#[derive(Clone, Copy)]
pub struct Dest {
    pub addr: [u32; 4],
    pub port: u32,
}

/// Charges `amount` of `m` (qualifier `arg`) to target `id`.
#[inline(always)]
pub fn charge(id: u64, m: u32, arg: u32, amount: u64) {
    charge_dest(id, m, arg, amount, None)
}

/// As [`charge`]; for `destinations`, `dest` counts once per window.
#[inline(always)]
pub fn charge_dest(id: u64, m: u32, arg: u32, amount: u64, dest: Option<Dest>) {
    if id == 0 || amount == 0 {
        return;
    }
    // Only this metric's rules: one array read and no clock read while it
    // has none (e.g. the skb hook's packets charge while only a bytes rule
    // exists), and `len` slot lookups, not all 32, while it has some. The
    // loop keeps a constant bound with an early break (the verifier walks
    // each exit once, instead of a branch per slot). Each slot is checked
    // again: a list torn by a concurrent agent update, or naming a slot
    // since rewritten, is harmless.
    let Some(list) = ACTIVE.get(m) else { return };
    let len = list.len;
    if len == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut i = 0usize;
    while i < MAX_RULES as usize {
        if i as u32 >= len {
            break;
        }
        let slot = list.slots[i] as u32;
        if let Some(r) = RULES.get(slot) {
            let r = *r;
            if r.flags & flag::ACTIVE != 0 && r.metric == m && (r.target == 0 || r.target == id) && (r.arg == 0 || r.arg == arg) {
                rule(id, slot, &r, amount, now, dest);
            }
        }
        i += 1;
    }
}

/// One rule's window for one target.
#[inline(always)]
fn rule(id: u64, slot: u32, r: &Rule, amount: u64, now: u64, dest: Option<Dest>) {
    let key = WindowKey { target: id, slot, _pad: 0 };
    let w = match WINDOWS.get_ptr_mut(key) {
        Some(w) => w,
        None => {
            // First event of this target for this rule. Another CPU may
            // insert at the same time: NOEXIST keeps the first.
            let _ = WINDOWS.insert(key, Window { start_ns: now, ..Window::default() }, NOEXIST);
            match WINDOWS.get_ptr_mut(key) {
                Some(w) => w,
                None => return,
            }
        }
    };
    // SAFETY: map value pointer, valid for this program run; aligned u64s.
    unsafe {
        xadd(&mut (*w).total, amount);
        if r.flags & flag::COUNT_ONLY != 0 || (*w).fired_ns != 0 {
            return;
        }
        let start = core::ptr::read_volatile(&(*w).start_ns);
        if now.wrapping_sub(start) >= r.window_ns {
            // A new window. The previous count is kept only if it was the
            // window just before (evidence: the rate before the crossing).
            let prev = if now.wrapping_sub(start) < 2 * r.window_ns { (*w).count } else { 0 };
            (*w).prev = prev;
            (*w).count = 0;
            core::ptr::write_volatile(&mut (*w).start_ns, now);
        }
    }
    // SAFETY: as above.
    let start = unsafe { (*w).start_ns };
    let amount = match (r.metric, dest) {
        (metric::DESTINATIONS, Some(d)) => {
            let dk = DestKey { target: id, window_start_ns: start, addr: d.addr, slot, port: d.port };
            // A destination counts once per window: only the insert that
            // creates the key counts.
            if DESTS.insert(dk, 1, NOEXIST).is_ok() {
                1
            } else {
                0
            }
        }
        _ => amount,
    };
    if amount == 0 {
        return;
    }
    // SAFETY: as above.
    let (count, prev) = unsafe {
        xadd(&mut (*w).count, amount);
        (core::ptr::read_volatile(&(*w).count), (*w).prev)
    };
    if count <= r.threshold {
        return;
    }
    // SAFETY: as above. Marked before the raise: later events skip it.
    unsafe {
        (*w).fired_ns = now;
        (*w).fired_value = count;
    }
    let raised = if r.flags & flag::RAISE != 0 {
        raise::raise(id, raise::Request { level: r.level, revoke: r.revoke, cause: cause::TRIPWIRE, detail: slot, trigger_ns: now, value: count })
    } else {
        false
    };
    // SAFETY: helper without arguments.
    let effect_ns = if raised { unsafe { bpf_ktime_get_ns() } } else { 0 };
    if let Some(mut e) = EVENTS.reserve::<Crossing>(0) {
        e.write(Crossing {
            target: id,
            time_ns: now,
            value: count,
            prev,
            threshold: r.threshold,
            effect_ns,
            slot,
            metric: r.metric,
            raised: raised as u32,
            generation: r.generation,
        });
        e.submit(0);
    }
}
