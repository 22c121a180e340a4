//! Shared test harness: a real agent on a private socket, state dir, bpffs
//! pin dir and cgroup parent, torn down (tasks killed, cgroups removed,
//! programs unpinned) when the test ends. The paths, the agent process and
//! the teardown are a [`killpath_sandbox::Sandbox`], shared with `cargo
//! xtask bench` and `cargo xtask demo`.
//!
//! Skips: a privileged test that cannot run (not root, no BPF LSM) skips
//! with a message under plain `cargo test`, and FAILS when
//! `KILLPATH_TEST_STRICT=1` (set by `cargo xtask test`).
#![expect(dead_code, reason = "each test module uses a different subset of the harness")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use killpath::kernel::cgroup::Cgroup;
use killpath_sandbox::Sandbox;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_killpath");

/// The tag prefix of the tests' sandboxes: `kptest-<pid>[-<n>]`.
const PREFIX: &str = "kptest";

/// Skips the test (returns false) or, in strict mode, fails it.
pub fn skip(why: &str) -> bool {
    if std::env::var("KILLPATH_TEST_STRICT").as_deref() == Ok("1") {
        panic!("test would skip, which is a failure under KILLPATH_TEST_STRICT=1: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// True when running as root; otherwise skips.
pub fn root() -> bool {
    nix::unistd::geteuid().is_root() || skip("needs root (privileged integration test)")
}

/// Where `cargo xtask test` says we run: "host", "vm", or unset.
pub fn test_env() -> Option<String> {
    std::env::var("KILLPATH_TEST_ENV").ok()
}

/// An error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A running agent with private paths (a [`Sandbox`]).
pub struct Agent {
    sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub cgroup_parent: PathBuf,
    pub log: PathBuf,
    /// Extra `killpath agent` arguments (e.g. `--alert-hook CMD`), kept for restarts.
    pub extra_args: Vec<String>,
}

impl Agent {
    /// Starts an agent, or returns None when the test must skip.
    pub fn start() -> Option<Agent> {
        Self::start_with(&[])
    }

    /// Like [`Agent::start`], with extra `killpath agent` arguments, which
    /// [`Agent::spawn`] passes again on every restart.
    pub fn start_with(extra_args: &[&str]) -> Option<Agent> {
        Self::start_prepared(extra_args, |_| {})
    }

    /// Like [`Agent::start_with`], calling `prepare` with the state dir
    /// (created, empty) before the agent first starts (e.g. to mount a
    /// filesystem there).
    pub fn start_prepared(extra_args: &[&str], prepare: impl FnOnce(&Path)) -> Option<Agent> {
        if !root() {
            return None;
        }
        // What test processes that died (SIGKILL, a crash) left behind.
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            killpath_sandbox::remove_stale(PREFIX);
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox::in_dir(PREFIX, dir.path()).unwrap_or_else(|e| panic!("sandbox: {}", chain(&e)));
        let mut a = Agent {
            socket: sandbox.socket().to_owned(),
            state_dir: sandbox.state_dir().to_owned(),
            pin_dir: sandbox.pin_dir().to_owned(),
            cgroup_parent: sandbox.cgroup_parent().to_owned(),
            log: sandbox.log().to_owned(),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            sandbox,
            dir,
        };
        std::fs::create_dir_all(&a.state_dir).expect("state dir");
        prepare(&a.state_dir);
        a.spawn();
        Some(a)
    }

    /// (Re)starts the agent process on the same paths.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut cmd = self.sandbox.agent_command(Path::new(BIN));
        cmd.args(&self.extra_args).env("KILLPATH_LOG", "debug").stdout(Stdio::null()).stderr(log);
        // Under software emulation (the VM) loading and verifying every
        // program takes longer than on the host: over 120 s observed while
        // the machine's 2 cores were shared with other builds.
        let limit = if test_env().as_deref() == Some("vm") { 300 } else { 30 };
        if let Err(e) = self.sandbox.start_agent(cmd, Duration::from_secs(limit)) {
            panic!("agent start failed: {}:\n{}", chain(&e), self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.sandbox.agent_pid().map(|p| p as i32).expect("agent running")
    }

    /// SIGKILLs the agent (no cleanup, like a crash).
    pub fn kill9(&mut self) {
        self.sandbox.kill_agent();
    }

    /// A `killpath` command pointed at this agent.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("KILLPATH_SOCKET", &self.socket).env("KILLPATH_STATE_DIR", &self.state_dir).env_remove("KILLPATH_LOG");
        // A `probe` loads a dozen test programs: over the default 60 s in
        // the emulated VM while the machine's cores are busy (seen: 60 s
        // passed while the agent was otherwise idle).
        if test_env().as_deref() == Some("vm") {
            c.env("KILLPATH_REQUEST_TIMEOUT", "300");
        } else {
            c.env_remove("KILLPATH_REQUEST_TIMEOUT");
        }
        c
    }

    /// Runs a `killpath` command to completion.
    pub fn kp(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("run killpath")
    }

    /// Runs `killpath --json ARGS`, asserts success, parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.kp(&a);
        assert!(
            out.status.success(),
            "killpath {args:?} failed: {}\nstdout: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("killpath {args:?}: bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Starts `killpath run NAME -- CMD...` in the background and waits
    /// until the target holds at least `min_tasks` tasks.
    pub fn run_bg(&self, name: &str, command: &[&str], min_tasks: usize) -> Child {
        let mut args = vec!["run", name, "--"];
        args.extend_from_slice(command);
        let child = self.cmd(&args).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("spawn run");
        let cg = self.target_cgroup(name);
        // Under emulation (the VM) with the machine's cores busy, `run`'s
        // transaction alone has taken over 20 s.
        let limit = Duration::from_secs(if test_env().as_deref() == Some("vm") { 120 } else { 20 });
        wait_until(limit, || cg.exists() && cg.procs_recursive().len() >= min_tasks)
            .unwrap_or_else(|| panic!("target {name} never reached {min_tasks} tasks"));
        // `run` execs CMD only after the agent answered, and the agent
        // answers only after journaling: wait for the exec so the run is
        // fully acknowledged before the test goes on.
        let pid = child.id();
        wait_until(limit, || std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "killpath"))
            .unwrap_or_else(|| panic!("`killpath run {name}` never exec'd its command"));
        child
    }

    /// The cgroup `run NAME` creates.
    pub fn target_cgroup(&self, name: &str) -> Cgroup {
        Cgroup::new(self.cgroup_parent.join(name))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.jsonl")
    }

    /// Every journal record, parsed.
    pub fn journal(&self) -> Vec<Value> {
        journal_text(&self.journal_path()).lines().map(|l| serde_json::from_str(l).expect("journal line is JSON")).collect()
    }
}

/// A journal file's lines, up to its logical end: the agent keeps written
/// zeros ahead of its last line, and the journal ends at the first NUL.
pub fn journal_text(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Drop for Agent {
    /// Kills the agent and every task under its cgroup parent, removes the
    /// cgroups (and the agent's v1 pids cgroups) and the pins; `dir` goes
    /// after.
    fn drop(&mut self) {
        self.sandbox.teardown();
    }
}

/// Polls `f` until it returns true or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Some(());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z'))).unwrap_or(false)
}

/// Path helper for tests that need files.
pub fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
