//! Who may decide: with an approver group, a caller that the agent's
//! socket group lets in but that does not hold the approver group is
//! refused (journaled high priority, the action stays pending); the same
//! uid holding the group as a supplementary group is accepted.
use std::{os::unix::fs::PermissionsExt, process::Command};

use super::{connects, level, listener, pending, propose};
use crate::{
    harness::{Agent, BIN},
    support::process::{run_bg, show, text},
};

const NOBODY: u32 = 65534;
/// The agent's socket group (--group) and the approver group.
const SOCKET_GROUP: u32 = 64_101;
const APPROVERS: u32 = 64_102;

/// `killpath ARGS` as uid nobody with primary gid SOCKET_GROUP and exactly `groups`.
fn as_nobody(agent: &Agent, groups: &[u32], args: &[&str]) -> (std::process::Output, u32) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={SOCKET_GROUP}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")));
    }
    cmd.arg(BIN).args(args).env("KILLPATH_SOCKET", &agent.socket).env_remove("KILLPATH_LOG");
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("setpriv killpath");
    let pid = child.id();
    (child.wait_with_output().expect("wait"), pid)
}

#[test]
fn approver_group_refuses_outsiders() {
    let g = SOCKET_GROUP.to_string();
    let a = APPROVERS.to_string();
    let Some(agent) = Agent::start_with(&["--group", &g, "--approver-group", &a]) else { return };
    // The private tempdir is 0700: let nobody reach the 0660 socket.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _w = run_bg(&agent, "t", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("t");
    let (srv, port) = listener(&agent);
    let id = propose(&agent, &["t", "--level", "isolate"]);
    assert_eq!(pending(&agent, id).unwrap()["approver_group"], APPROVERS);

    // In the socket group, not in the approver group: refused.
    let (out, pid) = as_nobody(&agent, &[], &["approve", &id.to_string()]);
    assert!(!out.status.success() && text(&out.stderr).contains("not an approver"), "{}", show(&out));
    let (out, _) = as_nobody(&agent, &[], &["deny", &id.to_string(), "--reason", "no"]);
    assert!(!out.status.success() && text(&out.stderr).contains("not an approver"), "{}", show(&out));
    assert!(pending(&agent, id).is_some(), "a refused approver changed the pending action");
    assert_eq!(level(&agent, "t"), "normal");
    assert!(connects(&srv, port, cg.path()));
    let refused: Vec<_> = agent.journal().into_iter().filter(|r| r["action"] == "approval-refused" && r["params"]["id"] == id).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["high_priority"] == true && r["actor"]["uid"] == NOBODY), "{refused:?}");
    assert_eq!(refused[0]["actor"]["pid"], pid, "{:?}", refused[0]);
    // Root without the group is no approver either.
    let e = agent.kp(&["approve", &id.to_string()]);
    assert!(!e.status.success() && text(&e.stderr).contains("not an approver"), "{}", show(&e));

    // The same uid holding the approver group (supplementary): accepted.
    let (out, pid) = as_nobody(&agent, &[APPROVERS], &["--json", "approve", &id.to_string(), "--reason", "on call"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(level(&agent, "t"), "isolate");
    assert!(!connects(&srv, port, cg.path()), "approved isolate did not cut the target off");
    let intent = agent.journal().into_iter().find(|r| r["action"] == "approve" && r["phase"] == "intent").expect("approve journaled");
    assert_eq!(intent["actor"]["uid"], NOBODY, "{intent}");
    assert_eq!(intent["actor"]["pid"], pid, "{intent}");
    assert_eq!(intent["params"]["approver"]["gid"], SOCKET_GROUP, "{intent}");
    assert_eq!(intent["params"]["approver"]["user"], "nobody", "{intent}");
}
