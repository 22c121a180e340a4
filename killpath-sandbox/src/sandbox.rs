//! One private agent: its paths, its process, its socket, its teardown.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    cgroup,
    client::Client,
    error::{Error, Result},
    interrupt, mounts,
    process::{crash, terminate},
    BPFFS,
};

/// Sandboxes made by this process so far: the next one's sequence number.
static SEQ: AtomicU32 = AtomicU32::new(0);
/// How long any one socket request may take, unless changed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent that does not answer in time gets to exit on SIGTERM.
const NOT_READY_GRACE: Duration = Duration::from_secs(5);

/// Private paths for one agent, and the agent itself once started. Torn
/// down when dropped (see [`Sandbox::teardown`]).
pub struct Sandbox {
    tag: String,
    dir: PathBuf,
    /// Whether the sandbox made `dir` (and removes it, unless kept).
    owns_dir: bool,
    keep_dir: bool,
    socket: PathBuf,
    state_dir: PathBuf,
    pin_dir: PathBuf,
    cgroup_parent: PathBuf,
    log: PathBuf,
    cgroup_mount: PathBuf,
    v1_pids_mount: Option<PathBuf>,
    agent: Option<Child>,
    client: Option<Client>,
    request_timeout: Duration,
    torn_down: bool,
}

/// The tag of this process's next sandbox: `<prefix>-<pid>` for the first,
/// `<prefix>-<pid>-<n>` after it ([`crate::remove_stale`] reads both).
fn next_tag(prefix: &str) -> String {
    let pid = std::process::id();
    match SEQ.fetch_add(1, Ordering::SeqCst) {
        0 => format!("{prefix}-{pid}"),
        n => format!("{prefix}-{pid}-{n}"),
    }
}

impl Sandbox {
    /// A sandbox whose directory is `<temp dir>/<tag>`, made fresh (a
    /// leftover of the same name is removed first) and removed at teardown
    /// unless [kept](Sandbox::keep_dir).
    pub fn new(prefix: &str) -> Result<Self> {
        let tag = next_tag(prefix);
        let dir = env::temp_dir().join(&tag);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))?;
        }
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let mounts = mounts::read()?;
        Ok(Self::at(tag, dir, true, mounts::cgroup2(&mounts)?, mounts::v1_pids(&mounts)))
    }

    /// A sandbox whose socket, state dir and log live in `dir`, which the
    /// caller made and removes.
    pub fn in_dir(prefix: &str, dir: &Path) -> Result<Self> {
        let mounts = mounts::read()?;
        Ok(Self::at(next_tag(prefix), dir.to_owned(), false, mounts::cgroup2(&mounts)?, mounts::v1_pids(&mounts)))
    }

    /// The sandbox named `tag`, its directory in the temp dir: for tearing
    /// down one that a dead process left.
    pub(crate) fn at(tag: String, dir: PathBuf, owns_dir: bool, cgroup_mount: PathBuf, v1_pids_mount: Option<PathBuf>) -> Self {
        Self {
            socket: dir.join("agent.sock"),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            pin_dir: Path::new(BPFFS).join(&tag),
            cgroup_parent: cgroup_mount.join(&tag),
            tag,
            dir,
            owns_dir,
            keep_dir: false,
            cgroup_mount,
            v1_pids_mount,
            agent: None,
            client: None,
            request_timeout: REQUEST_TIMEOUT,
            torn_down: false,
        }
    }

    /// The unique name of this sandbox's pin dir and cgroup parent.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The private directory holding the socket, the state dir and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `/sys/fs/bpf/<tag>`.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// `<cgroup2 mount>/<tag>`.
    pub fn cgroup_parent(&self) -> &Path {
        &self.cgroup_parent
    }

    /// `agent.log` in [`Sandbox::dir`], for callers that send the agent's
    /// output there.
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    /// `<v1 pids mount>/<tag>` on a host with a cgroup v1 pids hierarchy: a
    /// v1 cgroup name of the sandbox's own (the caller creates it), removed
    /// at teardown.
    pub fn v1_pids_dir(&self) -> Option<PathBuf> {
        self.v1_pids_mount.as_ref().map(|m| m.join(&self.tag))
    }

    /// Keeps (or not) the sandbox's own directory at teardown, e.g. for
    /// the agent log of a failed run.
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    /// How long one [`Sandbox::call`] may wait for its answer.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
        self.client = None;
    }

    /// Creates the cgroup parent (the agent creates it otherwise).
    pub fn create_cgroup_parent(&self) -> Result<()> {
        fs::create_dir_all(&self.cgroup_parent).map_err(Error::io(format!("creating cgroup {}", self.cgroup_parent.display())))
    }

    /// On SIGINT, SIGTERM or SIGHUP, kills every task of the sandbox at
    /// once and marks the process interrupted (see [`interrupt`]).
    pub fn kill_on_interrupt(&self) -> Result<()> {
        interrupt::install(&self.cgroup_parent.join("cgroup.kill"))
    }

    /// `BIN agent --socket … --state-dir … --pin-dir … --cgroup-parent …`;
    /// the caller adds arguments, environment and output, then passes it
    /// to [`Sandbox::start_agent`].
    pub fn agent_command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent);
        cmd
    }

    /// Spawns `cmd` (from [`Sandbox::agent_command`]) and waits up to
    /// `timeout` until the socket answers a ping. An agent that exits
    /// first is an error at once; one that does not answer in time is
    /// stopped.
    pub fn start_agent(&mut self, mut cmd: Command, timeout: Duration) -> Result<()> {
        if self.agent_running() {
            return Err(Error::AgentRunning(self.agent_pid().unwrap_or_default()));
        }
        self.client = None;
        let mut child = cmd.spawn().map_err(Error::io(format!("starting {} agent", cmd.get_program().to_string_lossy())))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(Error::io("waiting for the agent"))? {
                return Err(Error::AgentExited(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.socket.exists() {
                let wait = left.clamp(Duration::from_millis(100), self.request_timeout);
                if Client::connect(&self.socket, wait).and_then(|mut c| c.call("ping", json!({}))).is_ok() {
                    self.agent = Some(child);
                    return Ok(());
                }
            }
            if left.is_zero() {
                terminate(&mut child, NOT_READY_GRACE);
                return Err(Error::AgentNotReady { socket: self.socket.clone(), timeout });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the agent this sandbox started, unless it was stopped
    /// or killed since (it may have exited on its own).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Whether the agent runs; one that exited on its own is reaped and
    /// forgotten.
    pub fn agent_running(&mut self) -> bool {
        let Some(child) = self.agent.as_mut() else {
            return false;
        };
        if matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        self.agent = None;
        self.client = None;
        false
    }

    /// Stops the agent: SIGTERM, then SIGKILL after `grace`.
    pub fn stop_agent(&mut self, grace: Duration) {
        self.client = None;
        if let Some(mut child) = self.agent.take() {
            terminate(&mut child, grace);
        }
    }

    /// SIGKILLs the agent (no cleanup on its side, like a crash).
    pub fn kill_agent(&mut self) {
        self.client = None;
        if let Some(mut child) = self.agent.take() {
            crash(&mut child);
        }
    }

    /// One request to the agent (on a connection kept between calls): the
    /// client's wall time and the answer's `result`.
    pub fn call(&mut self, cmd: &str, args: Value) -> Result<(Duration, Value)> {
        if self.agent.is_none() {
            return Err(Error::AgentNotRunning);
        }
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(Client::connect(&self.socket, self.request_timeout)?),
        };
        client.call(cmd, args)
    }

    /// Removes the pin dir, which detaches every program the agent pinned
    /// there (nothing else holds them once the agent is gone).
    pub fn unpin(&self) -> Result<()> {
        match fs::remove_dir_all(&self.pin_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { what: format!("removing {}", self.pin_dir.display()), source: e }),
            _ => Ok(()),
        }
    }

    /// Kills the agent if it still runs, kills every task below the
    /// cgroup parent and removes the cgroups bottom-up, removes the agent's
    /// v1 pids cgroups and the sandbox's own, the pins, and the sandbox's
    /// directory (when it made it and was not told to keep it). Returns
    /// what could not be removed (cgroup parent, pin dir).
    pub fn teardown(&mut self) -> Vec<PathBuf> {
        self.torn_down = true;
        self.kill_agent();
        // Named by the target cgroups' ids: found before those go.
        let v1_agent = self.v1_pids_mount.as_deref().map(|m| cgroup::agent_v1_dirs(&self.cgroup_parent, m)).unwrap_or_default();
        cgroup::remove_tree(&self.cgroup_parent);
        for d in &v1_agent {
            let _ = fs::remove_dir(d);
        }
        if let Some(d) = self.v1_pids_dir() {
            cgroup::remove_dirs(&d);
        }
        let _ = self.unpin();
        if self.owns_dir && !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
        [&self.cgroup_parent, &self.pin_dir].into_iter().filter(|p| p.exists()).cloned().collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown();
        }
    }
}
