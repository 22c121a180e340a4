//! `killpath run --no-privileges` and `--user`: on a kernel without BPF
//! LSM (this host) a workload started that way cannot move itself out of
//! its cgroup, load BPF or signal a process outside, judged from outside
//! (where its pid is, whether the outside process lives, its
//! /proc/PID/status); and `run`/`status` say whether a target's tasks
//! could escape.
use std::{
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{cgroup_line, cgroup_rel, make_cgroup},
        process::{py, spawn_outside, text},
    },
};

/// Tries three escapes and prints the errno of each (0: it worked):
/// writing its pid into argv[2] (another cgroup's cgroup.procs),
/// bpf(BPF_MAP_CREATE), SIGKILL to pid argv[1] (outside the target). Then
/// sleeps, so the test can look at it from outside.
const ESCAPES_PY: &str = r#"
import ctypes, json, os, signal, sys, time
res = {}
try:
    with open(sys.argv[2], "w") as f:
        f.write(str(os.getpid()))
    res["move"] = 0
except OSError as e:
    res["move"] = e.errno
libc = ctypes.CDLL(None, use_errno=True)
# union bpf_attr for BPF_MAP_CREATE: map_type ARRAY (2), key 4, value 4, 1 entry.
attr = (ctypes.c_uint32 * 16)(2, 4, 4, 1)
nr = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))
res["bpf"] = 0 if fd >= 0 else ctypes.get_errno()
try:
    os.kill(int(sys.argv[1]), signal.SIGKILL)
    res["kill"] = 0
except OSError as e:
    res["kill"] = e.errno
print(json.dumps(res), flush=True)
time.sleep(60)
"#;

const EPERM: i64 = 1;
const EACCES: i64 = 13;

/// `killpath --json run NAME FLAGS -- CMD`, stdout and stderr piped; waits
/// until CMD was exec'd. Returns the child (the workload's pid is its pid).
fn run_json(agent: &Agent, name: &str, flags: &[&str], cmd: &[&str]) -> Child {
    let mut args = vec!["--json", "run", name];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    let child = agent.cmd(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn run");
    let pid = child.id();
    let comm = std::path::Path::new(cmd[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    wait_until(Duration::from_secs(20), || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .unwrap_or_else(|| panic!("`killpath run {name}` never exec'd {comm}"));
    child
}

/// The first line of `r`, parsed as JSON.
fn first_line(r: &mut impl std::io::Read) -> Value {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while r.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&buf)))
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn status_privileges(agent: &Agent, name: &str) -> Value {
    agent.json(&["status", name])["targets"][0]["privileges"].clone()
}

/// Reaps on drop.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn no_privileges_root_workload_cannot_escape() {
    let Some(agent) = Agent::start() else { return };
    let other = make_cgroup(agent.cgroup_parent.join("elsewhere"));
    let victim = spawn_outside(&["sleep", "1000"]);
    let procs = other.path().join("cgroup.procs");
    let victim_pid = victim.pid().to_string();
    let procs_s = procs.to_string_lossy().into_owned();
    let mut run = Killed(run_json(&agent, "np", &["--no-privileges"], &[py(), "-c", ESCAPES_PY, &victim_pid, &procs_s]));
    let pid = run.0.id();

    let verdict = first_line(run.0.stderr.as_mut().unwrap());
    assert_eq!(verdict["privileges"]["escape"], "prevented", "{verdict}");
    let res = first_line(run.0.stdout.as_mut().unwrap());
    // Every attempt failed with a permission error.
    assert!([EPERM, EACCES].contains(&res["move"].as_i64().unwrap()), "moving itself out: {res}");
    // With kernel.unprivileged_bpf_disabled=0 any user may create an
    // array map (and load socket filters): nothing to assert then.
    let unpriv_bpf = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default();
    if unpriv_bpf.trim() != "0" {
        assert_eq!(res["bpf"], EPERM, "bpf(BPF_MAP_CREATE): {res}");
    }
    assert_eq!(res["kill"], EPERM, "kill outside: {res}");

    // From outside: still in its target, the outside process lives, and
    // the kernel shows no privilege left.
    let target_rel = cgroup_rel(agent.target_cgroup("np").path());
    assert_eq!(cgroup_line(pid as i32).as_deref(), Some(target_rel.as_str()), "the workload left its cgroup");
    assert!(other.procs().is_empty(), "something got into the other cgroup: {:?}", other.procs());
    assert!(alive(victim.pid()), "the workload killed a process outside");
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534", "root without --user becomes nobody");
    for k in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(status_field(pid, k), "0000000000000000", "{k}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let p = status_privileges(&agent, "np");
    assert_eq!(p["escape"], "prevented", "{p}");
}

#[test]
fn plain_root_workload_can_escape_and_status_says_so() {
    let Some(agent) = Agent::start() else { return };
    // The control for the test above: the same attempts from a plain root
    // workload succeed on this kernel (nothing else stops them), so the
    // refusals above come from --no-privileges.
    let lsm = agent.json(&["status"])["isolation"]["lsm"].as_str().unwrap_or_default().to_owned();
    let other = make_cgroup(agent.cgroup_parent.join("elsewhere"));
    let victim = spawn_outside(&["sleep", "1000"]);
    let victim_pid = victim.pid().to_string();
    let procs_s = other.path().join("cgroup.procs").to_string_lossy().into_owned();
    let mut run = Killed(run_json(&agent, "plain", &[], &[py(), "-c", ESCAPES_PY, &victim_pid, &procs_s]));
    let pid = run.0.id();
    let verdict = first_line(run.0.stderr.as_mut().unwrap());
    assert_eq!(verdict["privileges"]["escape"], "possible", "{verdict}");
    let why = verdict["privileges"]["why"].as_str().unwrap();
    assert!(why.starts_with("root with CAP_SYS_ADMIN"), "{why}");
    // While it is still in the target (before its attempts), status says so too.
    let res = first_line(run.0.stdout.as_mut().unwrap());
    if lsm.starts_with("unavailable") {
        assert!(why.contains("no BPF LSM"), "{why}");
        assert_eq!(res["move"], 0, "a root workload could not move itself: the control proves nothing: {res}");
        // The move went through, and membership follows the task: the
        // agent puts it back into its target (detected, not prevented).
        let target_rel = cgroup_rel(agent.target_cgroup("plain").path());
        assert!(
            wait_until(Duration::from_secs(3), || cgroup_line(pid as i32).as_deref() == Some(target_rel.as_str())).is_some(),
            "the escaped workload was not moved back into its target: {:?}",
            cgroup_line(pid as i32)
        );
        assert!(other.procs().is_empty(), "the escaped workload stayed in the other cgroup: {:?}", other.procs());
    }
    assert_eq!(res["kill"], 0, "{res}");
    assert!(wait_until(Duration::from_secs(5), || !alive(victim.pid())).is_some());
    // A root task still inside: status names the escape.
    let _sleeper = Killed(run_json(&agent, "sleeper", &[], &["sleep", "1000"]));
    let p = status_privileges(&agent, "sleeper");
    assert_eq!(p["escape"], "possible", "{p}");
    assert!(p["why"].as_str().unwrap().contains("root with CAP_SYS_ADMIN"), "{p}");
    let human = text(&agent.kp(&["status", "sleeper"]).stdout);
    assert!(human.contains("ESCAPE POSSIBLE: root with CAP_SYS_ADMIN"), "{human}");
}

#[test]
fn user_workload_runs_as_that_user() {
    let Some(agent) = Agent::start() else { return };
    let run = Killed(run_json(&agent, "u", &["--user", "nobody"], &["sleep", "1000"]));
    let pid = run.0.id();
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups"), "65534");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(cgroup_line(pid as i32).as_deref(), Some(cgroup_rel(agent.target_cgroup("u").path()).as_str()));
    assert_eq!(status_privileges(&agent, "u")["escape"], "prevented");

    // By number, with a group; and an unknown user creates no target.
    let run2 = Killed(run_json(&agent, "n", &["--user", "4242:4343"], &["sleep", "1000"]));
    assert_eq!(status_field(run2.0.id(), "Uid"), "4242 4242 4242 4242");
    assert_eq!(status_field(run2.0.id(), "Gid"), "4343 4343 4343 4343");
    let out = agent.kp(&["run", "bad", "--user", "no-such-user-kp", "--", "true"]);
    assert!(!out.status.success());
    assert!(!agent.target_cgroup("bad").exists(), "a target was created for an unknown user");
}

#[test]
fn adopt_says_whether_the_adopted_tasks_can_escape() {
    let Some(agent) = Agent::start() else { return };
    let root = spawn_outside(&["sleep", "1000"]);
    let r = agent.json(&["adopt", "rooted", "--pid", &root.pid().to_string()]);
    assert_eq!(r["privileges"]["escape"], "possible", "{r}");
    assert_eq!(r["privileges"]["pid"], root.pid(), "{r}");
    let human = text(&agent.kp(&["status", "rooted"]).stdout);
    assert!(human.contains("ESCAPE POSSIBLE"), "{human}");

    // Non-root, no capabilities, no_new_privs: prevented. Without
    // no_new_privs a setuid-root program could make it root: possible.
    let safe = spawn_outside(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "sleep", "1000"]);
    let unsafe_ = spawn_outside(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "1000"]);
    for pid in [safe.pid(), unsafe_.pid()] {
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")).expect("exec'd sleep");
    }
    let r = agent.json(&["adopt", "safe", "--pid", &safe.pid().to_string()]);
    assert_eq!(r["privileges"]["escape"], "prevented", "{r}");
    let r = agent.json(&["adopt", "nnp-off", "--pid", &unsafe_.pid().to_string()]);
    assert_eq!(r["privileges"]["escape"], "possible", "{r}");
    assert!(r["privileges"]["why"].as_str().unwrap().contains("no_new_privs is off"), "{r}");
}
