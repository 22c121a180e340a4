//! `killpath completions bash|zsh|fish` and `killpath man DIR`: the real
//! shells load the scripts and complete real commands; `man` renders every
//! page without a warning.
use std::process::Command;

use super::{have, run, text};
use crate::harness::BIN;

/// The completion script for `shell`, written to `dir`.
fn script(shell: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let out = run(Command::new(BIN).args(["completions", shell]));
    assert!(out.status.success(), "killpath completions {shell}: {}", text(&out));
    let path = dir.join(format!("killpath.{shell}"));
    std::fs::write(&path, &out.stdout).expect("write script");
    path
}

/// What bash completes for the words of `line` (cursor at its end), with
/// the generated script sourced the way bash-completion would.
fn bash_complete(script: &std::path::Path, line: &str) -> Vec<String> {
    let prog = r#"
        source "$1" || exit 3
        complete -p killpath >/dev/null || exit 4
        read -ra COMP_WORDS <<< "$2"
        [[ "$2" == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
        fn=$(complete -p killpath | sed -E 's/.*-F ([^ ]+).*/\1/')
        "$fn" killpath "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = run(Command::new("bash").args(["--norc", "--noprofile", "-c", prog, "bash"]).arg(script).arg(line));
    assert!(out.status.success(), "bash completing {line:?}: {}", text(&out));
    assert!(out.stderr.is_empty(), "bash completing {line:?} wrote errors: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn service_bash_completes_subcommands_and_options() {
    if !have("bash", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = script("bash", dir.path());
    assert_eq!(bash_complete(&s, "killpath iso"), ["isolate"], "a command by prefix");
    let all = bash_complete(&s, "killpath ");
    for want in ["stop", "throttle", "degrade", "isolate", "completions", "man"] {
        assert!(all.iter().any(|c| c == want), "`killpath <TAB>` lacks {want}: {all:?}");
    }
    assert!(!all.iter().any(|c| c == "verify-probe" || c == "drill-probe"), "internal commands completed: {all:?}");
    assert_eq!(bash_complete(&s, "killpath tripwire ad"), ["add"], "a nested command");
    assert_eq!(bash_complete(&s, "killpath stop web --rea"), ["--reason"], "an option of one command");
    assert_eq!(bash_complete(&s, "killpath completions z"), ["zsh"], "a value of an enum argument");
}

#[test]
fn service_zsh_and_fish_load_their_completions() {
    if !have("zsh", "--version") || !have("fish", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // zsh: the script parses (-n), then loads under compinit and registers
    // its function for killpath.
    let z = script("zsh", dir.path());
    let out = run(Command::new("zsh").arg("-n").arg(&z));
    assert!(out.status.success() && out.stderr.is_empty(), "zsh -n: {}", text(&out));
    let fpath = dir.path().join("zfunc");
    std::fs::create_dir_all(&fpath).expect("mkdir");
    std::fs::copy(&z, fpath.join("_killpath")).expect("copy");
    let prog =
        format!("fpath=({} $fpath); autoload -Uz compinit; compinit -u -d {}/zcompdump; print -r -- $_comps[killpath]", fpath.display(), dir.path().display());
    let out = run(Command::new("zsh").args(["-f", "-c", &prog]));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "_killpath", "zsh compinit: {}", text(&out));
    // fish: the script parses, and fish itself completes from it.
    let f = script("fish", dir.path());
    let out = run(Command::new("fish").arg("--no-execute").arg(&f));
    assert!(out.status.success() && out.stderr.is_empty(), "fish --no-execute: {}", text(&out));
    let complete = |line: &str| {
        let prog = format!("source {}; complete -C '{line}'", f.display());
        let out = run(Command::new("fish").args(["--no-config", "-c", &prog]));
        assert!(out.status.success(), "fish completing {line:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(complete("killpath iso"), ["isolate"], "fish: a command by prefix");
    assert!(complete("killpath stop web --rea").iter().any(|c| c == "--reason"), "fish: an option");
}

#[test]
fn service_man_pages_render_without_warnings() {
    if !have("man", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let man1 = dir.path().join("man1");
    let out = run(Command::new(BIN).arg("man").arg(&man1));
    assert!(out.status.success(), "killpath man: {}", text(&out));
    let mut pages: Vec<_> = std::fs::read_dir(&man1).expect("man1").map(|e| e.expect("entry").path()).collect();
    pages.sort();
    let listed: Vec<_> = String::from_utf8_lossy(&out.stdout).lines().map(std::path::PathBuf::from).collect();
    assert_eq!(listed, pages, "`killpath man` lists the pages it wrote");
    // One page per visible command, nested ones too; none for internal ones.
    let help = run(Command::new(BIN).arg("--help"));
    let names: Vec<String> = pages.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    for want in ["killpath.1", "killpath-stop.1", "killpath-isolate.1", "killpath-tripwire-add.1", "killpath-man.1"] {
        assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("verify-probe") || n.contains("drill-probe")), "internal pages: {names:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("stop"), "help: {}", text(&help));
    for page in &pages {
        // --warnings: groff reports every problem in the page's roff.
        let out = run(Command::new("man").args(["--warnings", "-l"]).arg(page).env("MANPAGER", "cat").env("PAGER", "cat").env("MANWIDTH", "100"));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && out.stderr.is_empty(), "man -l {}: {}", page.display(), text(&out));
        assert!(shown.contains("NAME") && shown.contains("SYNOPSIS"), "man -l {} rendered no NAME/SYNOPSIS: {shown}", page.display());
    }
    // The text comes from the clap doc comments.
    let stop = run(Command::new("man").args(["-l"]).arg(man1.join("killpath-stop.1")).env("MANPAGER", "cat").env("MANWIDTH", "200"));
    assert!(String::from_utf8_lossy(&stop.stdout).contains("SIGKILL every task"), "killpath-stop.1: {}", text(&stop));
}
