//! killpath kernel programs. Entry points are thin wrappers over `try_*`
//! functions (or over one check shared by a family of hooks).
//!
//! - `maps.rs`: every map; `targets.rs`: the target of a task or packet;
//!   `abi.rs`: kernel numbers several levels share;
//! - one module per level, each holding that level's hooks: `stop.rs`
//!   (level 4), `isolate/` (level 3, one file per hook family), `degrade/`
//!   (level 2: `caps`, `fswrite`, `signal`, `connect`), `throttle/`
//!   (level 1: `syscalls`, `egress`, and the `bucket` both charge);
//! - `protect/`: self-protection, always on for every task inside a
//!   target where BPF LSM runs (one file per hook family);
//! - `probe.rs`: the tiny programs `killpath probe` loads.
//!
//! One program per hook: where a hook serves several levels (the socket,
//! skb and TC hooks), its program lives in `isolate/` and calls into each
//! level's functions, in level order, with a comment saying so.
//! Self-protection (`protect/`) is the exception: its programs share some
//! BPF LSM hooks with degrade's (task_kill, file_open, path_*, sb_mount,
//! bpf...). Several BPF LSM programs can sit on one hook; the first
//! refusal ends the chain, so the order between them does not matter.
#![no_std]
#![no_main]
// Atomic read-modify-write on map values (throttle buckets): core's
// AtomicU64 offers no fetch_add/compare_exchange on bpfel.
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "core::intrinsics atomics, see throttle/bucket.rs"))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

mod abi;
mod audit;
mod deadman;
mod degrade;
mod dentry;
mod isolate;
mod kcgroup;
mod maps;
mod members;
mod probe;
mod protect;
mod raise;
mod stop;
mod targets;
mod throttle;
mod trail;
mod tripwire;

// Only for the BPF target: on the host (clippy, `cargo check --workspace`)
// std is linked through killpath-common's `user` feature and brings its own.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_send_signal and the LSM hooks are GPL-only helpers/attach points.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
