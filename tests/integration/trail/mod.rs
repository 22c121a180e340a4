//! The activity trail (issue 16): what a recording target did outside
//! itself, checked against what the workload is known to have done (the
//! script's own commands, pids seen from /proc, a receiver outside).
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{alive, skip, wait_until, Agent};

mod config;
mod exe;
mod files;
mod flood;
mod ring_loss;
mod scenario;
mod signal;
mod tamper;

/// `killpath run NAME --trail -- sh -c SCRIPT` in the background, once
/// the script runs.
pub fn run_recorded(a: &Agent, name: &str, script: &str) -> Child {
    let child = a.cmd(&["run", name, "--trail", "--", "sh", "-c", script]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("spawn run");
    let pid = child.id();
    // Until it runs the command: before its own exec the child still
    // carries the forking thread's name (the test's), then `killpath`
    // while it asks the agent.
    let test_comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "killpath" && c.trim() != test_comm.trim())
    })
    .unwrap_or_else(|| panic!("`killpath run {name}` never exec'd its command"));
    child
}

/// The trail's records (`trail NAME --json [extra]`).
pub fn records(a: &Agent, name: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["trail", name];
    args.extend_from_slice(extra);
    a.json(&args)["records"].as_array().cloned().unwrap_or_default()
}

/// The argv of every exec record whose path is `path`.
pub fn execs_of(recs: &[Value], path: &str) -> Vec<Vec<String>> {
    recs.iter()
        .filter(|r| r["action"] == "exec" && r["path"] == path)
        .map(|r| r["argv"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or("").to_owned()).collect()).unwrap_or_default())
        .collect()
}

/// Every exec of a recording target is in its trail, with its path and
/// argv as the kernel read them at exec, and the pid /proc shows.
#[test]
fn trail_lists_execs() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let script = format!("for i in 1 2 3; do /bin/echo marker-$i 'two words' >/dev/null; done; touch {}; exec sleep 60", done.display());
    let mut child = run_recorded(&a, "tr-exec", &script);
    let sh = child.id();
    wait_until(Duration::from_secs(10), || done.exists()).expect("the script ran");
    // The events come through the ring buffer: wait until the last one (the sleep) is written.
    wait_until(Duration::from_secs(10), || {
        !execs_of(&records(&a, "tr-exec", &[]), "/usr/bin/sleep").is_empty() || !execs_of(&records(&a, "tr-exec", &[]), "/bin/sleep").is_empty()
    })
    .unwrap_or_else(|| panic!("no sleep exec in the trail: {:#?}", records(&a, "tr-exec", &[])));
    let recs = records(&a, "tr-exec", &["--kind", "exec"]);
    assert!(recs.iter().all(|r| r["action"] == "exec"), "--kind exec lists execs only: {recs:#?}");
    let echo = execs_of(&recs, "/bin/echo");
    let want: Vec<Vec<String>> = (1..=3).map(|i| vec!["/bin/echo".to_owned(), format!("marker-{i}"), "two words".to_owned()]).collect();
    assert_eq!(echo, want, "each /bin/echo exactly once, with its argv: {recs:#?}");
    // The shell itself: `run` exec'd it in place, so its pid is the child's.
    let shell = recs.iter().find(|r| r["argv"].get(1) == Some(&Value::from("-c"))).unwrap_or_else(|| panic!("no exec of sh -c: {recs:#?}"));
    assert_eq!(shell["pid"], sh, "the shell's exec carries the pid /proc knows");
    assert_eq!(shell["level"], "normal");
    assert_eq!(shell["uid"], 0);
    // The sleep replaced the shell (exec): same pid, alive.
    assert!(alive(sh as i32));
    // Nothing but this target's execs (the test's own killpath commands run outside it).
    assert!(recs.iter().all(|r| r["comm"] != "killpath" || r["argv"].get(1) == Some(&Value::from("-c"))), "{recs:#?}");
    let s = a.json(&["trail", "tr-exec", "--summary"]);
    assert_eq!(s["total"]["programs"]["/bin/echo"], 3, "{s:#}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `adopt --trail` records an adopted process tree; `status` says so;
/// `trail --off` stops recording (an exec while off is not in the trail,
/// though the ring is FIFO and a later exec recorded after `--on` again
/// is) and keeps what was recorded; `--since` selects by time.
#[test]
fn trail_adopt_on_off_and_status() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let f = |n: &str| dir.path().join(n).display().to_string();
    let wait = |n: &str| format!("while [ ! -e {} ]; do sleep 0.05; done", f(n));
    let script = format!(
        "{}; /bin/echo adopted-marker; {}; /bin/echo while-off; touch {}; {}; /bin/echo back-on; exec sleep 60",
        wait("go"),
        wait("off"),
        f("done-off"),
        wait("on")
    );
    let mut child = std::process::Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("workload");
    let pid = child.id().to_string();
    a.json(&["adopt", "tr-adopt", "--pid", &pid, "--trail"]);
    let st = a.json(&["status", "tr-adopt"]);
    assert_eq!(st["targets"][0]["trail"]["recording"], true, "{st:#}");
    std::fs::write(f("go"), "").expect("go");
    wait_until(Duration::from_secs(10), || !execs_of(&records(&a, "tr-adopt", &[]), "/bin/echo").is_empty()).expect("the adopted tree's exec is recorded");
    assert_eq!(a.json(&["trail", "tr-adopt", "--off"])["recording"], false);
    assert_eq!(a.json(&["status", "tr-adopt"])["targets"][0]["trail"]["recording"], false);
    std::fs::write(f("off"), "").expect("off");
    wait_until(Duration::from_secs(10), || std::path::Path::new(&f("done-off")).exists()).expect("the exec while off ran");
    assert_eq!(a.json(&["trail", "tr-adopt", "--on"])["recording"], true);
    std::fs::write(f("on"), "").expect("on");
    wait_until(Duration::from_secs(10), || execs_of(&records(&a, "tr-adopt", &[]), "/bin/echo").len() >= 2).expect("the exec after --on is recorded");
    let recs = records(&a, "tr-adopt", &[]);
    let echo: Vec<String> = execs_of(&recs, "/bin/echo").into_iter().map(|argv| argv.join(" ")).collect();
    assert_eq!(echo, ["/bin/echo adopted-marker", "/bin/echo back-on"], "not the exec while off: {recs:#?}");
    assert!(recs.iter().any(|r| r["action"] == "trail-off") && recs.iter().any(|r| r["action"] == "trail-on"), "{recs:#?}");
    assert_eq!(records(&a, "tr-adopt", &["--since", "1h"]).len(), recs.len());
    assert!(records(&a, "tr-adopt", &["--since", "4102444800"]).is_empty(), "nothing after 2100");
    let bad = a.kp(&["trail", "tr-adopt", "--kind", "disk"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("net, exec, file, signal"), "{bad:?}");
    // A level by name or number selects the same records; the records were made at normal.
    let by_name = records(&a, "tr-adopt", &["--level", "normal"]);
    assert!(!by_name.is_empty(), "records at normal: {recs:#?}");
    assert_eq!(by_name, records(&a, "tr-adopt", &["--level", "0"]), "--level 0 is --level normal");
    assert!(records(&a, "tr-adopt", &["--level", "stop"]).is_empty(), "nothing at stopped");
    for (args, says) in [
        (&["trail", "tr-adopt", "--since", "99999999999999999999"][..], "--since"),
        (&["trail", "tr-adopt", "--since", "999999999999999d"][..], "--since"),
        (&["trail", "tr-adopt", "--level", "panic"][..], "unknown level"),
        (&["trail", "no-such-target"][..], "no-such-target"),
    ] {
        let out = a.kp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?} must fail naming {says:?}: {out:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The workload cannot switch its own recording off: `trail --off` from a
/// task inside the target is refused (a confined caller may only read),
/// and an exec after the attempt is still recorded.
#[test]
fn trail_workload_cannot_switch_itself_off() {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; /bin/echo after-the-attempt; exec sleep 60", go.display());
    let mut child = run_recorded(&a, "tr-self", &script);
    let cg = a.target_cgroup("tr-self");
    let sock = a.socket.to_str().expect("socket path");
    let out = crate::support::cgroup::in_cgroup_within(30, cg.path(), &[crate::harness::BIN, "--socket", sock, "trail", "tr-self", "--off"]);
    assert!(!out.status.success(), "trail --off from inside the target must be refused: {out:?}");
    assert_eq!(a.json(&["status", "tr-self"])["targets"][0]["trail"]["recording"], true, "still recording");
    std::fs::write(&go, "").expect("go");
    wait_until(Duration::from_secs(10), || !execs_of(&records(&a, "tr-self", &[]), "/bin/echo").is_empty())
        .unwrap_or_else(|| panic!("the exec after the attempt is recorded: {:#?}", records(&a, "tr-self", &[])));
    assert!(!records(&a, "tr-self", &[]).iter().any(|r| r["action"] == "trail-off"), "no trail-off record");
    let _ = child.kill();
    let _ = child.wait();
}
