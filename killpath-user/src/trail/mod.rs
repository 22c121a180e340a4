//! The activity trail (issue 16): what a recording target did outside
//! itself, recorded by kernel hooks (`killpath-ebpf/src/trail/`) and kept
//! per target in an append-only, hash-chained file in the state dir.
//!
//! - [`net`]: the network hooks' agent side (LISTEN/ACCEPT program, socket offsets);
//! - [`maps`]: the kernel maps (the on switch, loss counters, flows and
//!   file-write counters, the struct offsets the exec event follows);
//! - [`decode`]: a kernel event into a trail record;
//! - [`store`]: the per-target trail file (the journal's chain), bounded by
//!   size with counted loss;
//! - [`query`]: listing with filters, and the summary for a rollback planner.
pub mod decode;
pub mod files;
pub mod loss;
pub mod maps;
pub mod net;
pub mod query;
pub mod store;

/// The name of each event kind (`killpath_common::trail::kind`), as written
/// in trail files and accepted by `--kind` groups.
pub fn kind_name(k: u32) -> &'static str {
    use killpath_common::trail::kind;
    match k {
        kind::EXEC => "exec",
        kind::SIGNAL => "signal",
        kind::CONNECT => "connect",
        kind::LISTEN => "listen",
        kind::ACCEPT => "accept",
        kind::FILE_CREATE => "file-create",
        kind::FILE_WRITE => "file-write",
        kind::FILE_TRUNCATE => "file-truncate",
        kind::FILE_RENAME => "file-rename",
        kind::FILE_UNLINK => "file-unlink",
        kind::ESCAPE => "escape",
        _ => "unknown",
    }
}

/// The group `--kind` selects a record action by: net, exec, file, signal, escape.
pub fn kind_group(action: &str) -> Option<&'static str> {
    match action {
        "exec" => Some("exec"),
        "signal" => Some("signal"),
        "connect" | "listen" | "accept" | "flows" => Some("net"),
        "file-create" | "file-write" | "file-truncate" | "file-rename" | "file-unlink" | "file-writes" => Some("file"),
        "escape" => Some("escape"),
        _ => None,
    }
}

/// The `--kind` values.
pub const GROUPS: &[&str] = &["net", "exec", "file", "signal", "escape"];

/// The `trail` socket command: one target's trail, listed, summarized or
/// verified, or recording switched on or off.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    /// Only records at or after this time (see [`query::parse_since`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only events recorded while the target was at this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Only this group: net, exec, file, signal, escape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub summary: bool,
    #[serde(default)]
    pub verify: bool,
    #[serde(default)]
    pub on: bool,
    #[serde(default)]
    pub off: bool,
}
