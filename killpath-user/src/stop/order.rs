//! The order in which a hard stop writes `cgroup.freeze` and `cgroup.kill`.
//!
//! The agent picks [`StopOrder::Auto`]; the others exist so that the bench
//! can put every order side by side in one run (`stop` with `"order"`), and
//! so that the choice Auto makes stays an measured one. Every order ends
//! with the whole subtree SIGKILLed and leaves 0 survivors; they differ in
//! when the halt is reached and what observes it.
use serde::{Deserialize, Serialize};

/// How a hard stop reaches its halt.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StopOrder {
    /// The agent's choice: `cgroup.kill` alone for a small target
    /// (≤ `SMALL_TARGET` processes); for a larger one the fastest halt with
    /// 0 survivors in the bench for the stop thread's class:
    /// [`StopOrder::KillGuardFirst`] when it is real-time,
    /// [`StopOrder::FreezeWaitKill`] otherwise (see `large_order`).
    #[default]
    Auto,
    /// `cgroup.freeze`, wait for `frozen 1` (at most `FREEZE_WAIT`), arm
    /// the guard, `cgroup.kill`. Halt: `frozen 1`, else the kill write.
    FreezeWaitKill,
    /// Arm the guard, then `cgroup.kill` alone. Halt: the kill write
    /// returned (every task has SIGKILL pending).
    KillGuardFirst,
    /// `cgroup.freeze` then `cgroup.kill` at once, while another thread
    /// waits for `frozen 1`. Halt: the first of `frozen 1` and the kill
    /// write returning (a task killed after it froze leaves the freezer
    /// only to die: no user code runs between).
    FreezeKillRace,
}

impl StopOrder {
    /// The order's name, as in a request and a report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::FreezeWaitKill => "freeze-wait-kill",
            Self::KillGuardFirst => "kill-guard-first",
            Self::FreezeKillRace => "freeze-kill-race",
        }
    }
}
