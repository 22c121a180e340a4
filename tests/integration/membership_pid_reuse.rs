//! Tests: an escape is reverted on the escaped process, never on whoever
//! holds its number by then. The agent moves an escaped task back into
//! its target by number (`cgroup.procs` takes no pidfd), from an event a
//! while old: a root workload that leaves its cgroup and exits at once can
//! have the host's next task get that number (`kernel.ns_last_pid`). Judged
//! from outside: the bystander's /proc/PID/cgroup and the journal file.
use std::time::Duration;

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    harness::{alive, wait_until, Agent},
    membership::{escape_records, root_procs},
    support::{
        cgroup::cgroup_line,
        process::{bystander_with_pid, run_bg, Resume},
    },
};

/// With the agent held (SIGSTOP), a process of a target below isolate
/// moves itself to the cgroup2 root and exits at once; its parent reaps
/// it, and a bystander outside every target gets its number. Resumed, the
/// agent journals the escape as already gone and leaves the bystander
/// where it was, alive.
#[test]
fn an_escape_is_not_reverted_on_a_process_that_reused_its_number() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let (flag, pid_file, reaped) = (dir.join("go"), dir.join("escapee"), dir.join("reaped"));
    let script = format!(
        r#"while [ ! -e "{}" ]; do sleep 0.02; done; sh -c 'echo $$ > "{}"; echo 0 > "{}"; exit 0'; touch "{}"; exec sleep 1000"#,
        flag.display(),
        pid_file.display(),
        root_procs(),
        reaped.display()
    );
    let _run = run_bg(&agent, "reuse", &["sh", "-c", &script], 1);
    kill(Pid::from_raw(agent.pid()), Signal::SIGSTOP).expect("SIGSTOP agent");
    let resume = Resume(agent.pid());
    std::fs::write(&flag, "").expect("flag");
    wait_until(Duration::from_secs(10), || reaped.exists()).expect("the escapee never exited");
    let escapee: i32 = std::fs::read_to_string(&pid_file).expect("escapee pid").trim().parse().expect("a pid");
    let bystander = bystander_with_pid(escapee);
    let before = cgroup_line(escapee).expect("the bystander's cgroup");
    drop(resume);
    wait_until(Duration::from_secs(10), || !escape_records(&agent, escapee).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {escapee}\nlog:\n{}", agent.log_text()));
    let rec = &escape_records(&agent, escapee)[0];
    assert_eq!(rec["outcome"], "already gone", "{rec}");
    // A move back, had there been one, came before the record.
    assert_eq!(cgroup_line(escapee).as_deref(), Some(before.as_str()), "the bystander {escapee} was moved: {rec}");
    assert!(alive(escapee), "the bystander {escapee} died: {rec}");
    drop(bystander);
}
