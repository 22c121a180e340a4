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
use core::{mem::MaybeUninit, ptr::addr_of_mut};

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
#[repr(C)]
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
        if RULES.get(slot).is_some_and(|r| applies(r, id, m, arg)) {
            let d = dest.unwrap_or(Dest { addr: [0; 4], port: 0 });
            let dest_ptr: *const Dest = if dest.is_some() { &d } else { core::ptr::null() };
            let what = u64::from(slot) | (u64::from(m) << 8) | (u64::from(arg) << 32);
            // SAFETY: `dest_ptr` is null or points to `d`, alive across the call.
            unsafe { kp_tripwire_rule(id, what, amount, now, dest_ptr) };
        }
        i += 1;
    }
}

/// Whether rule `r` counts metric `m` (qualifier `arg`) of target `id`.
#[inline(always)]
fn applies(r: &Rule, id: u64, m: u32, arg: u32) -> bool {
    r.flags & flag::ACTIVE != 0 && r.metric == m && (r.target == 0 || r.target == id) && (r.arg == 0 || r.arg == arg)
}

/// Initialises `w` as a window that starts at `now`, field by field with
/// volatile stores, in place: LLVM otherwise merges the zeroing into a
/// call to aya-ebpf's byte-wise `memset`, which the verifier walks byte
/// by byte, and which is one more frame on [`kp_tripwire_rule`]'s chain
/// (Linux 6.1 counts at least 32 bytes for every frame, even an empty
/// one, against the 512-byte limit).
#[inline(always)]
fn start_window(w: &mut MaybeUninit<Window>, now: u64) -> &Window {
    let p = w.as_mut_ptr();
    // SAFETY: pointers to the fields of `w`; every field of the repr(C),
    // all-u64 struct is written once before `w` is read as initialised.
    unsafe {
        addr_of_mut!((*p).start_ns).write_volatile(now);
        addr_of_mut!((*p).count).write_volatile(0);
        addr_of_mut!((*p).prev).write_volatile(0);
        addr_of_mut!((*p).total).write_volatile(0);
        addr_of_mut!((*p).fired_ns).write_volatile(0);
        addr_of_mut!((*p).fired_value).write_volatile(0);
        w.assume_init_ref()
    }
}

/// One rule's window for one target: [`rule`] as a global BPF function
/// (see `targets::kp_target_of_current` for why). The window, the raise
/// and the crossing event are verified once per program; inlined, they
/// were verified again in each of the walk's 32 iterations, for every
/// caller state and at every call site: about half of what the verifier
/// walked for the egress skb and fork programs. The rule is read again
/// here (a global function takes scalars and plain memory, not a map
/// value) and checked again: the agent may have rewritten the slot since
/// the caller's check. It is read in place, not copied: a copy would not
/// be atomic either (an array map update is a plain copy), and the
/// frame must stay small. A global function's stack adds to its
/// caller's under the 512-byte limit, and Linux 6.1 rounds each frame up
/// to 32 bytes: with a 48-byte rule copy and the crossing built on the
/// stack, the egress skb program came to 544 there.
/// `what` packs the slot (bits 0-7), the metric (8-31) and its qualifier
/// (32-63): a global function takes at most five arguments.
///
/// # Safety
/// `dest` is null or points to a readable Dest.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn kp_tripwire_rule(id: u64, what: u64, amount: u64, now: u64, dest: *const Dest) -> u32 {
    let (slot, m, arg) = ((what & 0xff) as u32, ((what >> 8) & 0xff_ffff) as u32, (what >> 32) as u32);
    // SAFETY: as the caller promises (null or readable), kept a reference
    // rather than copied (the frame, above).
    let dest = unsafe { dest.as_ref() };
    if let Some(r) = RULES.get(slot).filter(|r| applies(r, id, m, arg)) {
        rule(id, slot, r, amount, now, dest);
    }
    0
}

#[inline(always)]
fn rule(id: u64, slot: u32, r: &Rule, amount: u64, now: u64, dest: Option<&Dest>) {
    let key = WindowKey { target: id, slot, _pad: 0 };
    let w = match WINDOWS.get_ptr_mut(key) {
        Some(w) => w,
        None => {
            // First event of this target for this rule. Another CPU may
            // insert at the same time: NOEXIST keeps the first.
            let mut fresh = MaybeUninit::<Window>::uninit();
            let _ = WINDOWS.insert(key, start_window(&mut fresh, now), NOEXIST);
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
        let c = e.as_mut_ptr();
        // SAFETY: `c` points to the reserved entry, a whole Crossing (a
        // repr(C) struct without padding): every byte is set before the
        // submit, in place (not built on the stack first).
        unsafe {
            (*c).target = id;
            (*c).time_ns = now;
            (*c).value = count;
            (*c).prev = prev;
            (*c).threshold = r.threshold;
            (*c).effect_ns = effect_ns;
            (*c).slot = slot;
            (*c).metric = r.metric;
            (*c).raised = raised as u32;
            (*c).generation = r.generation;
        }
        e.submit(0);
    }
}
