//! A poisoned journal (a write failed: the disk was full) makes the agent
//! refuse every change until it restarts, a stop included: it answers with
//! the distinct code `journal-poisoned`, and `killpath stop` then stops the
//! target itself (the kernel-only path: cgroup.kill, the guard through the
//! pinned map), says so, and journals to the fallback journal (which the
//! agent imports when restarted: tested in `fallback`). The poisoning is real: the agent's state
//! dir is a small tmpfs, filled to the last page, and records big enough
//! to use up the zeros kept ahead of the journal's tail are appended until
//! a write fails with ENOSPC. Judged from outside: the victim's process is
//! gone (from /proc), the agent still answers reads.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{alive, journal_text, wait_until, Agent},
    support::process::{show, sleeping_target, text},
};

/// A tmpfs mounted over a directory, lazily unmounted when dropped (the
/// agent may still hold files open on it).
pub(crate) struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `dir`.
pub(crate) fn tmpfs(dir: &Path, size: &str) -> Tmpfs {
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir).status().expect("mount");
    assert!(st.success(), "mounting a tmpfs on {}", dir.display());
    Tmpfs(dir.to_owned())
}

/// Fills the filesystem of `dir` to its last page with a file `filler`.
pub(crate) fn fill(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("filler");
    // Pages, then single bytes: not even a small record fits afterwards.
    for chunk in [4096, 1] {
        let buf = vec![0xa5u8; chunk];
        while matches!(f.write(&buf), Ok(n) if n > 0) {}
    }
    path
}

/// One raw request on the agent's socket; the response line, parsed.
fn request(agent: &Agent, line: &str) -> Value {
    use std::io::{BufRead, BufReader};
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s.write_all(format!("{line}\n").as_bytes()).expect("send");
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).expect("answer");
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad answer ({e}): {resp}"))
}

#[test]
fn journal_poisoned_stop_answers_the_code_and_the_cli_stops_directly() {
    // The state dir is a small tmpfs from the agent's first start.
    let mut mounted = None;
    let Some(agent) = Agent::start_prepared(&[], |dir| mounted = Some(tmpfs(dir, "4m"))) else { return };
    let _tmpfs = mounted;
    let (_busy_run, _) = sleeping_target(&agent, "busy");
    let (_victim_run, victim) = sleeping_target(&agent, "victim");
    let (_victim2_run, victim2) = sleeping_target(&agent, "victim2");
    let filler = fill(&agent.state_dir, "filler");
    // Records of ~48 KiB (a long reason) use up the zeros ahead of the tail
    // (1 MiB) within a few dozen commands; then a write fails (ENOSPC).
    let reason = "x".repeat(48 * 1024);
    let throttle = serde_json::json!({"id": 1, "cmd": "throttle", "args": {"name": "busy", "syscalls": 100000, "reason": reason}}).to_string();
    let mut codes = Vec::new();
    let poisoned = (0..200).find_map(|_| {
        let r = request(&agent, &throttle);
        let code = r["error"]["code"].as_str().unwrap_or("ok").to_owned();
        codes.push(code.clone());
        (code == "journal-poisoned").then_some(r)
    });
    let poisoned = poisoned.unwrap_or_else(|| panic!("the journal never poisoned; codes: {codes:?}\n{}", agent.log_text()));
    eprintln!("poisoned after {} commands: {codes:?}", codes.len());
    let msg = poisoned["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("poisoned") && msg.contains("write"), "the refusal names the failure: {poisoned}");
    // The disk is still full: a stop through the agent is refused with
    // the same code, and the agent keeps serving reads.
    let r = request(&agent, r#"{"id":2,"cmd":"stop","args":{"name":"victim"}}"#);
    assert_eq!(r["error"]["code"], "journal-poisoned", "{r}");
    assert!(alive(victim), "the refused stop acted anyway");
    let st = request(&agent, r#"{"id":3,"cmd":"status","args":{}}"#);
    assert_eq!(st["ok"], true, "{st}");
    // Whatever the poisoned journal gave back when it stopped appending is
    // taken too: the disk is full.
    let filler2 = fill(&agent.state_dir, "filler2");
    // The CLI's stop goes to the cgroup itself and says why, even though
    // its own fallback journal cannot be written either (the workload
    // filled the disk): the stop happens, the answer says it is not
    // journaled.
    let out = agent.kp(&["--json", "stop", "victim"]);
    assert!(out.status.success(), "direct stop failed on a full disk: {}", show(&out));
    let err = text(&out.stderr);
    assert!(err.contains("journal-poisoned") && err.contains("stopping victim directly through its cgroup"), "stderr must say why: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(&out)));
    assert_eq!(v["fallback"], true, "{v}");
    assert!(v["agent_error"].as_str().unwrap_or_default().contains("journal-poisoned"), "{v}");
    assert!(v["journal_error"].is_string(), "a full disk must be reported as a journal error: {v}");
    assert_eq!(v["survivors"], 0, "{v}");
    assert!(wait_until(Duration::from_secs(2), || !alive(victim)).is_some(), "the victim {victim} survived the direct stop");
    // The human output says the agent was bypassed, why, and that the
    // stop is not journaled.
    let human = agent.kp(&["stop", "victim"]);
    let said = text(&human.stdout);
    assert!(said.contains("agent bypassed (") && said.contains("journal-poisoned") && said.contains("NOT JOURNALED"), "{}", show(&human));
    // Space again: the agent's journal stays poisoned (nothing is appended
    // until it restarts), and the CLI's direct stop is journaled.
    for f in [&filler, &filler2] {
        std::fs::remove_file(f).expect("remove filler");
    }
    let r = request(&agent, r#"{"id":4,"cmd":"stop","args":{"name":"victim2"}}"#);
    assert_eq!(r["error"]["code"], "journal-poisoned", "{r}");
    let out = agent.kp(&["--json", "stop", "victim2"]);
    assert!(out.status.success(), "direct stop failed: {}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(&out)));
    assert_eq!(v["journal_error"], Value::Null, "{v}");
    assert_eq!(v["survivors"], 0, "{v}");
    assert!(wait_until(Duration::from_secs(2), || !alive(victim2)).is_some(), "the victim {victim2} survived the direct stop");
    // The direct stop is in the fallback journal, for the agent to import
    // at its next start (tested in `fallback`).
    let fallback = journal_text(&agent.state_dir.join(killpath::state_dir::FALLBACK_JOURNAL_FILE));
    assert!(fallback.contains("journal-poisoned") && fallback.contains("\"victim2\""), "the direct stop was not journaled:\n{fallback}");
}
