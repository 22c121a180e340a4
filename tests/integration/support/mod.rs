//! Helpers shared by several test modules (the agent itself is
//! `crate::harness`): processes, cgroups, what status reports, servers
//! outside every target, and a veth namespace for the `--netdev` tests.
pub(crate) mod cgroup;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod status;
pub(crate) mod veth;


