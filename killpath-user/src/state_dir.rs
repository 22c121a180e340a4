//! What the agent keeps in its state dir (`--state-dir`), shared with the
//! CLI's no-agent fallback, which reads it when the agent does not answer.
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How the agent was started (`agent::AgentConfig`, written at start): the
/// CLI's fallback reads where the pins are from it.
pub const AGENT_FILE: &str = "agent.json";
/// The journal.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Journal the CLI writes when it had to act without the agent; the agent
/// imports it when it comes back.
pub const FALLBACK_JOURNAL_FILE: &str = "fallback-journal.jsonl";
/// The former single-file target registry (now `targets/NAME.json`, see
/// `target::TARGETS_DIR`; migrated on the agent's start).
pub const TARGETS_FILE: &str = "targets.json";
/// Actions waiting for approval (`agent::pending`).
pub const PENDING_FILE: &str = "pending.json";

/// The part of `agent.json` the fallback needs.
#[derive(Debug, Deserialize)]
pub struct AgentFile {
    pub pin_dir: PathBuf,
}

impl AgentFile {
    /// Reads `agent.json` from `state_dir`, if readable.
    pub fn read(state_dir: &Path) -> Option<Self> {
        std::fs::read(state_dir.join(AGENT_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }
}
