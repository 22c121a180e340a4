//! Privileged integration tests against the real kernel: real agent, real
//! cgroups, real processes and sockets. Run one at a time
//! (`--test-threads=1`): they share kernel state. Tests whose names start
//! with `lsm_` need BPF LSM and run inside the VM (`cargo xtask test`).
mod harness;
mod support;

mod approvals;
mod audit;
mod class_hooks;
mod confined_flood;
mod degrade;
mod drill;
mod fallback;
mod int80;
mod isolate;
mod journal;
mod journal_poisoned;
mod lease;
mod metrics;
mod mark_counters;
mod mark_index;
mod marks_capacity;
mod membership;
mod membership_nested;
mod membership_pid_reuse;
mod membership_stale;
mod membership_threads;
mod names;
mod priority;
mod privileges;
mod probe;
mod protect;
mod protect_sysctl;
mod raise;
mod registry;
mod scale;
mod service;
mod socket;
mod stop;
mod stop_flood;
mod stop_halt;
mod tamper;
mod targets;
mod throttle;
mod trail;
mod trail_net;
mod trail_net_direction;
mod trail_read;
mod tripwire;
