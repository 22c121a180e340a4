//! A private killpath agent, shared by the integration tests, `cargo xtask
//! bench` and `cargo xtask demo`.
//!
//! A [`Sandbox`] owns one set of private paths named by a unique tag
//! (`<prefix>-<pid>`, then `<prefix>-<pid>-<n>`): a directory for the
//! socket, the state dir and the agent log, a bpffs pin dir
//! `/sys/fs/bpf/<tag>` and a cgroup parent `<cgroup2 mount>/<tag>`. It
//! starts `killpath agent` on those paths and waits until the socket
//! answers, makes blocking one-line JSON calls to it, stops or restarts
//! it, and tears everything down at the end: every task in the cgroup
//! subtree killed, the cgroups removed bottom-up, the agent's v1 pids
//! cgroups removed, the pins (and with them the agent's programs) removed.
//! [`remove_stale`] removes what a crashed earlier run left behind.
//!
//! This crate uses std only (no killpath crate): xtask depends on it, and
//! xtask must build before the eBPF toolchain exists.

pub mod cgroup;
mod client;
mod error;
pub mod interrupt;
pub mod mounts;
mod process;
mod sandbox;
mod stale;

pub use client::Client;
pub use error::{Error, Result};
pub use process::terminate;
pub use sandbox::Sandbox;
pub use stale::remove_stale;

/// Where bpffs is mounted; every sandbox pins below it.
pub const BPFFS: &str = "/sys/fs/bpf";
