//! killpath: a host-level kill path for autonomous workloads, enforced by
//! the kernel through eBPF. This crate is the agent and the CLI.
pub mod agent;
pub mod bpf;
pub mod canary;
pub mod cgroup;
pub mod client;
pub mod degrade;
pub mod drill;
pub mod drill_probe;
pub mod drill_scenario;
pub mod durable;
pub mod error;
pub mod escalation;
pub mod fallback;
pub mod isolate;
pub mod isolate_tc;
pub mod journal;
pub mod kernel_btf;
pub mod probe;
pub mod protocol;
pub mod stop;
pub mod targets;
pub mod throttle;
pub mod throttle_tasks;
pub mod tree;
pub mod verify;
pub mod verify_probe;

pub use error::{Error, Result};
