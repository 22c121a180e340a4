//! The four levels and normal: one [`Level`] type for names, parsing,
//! order, and what stepping down from each level undoes. The kernel reads
//! the same numbers (`killpath_common::level`) from `KP_TARGETS`.
use std::fmt;

use killpath_common::level as k;

use crate::error::{Error, Result};

/// Enforcement level of a target. Levels are cumulative and ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Normal,
    Throttle,
    Degrade,
    Isolate,
    Stopped,
}

/// What leaving a level (stepping down below it) undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Leaving stopped: the cgroup is thawed (its tasks are dead; a
    /// restarted workload may run again).
    Thaw,
    /// Leaving isolate: the channels reopen (the level in `KP_TARGETS`).
    Reconnect,
    /// Leaving degrade: every capability comes back and the allow-lists go.
    GrantAll,
    /// Leaving throttle: every ceiling is lifted.
    LiftCeilings,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [Level::Normal, Level::Throttle, Level::Degrade, Level::Isolate, Level::Stopped];

    /// The number the kernel programs compare.
    pub fn as_u32(self) -> u32 {
        match self {
            Level::Normal => k::NORMAL,
            Level::Throttle => k::THROTTLE,
            Level::Degrade => k::DEGRADE,
            Level::Isolate => k::ISOLATE,
            Level::Stopped => k::STOPPED,
        }
    }

    /// The level of a kernel/registry number.
    pub fn from_u32(n: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_u32() == n)
    }

    /// Human name, as on the socket and in the journal.
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Throttle => "throttle",
            Level::Degrade => "degrade",
            Level::Isolate => "isolate",
            Level::Stopped => "stopped",
        }
    }

    /// Parses `escalate --to` / `restore --to`: a name or its number
    /// (`stop` is accepted for stopped).
    pub fn parse(s: &str) -> Result<Self> {
        let found = match s {
            "stop" => Some(Level::Stopped),
            _ => Self::ALL.into_iter().find(|l| l.name() == s || l.as_u32().to_string() == s),
        };
        found.ok_or_else(|| Error::InvalidRequest(format!("unknown level {s:?}: expected normal, throttle, degrade, isolate or stop")))
    }

    /// The next level up, if any.
    pub fn up(self) -> Option<Self> {
        Self::from_u32(self.as_u32() + 1)
    }

    /// The next level down, if any.
    pub fn down(self) -> Option<Self> {
        self.as_u32().checked_sub(1).and_then(Self::from_u32)
    }

    /// What leaving this level undoes.
    pub fn undo(self) -> Option<Undo> {
        match self {
            Level::Normal => None,
            Level::Throttle => Some(Undo::LiftCeilings),
            Level::Degrade => Some(Undo::GrantAll),
            Level::Isolate => Some(Undo::Reconnect),
            Level::Stopped => Some(Undo::Thaw),
        }
    }

    /// What stepping down from `from` to `to` undoes, highest level first.
    pub fn undone(from: Level, to: Level) -> Vec<Undo> {
        Self::ALL.into_iter().rev().filter(|l| *l > to && *l <= from).filter_map(Level::undo).collect()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Human name of a kernel/registry level number ("unknown" if none).
pub fn name_of(n: u32) -> &'static str {
    Level::from_u32(n).map_or("unknown", Level::name)
}

/// Parses a level name into the kernel's number.
pub fn parse(s: &str) -> Result<u32> {
    Level::parse(s).map(Level::as_u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_order() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()).unwrap(), l);
            assert_eq!(Level::parse(&l.as_u32().to_string()).unwrap(), l);
            assert_eq!(Level::from_u32(l.as_u32()), Some(l));
        }
        assert_eq!(Level::parse("stop").unwrap(), Level::Stopped);
        assert!(Level::parse("panic").is_err());
        assert_eq!(name_of(9), "unknown");
        assert_eq!(Level::Normal.down(), None);
        assert_eq!(Level::Stopped.up(), None);
        assert_eq!(Level::Degrade.up(), Some(Level::Isolate));
    }

    #[test]
    fn stepping_down_undoes_each_level_left() {
        assert_eq!(Level::undone(Level::Stopped, Level::Normal), [Undo::Thaw, Undo::Reconnect, Undo::GrantAll, Undo::LiftCeilings]);
        assert_eq!(Level::undone(Level::Isolate, Level::Degrade), [Undo::Reconnect]);
        assert!(Level::undone(Level::Throttle, Level::Throttle).is_empty());
    }
}
