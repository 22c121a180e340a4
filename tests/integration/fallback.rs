//! Tests: fallback. When the agent does not answer (hung, or dead),
//! `killpath stop` stops the target through its cgroup itself, says so,
//! arms the guard through the pinned map, and journals to a fallback journal
//! that the agent imports when it comes back.
use std::{
    path::PathBuf,
    process::{Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        cgroup::{make_cgroup, move_into},
        process::{assert_all_dead, children, living, pids, run_bg, show, spawn_outside, text, Reaped},
        status::target_row,
    },
};

const FALLBACK_JOURNAL: &str = "fallback-journal.jsonl";

fn fallback_journal(agent: &Agent) -> PathBuf {
    agent.state_dir.join(FALLBACK_JOURNAL)
}

/// Starts target `name`: a shell with two sleeping children (3 tasks).
fn start_three(agent: &Agent, name: &str) -> (Reaped, Vec<i32>) {
    let run = run_bg(agent, name, &["sh", "-c", "sleep 1000 & sleep 1000 & wait"], 3);
    wait_until(Duration::from_secs(5), || children(run.pid()).len() == 2).expect("two children");
    let all = pids(&agent.target_cgroup(name));
    assert_eq!(all.len(), 3, "{all:?}");
    (run, all)
}

/// Runs `killpath --json stop NAME --agent-timeout T` and parses its report.
fn fallback_stop(agent: &Agent, name: &str, timeout: &str) -> (Output, Value) {
    let out = agent.kp(&["--json", "stop", name, "--agent-timeout", timeout]);
    assert!(out.status.success(), "stop {name} without the agent failed: {}\nagent log:\n{}", show(&out), agent.log_text());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", show(&out)));
    (out, r)
}

/// What a direct stop must report and do.
fn assert_fallback_stopped(agent: &Agent, name: &str, out: &Output, r: &Value, before: &[i32]) {
    let ctx = show(out);
    assert_eq!(r["fallback"], true, "{ctx}");
    assert_eq!(r["survivors"], 0, "{ctx}");
    assert_eq!(r["tasks_at_start"], before.len(), "{ctx}");
    assert!(r["time_to_empty_us"].as_u64().unwrap_or(0) > 0, "{ctx}");
    assert_eq!(r["guard"], "armed", "the pins are there, so the guard must be armed: {ctx}");
    assert_eq!(r["journal"], fallback_journal(agent).to_str().unwrap(), "{ctx}");
    let err = text(&out.stderr);
    assert!(err.contains(&format!("stopping {name} directly through its cgroup")), "stderr must say it bypassed the agent: {ctx}");
    assert_all_dead(agent, "after the direct stop", before);
    let cg = agent.target_cgroup(name);
    assert_eq!(cg.populated().ok(), Some(false), "{ctx}");
    assert!(pids(&cg).is_empty(), "{ctx}");
}

/// `journal --verify --file PATH` passes.
fn assert_verifies(agent: &Agent, path: &std::path::Path) {
    let out = agent.kp(&["--json", "journal", "--verify", "--file", path.to_str().unwrap()]);
    assert!(out.status.success(), "journal --verify --file {}: {}", path.display(), show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert_eq!(v["ok"], true, "{v}");
}

/// Records of a journal file (the fallback journal has the main journal's format).
fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("journal line is JSON")).collect()
}

/// The agent hangs (SIGSTOP): stop goes direct, and the restarted agent
/// imports the fallback journal and reconciles the level from the kernel.
#[test]
fn fallback_stop_when_agent_hangs_then_import_on_restart() {
    let Some(mut agent) = Agent::start() else { return };
    let (_run, before) = start_three(&agent, "hung");
    kill(Pid::from_raw(agent.pid()), Signal::SIGSTOP).expect("SIGSTOP agent");

    let t0 = std::time::Instant::now();
    let (out, r) = fallback_stop(&agent, "hung", "1");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "waited {took:?} for a 1 s agent timeout");
    assert!(r["agent_error"].as_str().unwrap_or("").contains("did not answer"), "{}", show(&out));
    assert_fallback_stopped(&agent, "hung", &out, &r, &before);

    let fb = fallback_journal(&agent);
    assert!(fb.exists(), "no fallback journal at {}", fb.display());
    assert_verifies(&agent, &fb);
    let fb_records = records(&fb);
    let result = fb_records
        .iter()
        .find(|x| x["action"] == "stop" && x["phase"] == "result")
        .unwrap_or_else(|| panic!("no stop result in the fallback journal: {fb_records:?}"));
    assert_eq!((result["target"].as_str(), result["outcome"].as_str()), (Some("hung"), Some("ok")), "{result}");

    // The hung agent never gets to act; it is killed while stopped, then restarted.
    agent.kill9();
    agent.spawn();

    let journal = agent.journal();
    let imported: Vec<&Value> = journal.iter().filter(|x| x["action"] == "fallback-imported").collect();
    assert_eq!(imported.len(), fb_records.len(), "every fallback record is imported once: {imported:?}");
    for (imp, orig) in imported.iter().zip(&fb_records) {
        assert_eq!(&imp["params"]["fallback_record"], orig, "imported record carries the original");
        assert!(imp["params"].get("fallback_verify").is_none(), "the fallback journal verified, so no problems attached: {imp}");
    }
    let stop_import = imported.iter().find(|x| x["params"]["fallback_record"]["phase"] == "result").expect("the stop result was imported");
    assert_eq!((stop_import["target"].as_str(), stop_import["outcome"].as_str()), (Some("hung"), Some("ok")), "{stop_import}");
    assert_verifies(&agent, &agent.journal_path());
    let out = agent.kp(&["journal", "--verify"]);
    assert!(out.status.success(), "journal --verify through the agent: {}", show(&out));

    assert!(!fb.exists(), "the fallback journal must be renamed away after import");
    let renamed: Vec<String> = std::fs::read_dir(&agent.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{FALLBACK_JOURNAL}.imported-")))
        .collect();
    assert_eq!(renamed.len(), 1, "{renamed:?}");

    // The registry still said `normal` (only the agent writes it); the
    // pinned kernel map says stopped, and the higher level wins.
    let row = target_row(&agent, "hung").expect("listed after restart");
    assert_eq!(row["level"], "stopped", "{row}\nagent log:\n{}", agent.log_text());
    assert_eq!(row["kernel_level"], "stopped", "{row}");
    let start = journal.iter().rev().find(|x| x["action"] == "agent-start").expect("agent-start record");
    assert_eq!(start["params"]["fallback_records_imported"], fb_records.len(), "{start}");
    assert!(start["params"]["reconciled"].to_string().contains("stopped"), "reconciliation journaled: {start}");

    // A second restart imports nothing again.
    agent.kill9();
    agent.spawn();
    let again = agent.journal().iter().filter(|x| x["action"] == "fallback-imported").count();
    assert_eq!(again, imported.len(), "fallback records imported twice");
}

/// The agent resumes after the client gave up: it still answers, and the
/// stale request it finds on the socket does no harm.
#[test]
fn fallback_stop_then_agent_resumes() {
    let Some(agent) = Agent::start() else { return };
    let (_run, before) = start_three(&agent, "resumed");
    kill(Pid::from_raw(agent.pid()), Signal::SIGSTOP).expect("SIGSTOP agent");
    let (out, r) = fallback_stop(&agent, "resumed", "0.5");
    assert_fallback_stopped(&agent, "resumed", &out, &r, &before);
    kill(Pid::from_raw(agent.pid()), Signal::SIGCONT).expect("SIGCONT agent");
    let row = wait_until(Duration::from_secs(5), || agent.kp(&["status"]).status.success()).map(|()| target_row(&agent, "resumed"));
    let row = row.expect("agent serves again after SIGCONT").expect("listed");
    assert_eq!(row["kernel_level"], "stopped", "{row}");
    assert_eq!(row["tasks"], 0, "{row}");
    // The direct stop's records stay in the fallback journal, intact,
    // until the agent restarts and imports them.
    assert_verifies(&agent, &fallback_journal(&agent));
    assert_verifies(&agent, &agent.journal_path());
    // Still guarded.
    let p = spawn_outside(&["sleep", "1000"]);
    move_into(&agent.target_cgroup("resumed"), p.pid());
    assert!(wait_until(Duration::from_secs(2), || !alive(p.pid())).is_some(), "guard off after fallback stop");
}

/// The agent is dead: with its socket left behind (connection refused) and
/// with the socket gone, `stop` still works, and the guard it armed through
/// the pinned map kills what is moved in later, with no agent at all.
#[test]
fn fallback_stop_when_agent_is_dead() {
    let Some(mut agent) = Agent::start() else { return };
    let (_a, before_a) = start_three(&agent, "dead-a");
    let (_b, before_b) = start_three(&agent, "dead-b");
    agent.kill9();
    assert!(agent.socket.exists(), "a SIGKILLed agent leaves its socket file");

    let (out, r) = fallback_stop(&agent, "dead-a", "3");
    assert!(r["agent_error"].as_str().unwrap_or("").contains("cannot reach the agent"), "{}", show(&out));
    assert_fallback_stopped(&agent, "dead-a", &out, &r, &before_a);

    std::fs::remove_file(&agent.socket).expect("remove socket");
    let (out, r) = fallback_stop(&agent, "dead-b", "3");
    assert!(r["agent_error"].as_str().unwrap_or("").contains("cannot reach the agent"), "{}", show(&out));
    assert_fallback_stopped(&agent, "dead-b", &out, &r, &before_b);

    // Human output says it too.
    let out = agent.kp(&["stop", "dead-a"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).contains("stopped directly"), "{}", show(&out));

    assert_verifies(&agent, &fallback_journal(&agent));
    let stops = records(&fallback_journal(&agent)).into_iter().filter(|x| x["action"] == "stop" && x["phase"] == "result").count();
    assert_eq!(stops, 3, "each direct stop journaled");

    // Kernel guard, armed by the CLI alone.
    for name in ["dead-a", "dead-b"] {
        let p = spawn_outside(&["sleep", "1000"]);
        move_into(&agent.target_cgroup(name), p.pid());
        assert!(wait_until(Duration::from_secs(2), || !alive(p.pid())).is_some(), "guard of {name} not armed by the fallback stop");
    }

    // An unknown name still fails, agent or not.
    let out = agent.kp(&["stop", "nope", "--agent-timeout", "1"]);
    assert!(!out.status.success() && text(&out.stderr).contains("nope"), "{}", show(&out));

    // A cgroup made by the test is not in the registry: the fallback only
    // acts on known targets.
    let stray = make_cgroup(agent.cgroup_parent.join("stray"));
    let p = spawn_outside(&["sleep", "1000"]);
    move_into(&stray, p.pid());
    let out = agent.kp(&["stop", "stray", "--agent-timeout", "1"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(alive(p.pid()), "stop of an unknown name must not kill anything");
}

/// A healthy agent is never bypassed: `stop` goes through it (registry,
/// main journal), whatever `--agent-timeout` says. `--agent-timeout 0` is
/// either rejected or treated as "the agent answered": it must not make the
/// CLI believe the agent is unavailable.
#[test]
fn fallback_not_used_when_agent_answers() {
    let Some(agent) = Agent::start() else { return };
    let (_a, before) = start_three(&agent, "healthy");
    let out = agent.kp(&["--json", "stop", "healthy", "--agent-timeout", "1"]);
    assert!(out.status.success(), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(r.get("fallback").is_none(), "the agent answered, no fallback: {}", show(&out));
    assert_eq!(r["survivors"], 0, "{r}");
    assert_all_dead(&agent, "after stop", &before);
    assert!(!fallback_journal(&agent).exists(), "no fallback journal when the agent answered");

    let (_b, before) = start_three(&agent, "zero");
    let out = agent.kp(&["--json", "stop", "zero", "--agent-timeout", "0"]);
    let fb = fallback_journal(&agent).exists();
    assert!(
        !fb && !text(&out.stderr).contains("directly"),
        "--agent-timeout 0 bypassed a healthy agent (fallback journal written: {fb}): {}",
        show(&out)
    );
    if out.status.success() {
        assert_all_dead(&agent, "after stop --agent-timeout 0", &before);
    } else {
        assert!(text(&out.stderr).contains("agent-timeout"), "{}", show(&out));
        assert_eq!(living(&before), before, "a rejected stop must not kill");
    }
}

/// The fallback stop reports only what happened: it completes its own
/// intent, so it must not warn about an "interrupted action".
#[test]
fn fallback_stop_has_no_spurious_warning() {
    let Some(mut agent) = Agent::start() else { return };
    let (_a, before) = start_three(&agent, "quiet");
    agent.kill9();
    let (out, r) = fallback_stop(&agent, "quiet", "1");
    assert_fallback_stopped(&agent, "quiet", &out, &r, &before);
    let err = text(&out.stderr);
    assert!(!err.contains("interrupted"), "a completed direct stop warns about an interrupted action: {}", show(&out));
}

/// A hung agent stops accepting connections once its listen backlog is full
/// (every client that timed out meanwhile left a queued connection). Even
/// then `stop` must give up on the agent within its timeout and stop the
/// target directly, not block in connect(2).
#[test]
fn fallback_stop_when_agent_backlog_is_full() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd as _;

    let Some(agent) = Agent::start() else { return };
    let (_a, before) = start_three(&agent, "backlog");
    kill(Pid::from_raw(agent.pid()), Signal::SIGSTOP).expect("SIGSTOP agent");
    let addr = UnixAddr::new(&agent.socket).expect("socket address");
    let mut queued = Vec::new();
    loop {
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None).expect("socket");
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => queued.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("connect #{}: {e}", queued.len()),
        }
        assert!(queued.len() < 70_000, "backlog never filled");
    }
    eprintln!("agent backlog full after {} queued connections", queued.len());

    let mut child =
        agent.cmd(&["--json", "stop", "backlog", "--agent-timeout", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn stop");
    let done = wait_until(Duration::from_secs(6), || child.try_wait().ok().flatten().is_some());
    if done.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("stop output");
    drop(queued);
    assert!(done.is_some(), "`stop --agent-timeout 1` still blocked after 6 s against a hung agent with a full backlog: {}", show(&out));
    assert!(out.status.success(), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_fallback_stopped(&agent, "backlog", &out, &r, &before);
}
