//! Audit mode (dry run): what a target runs in audit mode, in
//! [`crate::TargetState::audit`]. An audited capability or an audited
//! isolation is checked exactly as if it were enforced, and every operation
//! it would have refused is counted in `KP_DENIALS` and sampled into
//! `KP_DENIAL_EVENTS` like a real denial, under keys and events flagged as
//! audit; the operation is then allowed. Real enforcement always wins: a
//! capability both revoked and audited is refused (and counted as a real
//! denial), and an isolated target's audit bit for isolation is inert.

/// [`crate::TargetState::audit`] bits 0..[`crate::cap::COUNT`]: audited
/// capabilities, the same bits as [`crate::cap`] (and as `revoked`).
pub const CAPS: u32 = (1 << crate::cap::COUNT) - 1;

/// [`crate::TargetState::audit`] bit: isolation (level 3) is audited.
pub const ISOLATE: u32 = 1 << 31;

/// [`crate::DenialKey`]`::_pad` of an audit counter: the would-be refusals
/// of a target are counted apart from its real denials (`_pad` 0), so the
/// two never mix.
pub const KEY_AUDIT: u32 = 1;

/// Denial-counter index (`DenialKey::cap`, `DenialEvent::cap`) of an
/// audited isolation refusal: `ISOLATE_FIRST + ` one of the isolation
/// [`crate::counter`] indexes (packets, connects/sends, raw sockets, LSM
/// socket operations, TC frames, devices, AF_XDP setups). Capabilities use
/// 0..cap::COUNT and self-protection 16..22.
pub const ISOLATE_FIRST: u32 = 32;

/// Names of the audited isolation counters, in [`crate::counter`] order.
pub const ISOLATE_NAMES: [&str; crate::counter::COUNT as usize] =
    ["packets", "connects_and_sends", "raw_sockets", "lsm_socket_ops", "tc_frames", "devices", "xdp_setups"];

/// [`crate::DenialEvent::audit`]: a real denial.
pub const EVENT_REAL: u32 = 0;
/// [`crate::DenialEvent::audit`]: a would-be denial in audit mode (allowed).
pub const EVENT_AUDIT: u32 = 1;
