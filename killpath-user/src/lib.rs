//! killpath: a host-level kill path for autonomous workloads, enforced by
//! the kernel through eBPF. This crate is the agent and the CLI.
//!
//! Imports go one way, with no cycle: [`agent`], [`cli`], [`client`] and
//! [`drill`] → [`target`] → the levels ([`throttle`], [`degrade`],
//! [`isolate`], [`stop`]) → [`kernel`]; a level imports only `kernel`. A command flows
//! CLI ([`cli`]) → a request line on the unix socket
//! ([`client::protocol`]) → [`agent::server`] (caller from SO_PEERCRED) →
//! [`agent::dispatch`] → the journaled transaction ([`agent::transaction`]:
//! intent fsynced, action, result fsynced) → the level's module updates a
//! pinned map → the already-attached kernel hook reads it on its next event.
pub mod agent;
pub mod audit;
pub mod cli;
pub mod client;
pub mod degrade;
pub mod drill;
pub mod error;
pub mod isolate;
pub mod journal;
pub mod kernel;
pub mod level;
pub mod privileges;
pub mod protect;
pub mod resolve;
pub mod state_dir;
pub mod stop;
pub mod target;
pub mod throttle;
pub mod trail;
pub mod tripwire;

pub use error::{Error, Result};
