//! killpath kernel programs. Entry points are thin wrappers over `try_*`
//! functions; the modules are named for the level they enforce.
#![no_std]
#![no_main]
// Atomic read-modify-write on map values (throttle buckets): core's
// AtomicU64 offers no fetch_add/compare_exchange on bpfel.
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "core::intrinsics atomics, see throttle.rs"))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

mod degrade;
mod fswrite;
mod guard;
mod isolate;
mod maps;
mod probe;
mod signal;
mod targets;
mod throttle;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_send_signal and the LSM hooks are GPL-only helpers/attach points.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
