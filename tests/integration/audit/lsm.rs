//! With BPF LSM (the VM): `degrade --revoke exec,fs.write --audit` lets a
//! workload exec and write (exit codes 0, the file exists), counts each
//! exec it would have refused exactly; a real revoke then refuses both.
use std::{path::Path, process::Command};

use super::{denials, row, would};
use crate::{
    harness::Agent,
    support::{
        process::{run_bg, show, text},
        status::need_lsm,
    },
};

const N: u32 = 10;

/// A shell moves itself into `cg` (the open of cgroup.procs happens
/// outside), then runs /bin/true N times and writes FILE with builtins:
/// "EXECS_OK WRITE_STATUS".
fn job(cg: &Path, file: &Path) -> (u32, i32) {
    let script = r#"echo 0 > "$0/cgroup.procs" || exit 9
ok=0; i=0
while [ $i -lt $2 ]; do /bin/true 2>/dev/null && ok=$((ok+1)); i=$((i+1)); done
(echo data > "$1") 2>/dev/null; w=$?
echo "$ok $w""#;
    let out = Command::new("timeout").args(["-s", "KILL", "60", "sh", "-c", script]).arg(cg).arg(file).arg(N.to_string()).output().expect("run the job");
    assert!(out.status.success(), "job: {}", show(&out));
    let t = text(&out.stdout);
    let mut it = t.split_whitespace().map(|s| s.parse::<i32>().unwrap_or_else(|e| panic!("job output {t:?}: {e}")));
    (it.next().expect("execs") as u32, it.next().expect("write status"))
}

#[test]
fn lsm_audit_degrade_exec_and_fs_write_then_real_revoke() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    let r = agent.json(&["degrade", "web", "--revoke", "exec,fs.write", "--audit"]);
    assert_eq!(r["level"], "normal", "{r}");

    let file = agent.dir.path().join("audited.txt");
    let (execs, w) = job(&cg, &file);
    assert_eq!((execs, w), (N, 0), "every exec and the write succeeded");
    assert_eq!(std::fs::read_to_string(&file).expect("the file exists"), "data\n");
    assert_eq!(would(&agent, "web", "exec"), N as u64, "one would-be denial per exec, exactly: {}", row(&agent, "web"));
    // Creating a file passes several checks that would each refuse it
    // (path_mknod, then file_open, ...): each counts; a real revoke stops
    // at the first. Bounded, and never zero.
    let writes = would(&agent, "web", "fs.write");
    eprintln!("fs.write would-be denials for one file created by a shell redirection: {writes}");
    assert!((1..=4).contains(&writes), "fs.write would-be denials for one created file: {writes}");
    assert_eq!((denials(&agent, "web", "exec"), denials(&agent, "web", "fs.write")), (0, 0), "no real denial");

    // Real revoke: refused, counted as real denials.
    agent.json(&["degrade", "web", "--revoke", "exec,fs.write"]);
    let file2 = agent.dir.path().join("refused.txt");
    let (execs, w) = job(&cg, &file2);
    assert_eq!(execs, 0, "every exec refused");
    assert_ne!(w, 0, "the write refused");
    assert!(!file2.exists(), "no file created");
    assert_eq!(denials(&agent, "web", "exec"), N as u64, "{}", row(&agent, "web"));
    assert_eq!(would(&agent, "web", "exec"), N as u64, "audit count unchanged: enforcement wins");
}
