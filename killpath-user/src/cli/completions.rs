//! `killpath completions SHELL` and `killpath man DIR`: shell completion
//! scripts (`clap_complete`) and manual pages (`clap_mangen`), both
//! generated from the clap definitions in [`super::Cli`], so they never
//! drift from the real commands. Hidden (internal) commands get no page
//! and are not completed.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;

use crate::error::{Error, Result};

/// The shells a completion script is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(s: Shell) -> Self {
        match s {
            Shell::Bash => Self::Bash,
            Shell::Zsh => Self::Zsh,
            Shell::Fish => Self::Fish,
        }
    }
}

/// The binary's name as installed (and as the scripts complete it).
const BIN: &str = "killpath";

/// The clap definitions under the installed binary's name (the package's
/// name is killpath-user).
fn command() -> clap::Command {
    super::Cli::command().name(BIN).bin_name(BIN)
}

/// [`command`] without its hidden (internal) commands: clap_complete
/// completes hidden commands, clap_mangen skips them.
fn visible_command() -> clap::Command {
    let full = command();
    let mut cmd = clap::Command::new(BIN).bin_name(BIN).version(env!("CARGO_PKG_VERSION")).subcommand_required(true).args(full.get_arguments().cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd.subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Writes the completion script for `shell` to `out`.
pub fn print(shell: Shell, out: &mut dyn Write) -> Result<()> {
    let mut cmd = visible_command();
    let mut buf = Vec::new();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, BIN, &mut buf);
    out.write_all(&buf).map_err(Error::io("writing the completion script"))
}

/// Writes `killpath.1` and one page per visible command
/// (`killpath-stop.1`, `killpath-tripwire-add.1`, ...) into `dir`, which is
/// created if missing; returns the pages written, sorted.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    clap_mangen::generate_to(command(), dir).map_err(Error::io(format!("writing manual pages to {}", dir.display())))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(BIN) && n.ends_with(".1")))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_a_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            print(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("isolate"), "{shell:?} script names no `isolate`");
            assert!(!text.contains("verify-probe"), "{shell:?} script completes the internal verify-probe");
        }
    }

    #[test]
    fn man_pages_cover_visible_commands_only() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages.iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
        for want in ["killpath.1", "killpath-stop.1", "killpath-tripwire-add.1", "killpath-completions.1"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("probe") && n != "killpath-probe.1"), "internal probe pages: {names:?}");
    }
}
