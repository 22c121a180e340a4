//! The `killpath` binary: the agent, and a client for each command.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use killpath::{
    agent::{self, AgentConfig},
    cli::{output, Cli, Cmd, DEFAULT_STATE_DIR},
    client::{self, fallback, protocol::Command},
    drill::canary,
    isolate::verify_probe,
    journal,
    state_dir::JOURNAL_FILE,
};
use serde_json::{json, Value};

fn main() -> ExitCode {
    // The real /proc, before anything could be mounted over it (see
    // `kernel::procfs`).
    killpath::kernel::procfs::init();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Agent { .. }) {
        // Rust ignores SIGPIPE; a client piped into `head` should just
        // end. Never in the agent: a client that hangs up before its
        // response must cost an EPIPE, not the agent.
        // SAFETY: restores the default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let default_level = if matches!(cli.cmd, Cmd::Agent { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KILLPATH_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("killpath: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn state_dir(cli: &Cli) -> PathBuf {
    cli.state_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn call(cli: &Cli, cmd: &Command) -> anyhow::Result<Value> {
    Ok(client::call(&cli.socket, cmd, cli.request_timeout())?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = output::Output { json: cli.json };
    match &cli.cmd {
        Cmd::Agent { pin_dir, cgroup_parent, group, config, alert_hook, journal_key, approver_group, metrics, trail_max_bytes } => {
            let cgroup_parent = match cgroup_parent {
                Some(p) => p.clone(),
                None => AgentConfig::default_cgroup_parent()?,
            };
            let escalation = match config {
                Some(f) => killpath::agent::defaults::Escalation::load(f)?,
                None => Default::default(),
            };
            let config = AgentConfig {
                socket: cli.socket.clone(),
                state_dir: state_dir(&cli),
                pin_dir: pin_dir.clone(),
                cgroup_parent,
                group: *group,
                alert_hook: alert_hook.clone(),
                escalation,
                journal_key: journal_key.clone(),
                approver_group: *approver_group,
                metrics: *metrics,
                trail_max_bytes: *trail_max_bytes,
            };
            agent::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe => {
            let r = call(&cli, &Command::Probe {})?;
            out.probe(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { name, command, no_privileges, user, trail } => run_in_target(&cli, name, command, *no_privileges, user.as_deref(), *trail),
        Cmd::Adopt { name, cgroup, pid, unit, container, pod, trail } => {
            let cmd = Command::Adopt {
                name: name.clone(),
                cgroup: cgroup.clone(),
                pid: *pid,
                unit: unit.clone(),
                container: container.clone(),
                pod: pod.clone(),
                trail: *trail,
            };
            let r = call(&cli, &cmd)?;
            out.adopted(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { name } => {
            let r = call(&cli, &Command::Status { name: name.clone() })?;
            out.status(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { name, reason, agent_timeout } => {
            let started = std::time::Instant::now();
            let timeout =
                Duration::try_from_secs_f64(*agent_timeout).ok().filter(|t| !t.is_zero()).context("--agent-timeout must be a positive number of seconds")?;
            let cmd = Command::Stop { name: name.clone(), reason: reason.clone(), order: None };
            let r = match client::call(&cli.socket, &cmd, timeout) {
                Ok(r) => r,
                // An agent that answers but can journal nothing (its
                // journal is poisoned) is bypassed like one that does not answer.
                Err(e) if e.agent_unavailable() || e.journal_poisoned() => {
                    let why = e.to_string();
                    eprintln!("killpath: {why}; stopping {name} directly through its cgroup");
                    fallback::stop(&state_dir(&cli), name, reason.as_deref(), &why, started)?
                }
                Err(e) => return Err(e.into()),
            };
            out.stopped(&r);
            Ok(if r["survivors"].as_u64() == Some(0) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Isolate { name, reason, verify, netdev, audit } => {
            let r = call(&cli, &Command::Isolate { name: name.clone(), reason: reason.clone(), verify: *verify, netdev: netdev.clone(), audit: *audit })?;
            if *audit {
                out.audit_started(&r);
                return Ok(ExitCode::SUCCESS);
            }
            out.isolated(&r);
            Ok(verdict(&r))
        }
        Cmd::Degrade { name, revoke, allow_connect, allow_write, reason, audit } => {
            let cmd = Command::Degrade {
                name: name.clone(),
                revoke: revoke.clone(),
                allow_connect: allow_connect.clone(),
                allow_write: allow_write.clone(),
                reason: reason.clone(),
                audit: *audit,
            };
            let r = call(&cli, &cmd)?;
            if *audit {
                out.audit_started(&r);
                return Ok(ExitCode::SUCCESS);
            }
            out.degraded(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trail(args) => {
            let r = call(&cli, &args.request())?;
            let ok = killpath::cli::trail::print(args, &r, cli.json);
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Tripwire { cmd } => {
            let r = call(&cli, &cmd.request())?;
            killpath::cli::tripwire::print(cmd, &r, cli.json);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Escalate { name, to, skip_reason, reason } => {
            let cmd = Command::Escalate { name: name.clone(), to: to.clone(), skip_reason: skip_reason.clone(), reason: reason.clone() };
            let r = call(&cli, &cmd)?;
            out.escalated(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drill { name, canary, scenario, report, history, audit } => {
            if *history {
                let r = call(&cli, &Command::Journal { after: 0 })?;
                out.drill_history(&r);
                return Ok(ExitCode::SUCCESS);
            }
            let opts =
                killpath::drill::Options { socket: cli.socket.clone(), target: name.clone(), canary: *canary, scenario: scenario.clone(), audit: *audit };
            let rep = killpath::drill::run(&opts)?;
            if let Some(f) = report {
                std::fs::write(f, serde_json::to_vec_pretty(&rep)?).map_err(|e| anyhow::anyhow!("writing {}: {e}", f.display()))?;
            }
            out.drill_report(&rep);
            Ok(if rep.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::DrillProbe { cgroup, cap, connect, outside_pid, scratch, exec_continuation } => {
            let r = killpath::drill::probe::run(cgroup, cap, *connect, *outside_pid, scratch, exec_continuation.as_deref())?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Throttle { name, syscalls, syscall_class, egress_bytes, egress_packets, tasks, mode, netdev, reason } => {
            let cmd = Command::Throttle {
                name: name.clone(),
                syscalls: *syscalls,
                syscall_class: syscall_class.iter().cloned().collect(),
                egress_bytes: *egress_bytes,
                egress_packets: *egress_packets,
                tasks: *tasks,
                mode: Some(mode.clone()),
                netdev: netdev.clone(),
                reason: reason.clone(),
            };
            let r = call(&cli, &cmd)?;
            out.throttled(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Capabilities => {
            let r = call(&cli, &Command::Capabilities {})?;
            out.capabilities(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events => {
            client::subscribe(&cli.socket, &Command::Events {}, |ev| out.event(ev))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore { name, to, grant, reason, audit_off } => {
            let r = call(&cli, &Command::Restore { name: name.clone(), to: to.clone(), grant: grant.clone(), reason: reason.clone(), audit_off: *audit_off })?;
            if *audit_off {
                out.audit_ended(&r);
                return Ok(ExitCode::SUCCESS);
            }
            out.restored(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { name } => {
            let r = call(&cli, &Command::Verify { name: name.clone() })?;
            out.verified(&r);
            Ok(verdict(&r))
        }
        Cmd::VerifyProbe(args) => {
            verify_probe::run(args);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lease { name, ttl, on_expiry, renew, cancel } => {
            let r = call(&cli, &Command::Lease { name: name.clone(), ttl: ttl.clone(), on_expiry: on_expiry.clone(), renew: *renew, cancel: *cancel })?;
            out.lease(name, &r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Release { name } => {
            let r = call(&cli, &Command::Release { name: name.clone() })?;
            out.released(&r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Propose { name, level, reason, timeout, on_timeout, meanwhile, approver_group, evidence } => {
            let cmd = Command::Propose {
                name: name.clone(),
                level: level.clone(),
                reason: reason.clone(),
                timeout: Some(timeout.clone()),
                on_timeout: Some(on_timeout.clone()),
                meanwhile: meanwhile.clone(),
                approver_group: *approver_group,
                evidence: evidence.clone().unwrap_or_default(),
            };
            out.proposed(&call(&cli, &cmd)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pending => {
            out.pending(&call(&cli, &Command::Pending {})?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Approve { id, reason } => {
            out.approved(&call(&cli, &Command::Approve { id: *id, reason: reason.clone() })?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Deny { id, reason } => {
            out.denied(&call(&cli, &Command::Deny { id: *id, reason: Some(reason.clone()) })?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Journal { follow, verify, file, offline, anchor, key, head } => {
            let check = JournalCheck { anchor: anchor.clone(), key: key.clone(), head: *head };
            journal_cmd(&cli, &out, *follow, *verify, file.clone(), *offline, &check)
        }
        Cmd::Completions { shell } => {
            killpath::cli::completions::print(*shell, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            for page in killpath::cli::completions::man_pages(dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Canary { dir, check, workers, service, worker, ticker } => {
            if *check {
                let r = canary::check(dir)?;
                out.canary_check(&r);
                return Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            match (worker, ticker) {
                (Some(n), _) => canary::worker(dir, *n, *service)?,
                (None, true) => canary::ticker()?,
                (None, false) => canary::run(dir, *workers, *service)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `run NAME -- CMD`: the agent creates the cgroup and moves this very
/// process (identified by SO_PEERCRED) into it; then this process gives up
/// its privileges (with --no-privileges / --user) and execs CMD, so CMD's
/// first instruction already runs inside the target, unprivileged.
fn run_in_target(cli: &Cli, name: &str, command: &[String], no_privileges: bool, user: Option<&str>, trail: bool) -> anyhow::Result<ExitCode> {
    use killpath::privileges::{self, drop as privs};
    use std::os::unix::process::CommandExt as _;
    let Some((prog, args)) = command.split_first() else { bail!("run needs a command after `--`") };
    // Resolved before the target exists: a typo must not leave one behind.
    let identity = match user {
        Some(u) => Some(privs::resolve(u)?),
        None if no_privileges && nix::unistd::geteuid().is_root() => {
            Some(privs::resolve("nobody").unwrap_or(privs::Identity { uid: privs::NOBODY, gid: privs::NOBODY }))
        }
        None => None,
    };
    // With --trail, recording starts in the same transaction, before CMD's exec.
    let r = call(cli, &Command::Create { name: name.to_owned(), move_caller: true, trail })?;
    if no_privileges || user.is_some() {
        if let Err(e) = privs::drop_all(identity) {
            // Fail closed: never exec the workload with privileges it was
            // meant not to have.
            eprintln!("killpath: cannot drop privileges: {e} (target {name} was created; `killpath release {name}` removes it)");
            return Ok(ExitCode::from(126));
        }
    }
    // What CMD will hold (execve adds nothing: with no_new_privs and an
    // empty bounding set, and without them this process is already all it
    // will be), judged like `status` judges a target's tasks.
    let guard = privileges::Guard::from_state(r["lsm_error"].as_str(), r["protect_error"].as_str());
    let cgroup = PathBuf::from(r["target"]["cgroup"].as_str().unwrap_or_default());
    let mount = killpath::kernel::cgroup::cgroup2_mount()?;
    let verdict = privileges::assess(&[std::process::id() as i32], &cgroup, &mount, &guard);
    // stdout is CMD's: the verdict goes to stderr.
    if cli.json {
        eprintln!("{}", json!({"target": name, "cgroup": cgroup, "privileges": verdict}));
    } else if verdict.escape == "possible" {
        eprintln!("killpath: target {name}: escape possible: {}", verdict.why);
    }
    let err = std::process::Command::new(prog).args(args).exec();
    eprintln!("killpath: cannot execute {prog}: {err} (target {name} was created; `killpath release {name}` removes it)");
    Ok(ExitCode::from(127))
}

/// Non-zero exit when a verify table has any OPEN channel.
fn verdict(r: &Value) -> ExitCode {
    let open = r["verify"].as_array().is_some_and(|v| v.iter().any(|c| c["result"] == "OPEN"));
    if open {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `journal --anchor`, `--key`, `--head`.
struct JournalCheck {
    anchor: Option<String>,
    key: Option<PathBuf>,
    head: bool,
}

fn journal_cmd(
    cli: &Cli,
    out: &output::Output,
    follow: bool,
    verify: bool,
    file: Option<PathBuf>,
    offline: bool,
    check: &JournalCheck,
) -> anyhow::Result<ExitCode> {
    let local = file.or_else(|| (offline || (verify && cli.state_dir.is_some())).then(|| state_dir(cli).join(JOURNAL_FILE)));
    if check.head {
        let head = match &local {
            Some(path) => json!(journal::head_of_file(path)?),
            None => call(cli, &Command::Status { name: None })?["journal"]["head"].clone(),
        };
        out.head(&head);
        return Ok(ExitCode::SUCCESS);
    }
    if verify {
        // Bad syntax is refused here, before anything is read.
        let anchor = check.anchor.as_deref().map(journal::Anchor::parse).transpose().map_err(anyhow::Error::msg)?;
        let report = match &local {
            Some(path) => {
                let key = check.key.as_deref().map(journal::Key::read).transpose()?;
                json!(journal::verify_file_with(path, &journal::VerifyOptions { anchor, key, written: None })?)
            }
            None if check.key.is_some() => {
                anyhow::bail!("--key checks a journal file: give --file PATH or --state-dir DIR (online, the agent checks HMACs with its own --journal-key)")
            }
            None => call(cli, &Command::JournalVerify { anchor: check.anchor.clone() })?,
        };
        out.verify(&report);
        return Ok(if report["ok"].as_bool() == Some(true) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let mut after = 0;
    loop {
        let records = match &local {
            Some(path) => json!(journal::read_records(path, after)?),
            None => call(cli, &Command::Journal { after })?["records"].clone(),
        };
        if let Some(last) = records.as_array().and_then(|a| a.last()) {
            after = last["seq"].as_u64().unwrap_or(after);
        }
        out.records(&records);
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
