//! An exec is identified by the file the kernel ran, not only by the name
//! the workload gave it: a relative path through a symlink and an
//! anonymous memfd run by descriptor (`/dev/fd/N`) are both recorded with
//! the executed file's device and inode, and with its real location
//! (`exe`), checked from outside with stat(2) and /proc.
use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use serde_json::Value;

use super::{records, run_recorded};
use crate::harness::{skip, wait_until, Agent};
use crate::support::process::py;

fn dev_of(m: &std::fs::Metadata) -> String {
    format!("{}:{}", nix::sys::stat::major(m.dev()), nix::sys::stat::minor(m.dev()))
}

#[test]
fn trail_exec_records_the_file_really_run() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let memfd = "import os\nfd = os.memfd_create('hidden', 0)\nos.write(fd, open('/bin/sleep', 'rb').read())\nos.execve(fd, ['hidden', '60'], {})";
    let script = format!("cd {d} && cp /bin/sleep napper && ln -s napper alias && ./alias 60 & {py} -c \"{memfd}\" & touch {d}/done; exec sleep 60", py = py());
    let mut child = run_recorded(&a, "tr-exe", &script);
    wait_until(Duration::from_secs(15), || dir.path().join("done").exists()).expect("script ran");
    let find = |pred: &dyn Fn(&Value) -> bool| records(&a, "tr-exe", &["--kind", "exec"]).into_iter().find(|r| pred(r));
    let mut alias = None;
    let mut hidden = None;
    wait_until(Duration::from_secs(15), || {
        alias = find(&|r| r["path"] == "./alias");
        hidden = find(&|r| r["argv"][0] == "hidden");
        alias.is_some() && hidden.is_some()
    })
    .unwrap_or_else(|| panic!("both execs in the trail: {:#?}", records(&a, "tr-exe", &[])));
    let (alias, hidden) = (alias.expect("alias"), hidden.expect("hidden"));
    // The symlinked copy: the file's own inode (stat from outside) and where it is.
    let napper = std::fs::metadata(dir.path().join("napper")).expect("stat napper");
    assert_eq!(alias["ino"], napper.ino(), "{alias:#}");
    assert_eq!(alias["dev"], dev_of(&napper), "{alias:#}");
    assert_eq!(alias["exe"], format!("{d}/napper"), "the real location, not ./alias: {alias:#}");
    // The memfd: named only by descriptor; its identity is what /proc shows of the running process.
    assert!(hidden["path"].as_str().is_some_and(|p| p.starts_with("/dev/fd/")), "{hidden:#}");
    let pid = hidden["pid"].as_u64().expect("pid");
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).expect("the memfd process runs");
    assert_eq!(hidden["ino"], exe.ino(), "{hidden:#}");
    assert_eq!(hidden["dev"], dev_of(&exe), "{hidden:#}");
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).expect("readlink").display().to_string();
    assert!(link.contains("memfd:hidden"), "{link}");
    assert_eq!(hidden["exe"], link, "{hidden:#}");
    let _ = child.kill();
    let _ = child.wait();
}
