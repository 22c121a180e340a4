//! The command line: clap definitions (doc comments are the help text)
//! and [`output`], the human rendering of results (`--json` prints them raw).
pub mod completions;
pub mod output;
pub mod trail;
pub mod tripwire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{client::DEFAULT_SOCKET, kernel::pins::DEFAULT_PIN_DIR};

/// killpath: move a workload through throttle, degrade, isolate and hard
/// stop, enforced by the kernel, every action journaled.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    /// The agent's unix socket.
    #[arg(long, global = true, env = "KILLPATH_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The agent's state dir (journal, targets). Clients use it only when
    /// the agent does not answer (`stop`) or for offline journal checks.
    #[arg(long, global = true, env = "KILLPATH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the agent's answer (a probe loads test programs:
    /// slow on an emulated or loaded machine). `stop` has its own
    /// `--agent-timeout` before it stops the cgroup directly.
    #[arg(long, global = true, value_parser = positive_seconds)]
    pub request_timeout: Option<f64>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Cli {
    /// How long to wait for the agent: `--request-timeout`, else
    /// `KILLPATH_REQUEST_TIMEOUT`, else 60 s. A bad value in the
    /// environment is warned about and ignored, never an error: it must not
    /// make every command (`stop` included) fail before it is sent.
    pub fn request_timeout(&self) -> std::time::Duration {
        const DEFAULT: f64 = 60.0;
        let secs = self.request_timeout.unwrap_or_else(|| match std::env::var("KILLPATH_REQUEST_TIMEOUT") {
            Err(_) => DEFAULT,
            Ok(v) => positive_seconds(&v).unwrap_or_else(|e| {
                tracing::warn!("KILLPATH_REQUEST_TIMEOUT ignored ({e}); waiting {DEFAULT} s");
                DEFAULT
            }),
        });
        std::time::Duration::from_secs_f64(secs)
    }
}

/// A positive, finite number of seconds (at most a day).
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: seconds must be above 0 and at most 86400"))
    }
}

/// Default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/killpath";

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the agent (as root): serves the socket, owns the journal and the kernel programs.
    Agent {
        /// bpffs directory for pinned maps and links (survive agent restarts).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// cgroup under which target cgroups are created [default: <parent of the agent's cgroup>/killpath].
        #[arg(long)]
        cgroup_parent: Option<PathBuf>,
        /// Numeric group id that may change things besides root (socket becomes 0660).
        #[arg(long)]
        group: Option<u32>,
        /// Agent config file (TOML): each level's defaults for `escalate`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Shell command run for every alert (e.g. each degrade step), with the alert as JSON on stdin.
        #[arg(long)]
        alert_hook: Option<String>,
        /// HMAC key for journal records (at least 16 bytes): each record then carries an
        /// HMAC-SHA256 of its hash. Must be owned by root, mode 0600 or stricter, outside the state dir.
        #[arg(long, value_name = "FILE")]
        journal_key: Option<PathBuf>,
        /// Group (name or gid) an approver of pending actions must hold, as primary or
        /// supplementary group (root too), unless a proposal names its own.
        #[arg(long, value_name = "GROUP", value_parser = parse_group)]
        approver_group: Option<u32>,
        /// Bound in bytes on each target's trail file (default 64 MiB); past it events are counted as lost.
        #[arg(long, value_name = "BYTES")]
        trail_max_bytes: Option<u64>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Report what this kernel can enforce (loads a tiny program of each type).
    Probe,
    /// Start CMD as a new target NAME, inside its own cgroup from its first instruction.
    Run {
        /// Target name: letters, digits, `-`, `_`, `.`; at most 64 bytes.
        name: String,
        /// Start CMD without any privilege: empty capability sets (bounding
        /// included), no_new_privs (no setuid gain); run as root, it also
        /// becomes `nobody` unless --user says otherwise (uid 0 owns the
        /// cgroup files even without capabilities).
        #[arg(long)]
        no_privileges: bool,
        /// Start CMD as USER[:GROUP] (name or number) with only that group,
        /// no capabilities and no_new_privs (implies --no-privileges).
        #[arg(long, value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// Record the activity trail from CMD's first instruction (see `killpath trail`).
        #[arg(long)]
        trail: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage an existing cgroup, or a process and all its descendants, as target NAME:
    /// by cgroup path, pid, systemd unit, container id or pod UID.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["cgroup", "pid", "unit", "container", "pod"])))]
    Adopt {
        name: String,
        /// Existing cgroup2 directory (absolute, or relative to the cgroup2 mount).
        #[arg(long)]
        cgroup: Option<String>,
        /// Process whose whole tree moves into a new cgroup for NAME.
        #[arg(long)]
        pid: Option<i32>,
        /// A systemd unit's cgroup (foo.service, foo.scope, foo.slice; a bare name means .service).
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// A container's cgroup (docker, containerd, CRI-O, podman, runc; either cgroup driver) by
        /// its id or a prefix of at least 12 hex digits; else its init pid from runc's state.
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        /// A Kubernetes pod's cgroup (kubepods slices or cgroupfs layout) by its UID.
        #[arg(long, value_name = "UID")]
        pod: Option<String>,
        /// Record the activity trail (see `killpath trail`).
        #[arg(long)]
        trail: bool,
    },
    /// Show targets: level, tasks, last stop.
    Status {
        /// Only this target.
        name: Option<String>,
    },
    /// Level 4, hard stop: SIGKILL every task of NAME without its cooperation.
    Stop {
        name: String,
        /// Why (journaled).
        #[arg(long)]
        reason: Option<String>,
        /// Seconds to wait for the agent before stopping the cgroup directly.
        #[arg(long, default_value_t = 3.0)]
        agent_timeout: f64,
    },
    /// Level 3, isolate: cut NAME off from everything outside it (kernel-enforced).
    Isolate {
        name: String,
        /// Why (journaled).
        #[arg(long)]
        reason: Option<String>,
        /// Then probe every channel from inside the target; exits non-zero if any is OPEN.
        #[arg(long)]
        verify: bool,
        /// Also cut at TC on this host-side network device (the veth of a
        /// container in its own network namespace). Repeatable.
        #[arg(long)]
        netdev: Vec<String>,
        /// Audit mode (dry run): cut nothing, count and sample every operation isolation would refuse
        /// (`status`: would_have_refused; `events`: audit=true). Ended by `restore NAME --audit-off`.
        #[arg(long)]
        audit: bool,
    },
    /// Level 2, degrade: revoke capabilities while NAME keeps running (see `capabilities`).
    Degrade {
        name: String,
        /// Capabilities to revoke, comma-separated (net.connect, exec, fork, ...). net.connect refuses
        /// connects, UDP sends and raw sockets, and drops every packet of the target's sockets (also
        /// connections made before) to destinations outside --allow-connect; net.raw refuses raw IP and
        /// packet sockets (packet sockets need BPF LSM: `capabilities` says what is open here).
        #[arg(long, value_delimiter = ',', required = true)]
        revoke: Vec<String>,
        /// With net.connect revoked, still allow this destination: CIDR[:PORT], e.g. 10.1.0.0/16:5432 or [::1]/128:443. Repeatable.
        #[arg(long)]
        allow_connect: Vec<String>,
        /// With fs.write revoked, still allow writes below PATH. Repeatable.
        #[arg(long)]
        allow_write: Vec<String>,
        /// Why (journaled and in the alert).
        #[arg(long)]
        reason: Option<String>,
        /// Audit mode (dry run): revoke nothing, count and sample every operation these capabilities
        /// would refuse; the level does not change. Ended by `restore NAME --audit-off`.
        #[arg(long)]
        audit: bool,
    },
    /// Move NAME up one level with the configured defaults (agent --config);
    /// jumping over a level needs --skip-reason, which is journaled.
    Escalate {
        name: String,
        /// Level to go to (throttle, degrade, isolate, stop); default: the next one.
        #[arg(long)]
        to: Option<String>,
        /// Why levels may be skipped (required to skip; journaled as a skip).
        #[arg(long)]
        skip_reason: Option<String>,
        /// Why (journaled and in the alert).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The activity trail: what NAME did outside itself (programs, connections and bytes,
    /// files, signals), recorded by the kernel; --summary for a rollback planner.
    Trail(trail::TrailArgs),
    /// Rules over kernel-observed metrics that raise a target's level.
    Tripwire {
        #[command(subcommand)]
        cmd: tripwire::TripwireCmd,
    },
    /// Run the whole kill path on NAME (or a fresh canary), verify each
    /// level from outside, time it, put the target back, and report.
    /// Exit status 1 if any check failed.
    Drill {
        /// The target to drill (omit with --canary or --history).
        name: Option<String>,
        /// Drill a fresh built-in canary (started, drilled, checked, released).
        #[arg(long, conflicts_with = "name")]
        canary: bool,
        /// Scenario file (TOML): levels, parameters, checks, thresholds.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Also write the report (JSON) to FILE.
        #[arg(long)]
        report: Option<PathBuf>,
        /// List past drills and their outcome (from the journal).
        #[arg(long, conflicts_with_all = ["name", "canary", "scenario"])]
        history: bool,
        /// Run degrade and isolate in audit mode: nothing is enforced; the report says what each
        /// level would have refused (no throttle, no stop).
        #[arg(long)]
        audit: bool,
    },
    /// Level 1, throttle: cap NAME's rate of action. Run again to change
    /// ceilings live (the ones not named stay); `restore NAME --to normal`
    /// lifts them. Rates: N, N/s, Nk/s, NM/s, NMB/s, NKiB/s. Syscall
    /// ceilings also charge each io_uring operation (SQPOLL rings included)
    /// where the kernel has an io_uring submission tracepoint (5.19+);
    /// the output and `status` say whether it does.
    Throttle {
        name: String,
        /// Ceiling on all syscalls per second.
        #[arg(long, value_parser = parse_rate)]
        syscalls: Option<u64>,
        /// Ceiling on one class of syscalls: CLASS=N/s with CLASS one of
        /// net (connect, sendto, sendmsg, sendmmsg; io_uring CONNECT, SEND,
        /// SENDMSG and their _ZC forms), exec, fork, fs-write (io_uring
        /// writes, renames, unlinks... too), all. Repeatable.
        #[arg(long, value_parser = parse_class_rate)]
        syscall_class: Vec<(String, u64)>,
        /// Ceiling on bytes sent per second (cgroup egress; TC on --netdev devices).
        #[arg(long, value_parser = parse_rate)]
        egress_bytes: Option<u64>,
        /// Ceiling on packets sent per second.
        #[arg(long, value_parser = parse_rate)]
        egress_packets: Option<u64>,
        /// At most N live tasks; further fork/clone fails with EAGAIN.
        #[arg(long)]
        tasks: Option<u64>,
        /// pace: every call is charged and succeeds; a call over budget
        /// stops its process and the whole target is frozen (cgroup
        /// freezer, which the workload's SIGCONT cannot undo) until the
        /// debt is paid. deny: over-budget calls fail with EAGAIN (net
        /// class only).
        #[arg(long, default_value = "pace")]
        mode: String,
        /// Also police the egress ceilings at TC on this host-side device
        /// (the veth of a workload in its own network namespace). Repeatable.
        #[arg(long)]
        netdev: Vec<String>,
        /// Why (journaled and in the alert).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the capabilities `degrade` can revoke, whether this kernel enforces each, and what stays
    /// OPEN here ("yes, partly").
    Capabilities,
    /// Stream alerts and sampled denials as they happen.
    Events,
    /// Step NAME down to a lower level, or give capabilities back.
    Restore {
        name: String,
        /// Target level (normal, throttle, degrade, isolate); without --to
        /// or --grant, one level down.
        #[arg(long, conflicts_with = "grant")]
        to: Option<String>,
        /// Capabilities to give back, comma-separated.
        #[arg(long, value_delimiter = ',')]
        grant: Vec<String>,
        /// Why (journaled).
        #[arg(long)]
        reason: Option<String>,
        /// End audit mode (of degrade --audit and isolate --audit); the level does not change.
        #[arg(long, conflicts_with_all = ["to", "grant"])]
        audit_off: bool,
    },
    /// Probe every channel from inside NAME and report each as cut or OPEN; exits non-zero if any is OPEN.
    Verify { name: String },
    /// Stop managing NAME: lift enforcement, remove its cgroup if killpath made it and it is empty.
    Release { name: String },
    /// Ask for LEVEL on NAME, to be applied when a human approves it
    /// (`approve ID`); prints the pending action's id.
    Propose {
        name: String,
        /// Level to apply on approval: throttle, degrade, isolate or stop.
        #[arg(long)]
        level: String,
        /// Why (journaled and in the alert).
        #[arg(long)]
        reason: Option<String>,
        /// How long to wait for a decision: 500ms, 30s, 5m, 1h.
        #[arg(long, default_value = "5m")]
        timeout: String,
        /// What happens when nobody decides in time: hold (stay pending, alert
        /// again each period), apply, or drop.
        #[arg(long, default_value = "hold")]
        on_timeout: String,
        /// A lower level (throttle or degrade) applied now with the escalation
        /// defaults, while the decision waits.
        #[arg(long)]
        meanwhile: Option<String>,
        /// Group (name or gid) the approver must hold; default: the agent's --approver-group.
        #[arg(long, value_name = "GROUP", value_parser = parse_group)]
        approver_group: Option<u32>,
        /// What the asker saw, as JSON (shown by `pending`, journaled).
        #[arg(long, value_parser = parse_json)]
        evidence: Option<serde_json::Value>,
    },
    /// List actions waiting for approval: id, target, level, origin, evidence, age, timeout policy.
    Pending,
    /// Apply pending action ID (journaled with your uid, gid and pid).
    Approve {
        id: u64,
        /// Why (journaled).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drop pending action ID; the target stays as it is.
    Deny {
        id: u64,
        /// Why (required; journaled).
        #[arg(long, required = true)]
        reason: String,
    },
    /// Dead-man lease on NAME: unless renewed before its deadline, the kernel itself
    /// isolates or stops NAME, even with the agent dead. Arm: --ttl 30s --on-expiry isolate|stop.
    Lease {
        name: String,
        /// Arm (or replace) the lease with this ttl (500ms, 30s, 2m, 1h).
        #[arg(long, conflicts_with_all = ["renew", "cancel"], requires = "on_expiry")]
        ttl: Option<String>,
        /// What the target goes to when the lease expires: isolate or stop.
        #[arg(long, requires = "ttl")]
        on_expiry: Option<String>,
        /// Move the deadline to now + ttl (a controller calls this before each deadline).
        #[arg(long, conflicts_with = "cancel")]
        renew: bool,
        /// Remove the lease: nothing happens at its deadline.
        #[arg(long)]
        cancel: bool,
    },
    /// Show the action journal.
    Journal {
        /// Keep printing new records as they are written.
        #[arg(long)]
        follow: bool,
        /// Check the hash chain; exits non-zero if any record was edited, removed or reordered.
        #[arg(long)]
        verify: bool,
        /// Read this journal file directly, without the agent (implies offline).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Read the journal in --state-dir directly, without the agent.
        #[arg(long)]
        offline: bool,
        /// With --verify: the record SEQ must still have HASH (a head kept elsewhere:
        /// from the events stream, the alert hook or `journal --head`). Catches a
        /// journal rewritten and re-chained after the anchor was taken.
        #[arg(long, value_name = "SEQ:HASH", requires = "verify")]
        anchor: Option<String>,
        /// With --verify: check every record's HMAC with this key (the agent's
        /// --journal-key); needs --file or --state-dir.
        #[arg(long, value_name = "FILE", requires = "verify")]
        key: Option<PathBuf>,
        /// Print the head of the chain (last seq and hash) as an anchor, SEQ:HASH.
        #[arg(long, conflicts_with_all = ["verify", "follow"])]
        head: bool,
    },
    /// The built-in canary workload: workers that write checksummed records and checkpoint them to DIR, call a local service, exec a helper, and a ticker making syscalls at a known rate; it resumes from its checkpoints.
    Canary {
        /// Where the canary keeps its records and checkpoints (it resumes from them).
        #[arg(long)]
        dir: PathBuf,
        /// Check the data in DIR instead of running: no committed record
        /// lost, none duplicated, no checkpoint or record torn. Exit 1 if not.
        #[arg(long)]
        check: bool,
        /// Number of worker processes.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// A local TCP service (HOST:PORT) each worker calls every iteration
        /// (an HTTP GET); results go to DIR/net-N.
        #[arg(long)]
        service: Option<std::net::SocketAddr>,
        #[arg(long, hide = true)]
        worker: Option<u32>,
        #[arg(long, hide = true)]
        ticker: bool,
    },
    /// Print a shell completion script for bash, zsh or fish (e.g. `killpath completions bash > /etc/bash_completion.d/killpath`).
    Completions {
        /// The shell the script is for.
        shell: completions::Shell,
    },
    /// Write the manual pages (killpath.1 and one per command) into DIR.
    Man {
        /// Directory to write the pages to (created if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
    /// Internal: the capability probe a drill runs inside a target.
    #[command(hide = true)]
    DrillProbe {
        #[arg(long)]
        cgroup: PathBuf,
        /// Capabilities to try, comma-separated.
        #[arg(long, value_delimiter = ',')]
        cap: Vec<String>,
        /// A listening TCP address outside the target (net.connect).
        #[arg(long)]
        connect: Option<std::net::SocketAddr>,
        /// A process outside the target (signal, ptrace).
        #[arg(long)]
        outside_pid: Option<i32>,
        /// A scratch directory (fs.write, mount, net.unix).
        #[arg(long)]
        scratch: PathBuf,
        /// Internal: the rows so far, after the exec probe succeeded.
        #[arg(long)]
        exec_continuation: Option<String>,
    },
    /// Internal: the channel probe `verify` runs inside a target.
    #[command(hide = true)]
    VerifyProbe(crate::isolate::verify_probe::ProbeArgs),
}

fn parse_rate(s: &str) -> Result<u64, String> {
    crate::throttle::parse_rate(s).map_err(|e| e.to_string())
}

fn parse_class_rate(s: &str) -> Result<(String, u64), String> {
    crate::throttle::parse_class_rate(s).map_err(|e| e.to_string())
}

/// A group name or a numeric gid.
fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {s:?}")),
        Err(e) => Err(format!("looking up group {s:?}: {e}")),
    }
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own consistency checks over every subcommand.
    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// The global `--request-timeout` and the subcommands' own `--timeout`
    /// (an approval's) are different arguments: a global named `timeout`
    /// made `tripwire add --timeout 5m` panic in clap at run time, which
    /// `debug_assert` does not see.
    #[test]
    fn approval_timeouts_parse_beside_the_request_timeout() {
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from(["killpath", "--request-timeout", "5", "propose", "web", "--level", "isolate", "--timeout", "5m"])
            .expect("propose parses");
        assert_eq!(cli.request_timeout, Some(5.0));
        let super::Cmd::Propose { timeout, .. } = cli.cmd else { panic!("not propose: {:?}", cli.cmd) };
        assert_eq!(timeout, "5m");
        let cli = super::Cli::try_parse_from([
            "killpath",
            "tripwire",
            "add",
            "r",
            "--target",
            "web",
            "--metric",
            "connects",
            "--above",
            "20",
            "--window",
            "1s",
            "--action",
            "isolate",
            "--timeout",
            "5m",
        ])
        .expect("tripwire add parses");
        assert_eq!(cli.request_timeout, None);
        let super::Cmd::Tripwire { cmd: super::tripwire::TripwireCmd::Add { timeout, .. } } = cli.cmd else { panic!("not tripwire add: {:?}", cli.cmd) };
        assert_eq!(timeout.as_deref(), Some("5m"));
    }

    #[test]
    fn request_timeout_bounds() {
        for ok in ["0.5", "60", "86400"] {
            assert!(super::positive_seconds(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "-1", "inf", "NaN", "86401", "x"] {
            assert!(super::positive_seconds(bad).is_err(), "{bad}");
        }
    }
}
