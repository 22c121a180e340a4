//! Processes the tests start and watch: outside every target (killed and
//! reaped on drop), as a target's workload (`killpath run`), and what
//! /proc says about them.
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use killpath::kernel::cgroup::Cgroup;
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use crate::harness::{alive, wait_until, Agent};

/// A process the test spawned outside any target, in its own process group.
/// Dropping it SIGKILLs the whole group and reaps the leader, so nothing the
/// test started outside the agent's cgroup parent outlives the test.
pub(crate) struct Outside {
    child: Child,
}

impl Outside {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` outside any target (in the test's own cgroup), as the
/// leader of a new process group.
pub(crate) fn spawn_outside(cmd: &[&str]) -> Outside {
    let child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Outside { child }
}

/// A client run from the test's own cgroup (outside every target),
/// SIGKILLed after `limit_s` seconds.
pub(crate) fn outside_within(limit_s: u32, cmd: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &limit_s.to_string()])
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// A `killpath run` child (the command exec'd in place): SIGKILLed and
/// reaped on drop, so it never stays a zombie of the test process.
pub(crate) struct Reaped(pub(crate) Child);

impl Reaped {
    pub(crate) fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agent.run_bg`, wrapped so the child is reaped.
pub(crate) fn run_bg(agent: &Agent, name: &str, cmd: &[&str], min_tasks: usize) -> Reaped {
    Reaped(agent.run_bg(name, cmd, min_tasks))
}

/// A running target `name` (a `sleep`); returns its `run` child and pid.
pub(crate) fn sleeping_target(agent: &Agent, name: &str) -> (Child, i32) {
    let child = agent.run_bg(name, &["sleep", "1000"], 1);
    let pids = agent.target_cgroup(name).procs_recursive();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // run_bg returns once `killpath run` is in the cgroup, which is before
    // the agent has answered (and journaled the result); it execs CMD only
    // after the answer.
    let comm = format!("/proc/{}/comm", pids[0]);
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep"))
        .unwrap_or_else(|| panic!("target {name} never exec'd its command"));
    (child, pids[0])
}

/// The distribution's python3 (a pyenv shim may not work inside the VM).
pub(crate) fn py() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One-line description of a finished `killpath` command, for messages.
pub(crate) fn show(out: &Output) -> String {
    format!("exit {}\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Sorted pids (processes) in a cgroup and every cgroup below it.
pub(crate) fn pids(cg: &Cgroup) -> Vec<i32> {
    let mut v = cg.procs_recursive();
    v.sort_unstable();
    v
}

/// The pids of `pids` that are still alive (not gone, not zombies).
pub(crate) fn living(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

/// Parent pid from /proc, if the process exists.
pub(crate) fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Live direct children of `pid`.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| ppid(*p) == Some(pid) && alive(*p))
        .collect();
    out.sort_unstable();
    out
}

/// Waits up to 2 s for every pid to be dead (the kill is asynchronous only
/// for the last few microseconds of exit; the stop already waited for
/// `populated 0`, so this is normally immediate).
pub(crate) fn assert_all_dead(agent: &Agent, what: &str, pids: &[i32]) {
    if wait_until(Duration::from_secs(2), || living(pids).is_empty()).is_none() {
        panic!("{what}: still alive: {:?} (of {pids:?})\nagent log:\n{}", living(pids), agent.log_text());
    }
}

/// The syscalls `pid` has made that read (`syscr` of /proc/PID/io).
pub fn syscr(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr for pid {pid}"))
}

/// Syscalls per second of `pid` over `window`, measured from outside.
pub fn syscall_rate(pid: i32, window: Duration) -> f64 {
    let a = syscr(pid);
    let t = std::time::Instant::now();
    std::thread::sleep(window);
    let b = syscr(pid);
    (b - a) as f64 / t.elapsed().as_secs_f64()
}

/// Field `n` (1-based, as in proc(5)) of a /proc `stat` file (a process's
/// or a task's), counted after the command name, which may hold spaces.
pub(crate) fn stat_field(stat_path: &str, n: usize) -> Option<i64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(n.checked_sub(3)?)?.parse().ok()
}

/// Which number the pid namespace handed out last.
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// SIGCONTs a process (the agent a test held with SIGSTOP) on drop,
/// whatever happens.
pub(crate) struct Resume(pub(crate) i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// A `sleep` of the test's own (outside every target) that got number
/// `want`: `ns_last_pid` set to the number before it, then a fork. Another
/// task of the host may take the number first: tried again for up to 5 s
/// while the number is free (one that keeps it ends the tries).
pub(crate) fn bystander_with_pid(want: i32) -> Outside {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        std::fs::write(NS_LAST_PID, (want - 1).to_string()).expect("writing ns_last_pid");
        let b = spawn_outside(&["sleep", "1000"]);
        if b.pid() == want {
            return b;
        }
        drop(b);
        let taken = Path::new(&format!("/proc/{want}")).exists();
        assert!(!taken && std::time::Instant::now() < until, "no bystander got number {want} (taken by another process: {taken})");
    }
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`, ...) from
/// /proc/PID/stat, or None when it is gone.
pub(crate) fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised comm, which may contain spaces.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}
