//! killpath kernel programs. Entry points are thin wrappers over `try_*`
//! functions; the modules are named for the level they enforce.
#![no_std]
#![no_main]

mod degrade;
mod fswrite;
mod guard;
mod isolate;
mod maps;
mod probe;
mod signal;
mod targets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_send_signal and the LSM hooks are GPL-only helpers/attach points.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
