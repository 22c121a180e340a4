//! Targets by the names admins use (`adopt --unit/--container/--pod`):
//! real cgroups laid out as systemd and the kubelet lay them out, with real
//! processes in them (layouts.rs), and a real runc container (runc.rs).
//! What was adopted is judged from outside: which pids a stop kills and
//! which it leaves, what runc says about its container.
mod layouts;
mod runc;
mod tree;
