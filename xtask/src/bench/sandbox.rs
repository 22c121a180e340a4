//! The benchmarks' sandbox: a [`killpath_sandbox::Sandbox`] (the agent, its
//! socket, pins and cgroups, all removed at the end), plus what only the
//! benchmarks need: a copy of this binary for the helpers, the fork bombs'
//! pids cap, and the nftables table of the isolate alternative.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use super::{
    common::read_trimmed,
    isolate::{nft, NFT_TABLE},
};
use crate::proc;

/// The sandbox's tag prefix: `killpath-bench-<pid>`.
const PREFIX: &str = "killpath-bench";
/// How long the agent may take to answer its first ping.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped agent gets to exit on SIGTERM.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);

/// How the bombs' pids.max cap is set.
pub(super) enum PidsCap {
    /// The pids controller in the cgroup2 tree, enabled for the sandbox parent.
    V2,
    /// The cgroup v1 pids hierarchy (hybrid hosts): a directory of our own.
    V1(PathBuf),
    /// No pids controller: the bombs are uncapped.
    None,
}

pub(super) struct Sandbox {
    inner: killpath_sandbox::Sandbox,
    kp: PathBuf,
    /// A copy of this binary, for the helpers (target/debug/xtask may be
    /// relinked by another cargo command meanwhile).
    pub(super) helper: PathBuf,
    pub(super) pids: PidsCap,
    /// Whether the isolate benchmark created its nftables table.
    pub(super) nft_table: bool,
    keep_tmp: bool,
}

impl Sandbox {
    /// Removes what interrupted earlier runs left, then makes the sandbox
    /// and its cgroup parent, with a pids cap for the bombs where the host
    /// has a pids controller.
    pub(super) fn new(kp: &Path) -> Result<Self> {
        for pid in killpath_sandbox::remove_stale(PREFIX) {
            println!("bench: removed the leftovers of an earlier, interrupted run (pid {pid})");
        }
        let inner = killpath_sandbox::Sandbox::new(PREFIX)?;
        let mut sb = Self {
            helper: inner.dir().join("xtask"),
            inner,
            kp: kp.to_owned(),
            pids: PidsCap::None,
            nft_table: false,
            keep_tmp: false,
        };
        fs::copy("/proc/self/exe", &sb.helper)
            .with_context(|| format!("copying the xtask executable to {}", sb.helper.display()))?;
        sb.inner.create_cgroup_parent()?;
        let root_controllers = read_trimmed(&sb.mount().join("cgroup.subtree_control").to_string_lossy());
        if root_controllers.split_whitespace().any(|c| c == "pids")
            && fs::write(sb.parent().join("cgroup.subtree_control"), "+pids").is_ok()
        {
            sb.pids = PidsCap::V2;
        } else if let Some(dir) = sb.inner.v1_pids_dir() {
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            sb.pids = PidsCap::V1(dir);
        } else {
            println!("bench: no pids controller: the fork bombs are not capped");
        }
        Ok(sb)
    }

    /// The sandbox's directory (socket, state, agent.log, the helper).
    pub(super) fn tmp(&self) -> &Path {
        self.inner.dir()
    }

    /// The cgroup2 mount.
    pub(super) fn mount(&self) -> &Path {
        self.inner.cgroup_mount()
    }

    /// The agent's cgroup parent; the bare variants' cgroups go there too.
    pub(super) fn parent(&self) -> &Path {
        self.inner.cgroup_parent()
    }

    pub(super) fn pin_dir(&self) -> &Path {
        self.inner.pin_dir()
    }

    /// On a signal, kills every task of the sandbox at once.
    pub(super) fn kill_on_interrupt(&self) -> Result<()> {
        Ok(self.inner.kill_on_interrupt()?)
    }

    /// Keeps the sandbox's directory (agent.log) after the run.
    pub(super) fn keep_tmp(&mut self, keep: bool) {
        self.keep_tmp = keep;
        self.inner.keep_dir(keep);
    }

    /// Starts the agent (output to agent.log) and waits until it answers a ping.
    pub(super) fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    /// Restarts the agent with `extra` arguments (SIGTERM; the pins stay, so
    /// enforcement does); `&[]` puts the usual agent back.
    pub(super) fn restart_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        self.inner.stop_agent(AGENT_STOP_GRACE);
        self.start_agent_with(extra)
    }

    fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        if self.inner.agent_running() {
            return Ok(());
        }
        let _ = fs::remove_file(self.inner.socket());
        let log_path = self.inner.log().to_owned();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = self.inner.agent_command(&self.kp);
        cmd.args(extra);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.inner.start_agent(cmd, AGENT_READY_TIMEOUT).map_err(|e| match e {
            killpath_sandbox::Error::AgentExited(_) => {
                anyhow!("{e}; last lines of {}:\n{}", log_path.display(), proc::tail(&log_path, 15))
            }
            e => e.into(),
        })
    }

    /// Stops the agent (SIGTERM) and removes its pins, which detaches its programs.
    fn stop_agent(&mut self) {
        self.inner.stop_agent(AGENT_STOP_GRACE);
        let _ = self.inner.unpin();
    }

    pub(super) fn set_agent(&mut self, running: bool) -> Result<()> {
        if running {
            self.start_agent()
        } else {
            self.stop_agent();
            if self.pin_dir().exists() {
                bail!("{} is still there after removing it", self.pin_dir().display());
            }
            Ok(())
        }
    }

    /// The running agent's pid.
    pub(super) fn agent_pid(&self) -> Option<u32> {
        self.inner.agent_pid()
    }

    /// The agent's socket.
    pub(super) fn socket(&self) -> &Path {
        self.inner.socket()
    }

    /// Runs the `killpath` CLI against the sandbox's agent; fails with its
    /// stderr unless it succeeds.
    pub(super) fn kp(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(&self.kp)
            .arg("--socket")
            .arg(self.inner.socket())
            .args(args)
            .output()
            .with_context(|| format!("running killpath {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "killpath {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILLs the agent (a crash: its pins stay, enforcement goes on).
    pub(super) fn kill_agent(&mut self) {
        self.inner.kill_agent();
    }

    /// One request over the socket: the client wall time and the result.
    pub(super) fn call(&mut self, cmd: &str, args: Value) -> Result<(Duration, Value)> {
        Ok(self.inner.call(cmd, args)?)
    }

    /// Stops the agent, kills every task under the cgroup parent, removes
    /// the cgroups, the pins, the v1 pids cgroups and the nft table.
    fn clean(&mut self) {
        self.stop_agent();
        let left = self.inner.teardown();
        if self.nft_table {
            let _ = nft(&["delete", "table", "inet", NFT_TABLE]);
        }
        if !left.is_empty() {
            let left: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
            eprintln!("bench: could not remove {}", left.join(", "));
        }
        if self.keep_tmp {
            println!("bench: kept {} (agent.log) for inspection", self.tmp().display());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.clean();
    }
}
