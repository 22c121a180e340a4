//! Self-protection with BPF LSM (in the VM): a root task inside a target,
//! at level normal, tries every way out of the kill path the issue lists;
//! each fails with EPERM, judged from outside (where its pid is, the
//! agent's /proc status, the pins and state files on disk, the mount
//! table), and each refusal is counted per target and streamed as an event.
use std::{collections::BTreeSet, path::Path, time::Duration};

use serde_json::Value;

use crate::{
    degrade::events::Events,
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{cgroup_line, cgroup_rel},
        process::{py, run_bg},
        status::{need_lsm, target_row},
    },
};

/// Every attack, in order; writes `{attack: errno}` to argv[1] and sleeps.
const ATTACKER: &str = r#"
import ctypes, json, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
out, root, parent, target, agent, pins, state, pin = sys.argv[1:9]
a = int(agent)
me = str(os.getpid())
r = {}
def attempt(name, f):
    try:
        f()
        r[name] = 0
    except OSError as e:
        r[name] = e.errno
def check(ret, what):
    if ret < 0:
        raise OSError(ctypes.get_errno(), what)
    return ret
def write(p, s):
    with open(p, 'w') as f:
        f.write(s)
attempt('procs_root', lambda: write(root + '/cgroup.procs', me))
attempt('procs_parent', lambda: write(parent + '/cgroup.procs', me))
attempt('threads_root', lambda: write(root + '/cgroup.threads', str(threading.get_native_id())))
def clone3():
    # clone3(CLONE_INTO_CGROUP) with a directory fd opened read-only.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    args = (ctypes.c_uint64 * 11)(0x200000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, fd)
    pid = libc.syscall(435, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        os._exit(0)
    err = ctypes.get_errno()
    os.close(fd)
    if pid < 0:
        raise OSError(err, 'clone3')
    os.waitpid(pid, 0)
attempt('clone3_root', clone3)
def bpf():
    attr = (ctypes.c_uint32 * 18)(2, 4, 4, 1)
    fd = check(libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr)), 'bpf')
    os.close(fd)
attempt('bpf_map_create', bpf)
attempt('kill9_agent', lambda: os.kill(a, 9))
attempt('sigstop_agent', lambda: os.kill(a, 19))
def ptrace():
    check(libc.ptrace(16, a, 0, 0), 'ptrace')
    libc.ptrace(17, a, 0, 0)
attempt('ptrace_agent', ptrace)
attempt('unlink_pin', lambda: os.unlink(pin))
attempt('rename_pin', lambda: os.rename(pin, pin + '.x'))
attempt('rmdir_pins', lambda: os.rmdir(pins))
attempt('write_state', lambda: write(state + '/agent.json', '{}'))
attempt('create_state', lambda: write(state + '/forged.json', '{}'))
attempt('rename_state', lambda: os.rename(state + '/agent.json', state + '/agent.old'))
attempt('mount_tmpfs_on_cgroup', lambda: check(libc.mount(b'none', target.encode(), b'tmpfs', 0, None), 'mount'))
def sub():
    os.makedirs(target + '/sub', exist_ok=True)
    write(target + '/sub/cgroup.procs', me)
attempt('procs_own_subtree', sub)
# Its own target's freeze (it would thaw the throttle's pacing freeze)
# is refused; the sub-cgroup it made is its own.
attempt('freeze_own_target', lambda: write(target + '/cgroup.freeze', '1'))
attempt('freeze_own_subtree', lambda: write(target + '/sub/cgroup.freeze', '0'))
write(out + '.tmp', json.dumps(r))
os.rename(out + '.tmp', out)
time.sleep(600)
"#;

/// Every file below `dir`, recursively.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.display().to_string());
        }
    }
    out
}

/// A field of /proc/PID/status.
fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned())).unwrap_or_default()
}

/// The protections, at level normal, for root inside a target; the agent
/// is judged from /proc, the pins and state from the filesystem.
#[test]
fn lsm_self_protection() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    let probe = agent.json(&["probe"]);
    let prots = probe["protections"].as_array().unwrap_or_else(|| panic!("probe lists protections: {probe}"));
    assert_eq!(prots.len(), 7, "{probe}");
    for p in prots {
        assert_eq!(p["on"], true, "with BPF LSM every protection is on: {p}");
    }
    let st = agent.json(&["status"]);
    assert!(st["protections"].as_array().is_some_and(|a| a.iter().all(|p| p["on"] == true)), "{}", st["protections"]);

    let events = Events::start(&agent);
    let mount = killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let target = agent.target_cgroup("attacker");
    let result = agent.dir.path().join("attacks.json");
    let agent_pid = agent.pid();
    let pins_before = files(&agent.pin_dir);
    let agent_json = std::fs::read_to_string(agent.state_dir.join("agent.json")).expect("agent.json");
    // The pin the attacker unlinks and renames: one that exists before it
    // starts (the agent pins more for the attacker's own target).
    let pin = pins_before.iter().find(|p| Path::new(p).is_file()).cloned().expect("the agent pinned its links");
    let args: Vec<String> = vec![
        py().into(),
        "-c".into(),
        ATTACKER.into(),
        result.display().to_string(),
        mount.display().to_string(),
        agent.cgroup_parent.display().to_string(),
        target.path().display().to_string(),
        agent_pid.to_string(),
        agent.pin_dir.display().to_string(),
        agent.state_dir.display().to_string(),
        pin.clone(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _attacker = run_bg(&agent, "attacker", &argv, 1);
    wait_until(Duration::from_secs(60), || result.exists()).unwrap_or_else(|| panic!("the attacker never finished\n{}", agent.log_text()));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    eprintln!("attacks (errno): {r}");
    // Whatever happened, a stopped agent must not hang the rest.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent_pid), nix::sys::signal::Signal::SIGCONT);

    let mut wrong = Vec::new();
    for (attack, errno) in r.as_object().unwrap() {
        let want = if attack.ends_with("_own_subtree") { 0 } else { 1 };
        if errno != want {
            wrong.push(format!("{attack}: errno {errno}, expected {want}"));
        }
    }
    // From outside: the attacker is still inside its target (in the
    // sub-cgroup it was allowed to create).
    let pids = target.procs_recursive();
    let py_pid = *pids.first().unwrap_or_else(|| panic!("the attacker left its target: no task in {}", target.path().display()));
    let line = cgroup_line(py_pid).unwrap_or_default();
    assert!(line.starts_with(&cgroup_rel(target.path())), "pid {py_pid} is at {line}, outside {}", target.path().display());
    let out_of_target: Vec<i32> =
        killpath::kernel::cgroup::Cgroup::new(&mount).procs().into_iter().filter(|p| status_field(*p, "PPid") == py_pid.to_string()).collect();
    assert!(out_of_target.is_empty(), "clone3 put children of the attacker in the root cgroup: {out_of_target:?}");
    // The agent: alive, not stopped, not traced.
    assert!(alive(agent_pid), "the agent was killed from inside a target");
    let state = status_field(agent_pid, "State");
    assert!(!state.starts_with('T') && !state.starts_with('t'), "the agent was stopped: {state}");
    assert_eq!(status_field(agent_pid, "TracerPid"), "0", "the agent was traced");
    // Pins and state files untouched; no tmpfs over the target's cgroup.
    let pins_after = files(&agent.pin_dir);
    let lost: Vec<&String> = pins_before.difference(&pins_after).collect();
    assert!(lost.is_empty(), "pins removed or renamed from inside a target: {lost:?}");
    assert!(Path::new(&pin).is_file() && !Path::new(&format!("{pin}.x")).exists(), "the attacked pin {pin} was moved");
    assert_eq!(std::fs::read_to_string(agent.state_dir.join("agent.json")).unwrap_or_default(), agent_json, "agent.json changed");
    assert!(!agent.state_dir.join("forged.json").exists(), "a file was created in the state dir");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let tmpfs_on_target = mounts.lines().any(|l| l.split(' ').nth(4) == Some(target.path().to_str().unwrap()));
    if tmpfs_on_target {
        let _ = nix::mount::umount2(target.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    assert!(!tmpfs_on_target, "a mount covers the target's cgroup directory");
    assert!(wrong.is_empty(), "attacks with the wrong outcome:\n{}", wrong.join("\n"));
    // From outside: the target's own freeze was not written.
    assert_eq!(std::fs::read_to_string(target.path().join("cgroup.freeze")).unwrap_or_default().trim(), "0", "the attacker froze its own target");

    // Counted per target, and streamed like denials.
    let names = ["protect.cgroup-write", "protect.bpf", "protect.signal", "protect.ptrace", "protect.files", "protect.mount"];
    let row = target_row(&agent, "attacker").expect("status row");
    for n in names {
        assert!(row["protections_refused"][n].as_u64().unwrap_or(0) >= 1, "{n} not counted: {}", row["protections_refused"]);
    }
    events.wait(Duration::from_secs(20), "a protection event for each protection", |all| {
        names.iter().all(|n| all.iter().any(|e| e["target"] == "attacker" && e["capability"] == *n))
    });
    let human = crate::support::process::text(&agent.kp(&["status", "attacker"]).stdout);
    assert!(human.contains("SELF-PROTECTION refused"), "{human}");
}
