//! Degrade follows cgroup membership: children, later programs and nested
//! cgroups are degraded, processes outside the target are not, and a
//! process moved out is put back (membership follows the task).
use std::time::Duration;

use serde_json::json;

use super::{
    clients::{connect_errno, connect_errno_outside, tcp_sink},
    denials,
    helper::Helper,
    EPERM,
};

use crate::{
    harness::{wait_until, Agent},
    support::cgroup::{cgroup_line, make_cgroup},
};

/// Degrade follows cgroup membership: the running process, a child it
/// forks afterwards, a program it starts afterwards, a process in a nested
/// cgroup and a fresh process there are all refused; processes outside the
/// target (the test's own cgroup, a sibling cgroup) are not; a process
/// moved out is moved back and stays degraded.
#[test]
fn degrade_reaches_children_and_nested_cgroups_only() {
    let Some(agent) = Agent::start() else { return };
    let port = tcp_sink();
    let c = json!({"host": "127.0.0.1", "port": port});
    let mut main = Helper::run(&agent, "fam");
    let tcg = agent.target_cgroup("fam").path().to_owned();
    let deeper = make_cgroup(tcg.join("inner").join("deeper"));
    let sibling = make_cgroup(agent.cgroup_parent.join("not-a-target"));
    let mut nested = Helper::spawn_in(&agent, "nested", deeper.path());
    assert!(cgroup_line(nested.pid).is_some_and(|l| l.ends_with("/fam/inner/deeper")), "the nested helper runs in fam/inner/deeper");
    for (h, ctx) in [(&mut main, "before, target"), (&mut nested, "before, nested")] {
        h.expect("connect", c.clone(), 0, ctx);
        h.expect("fork_connect", c.clone(), 0, ctx);
    }
    assert_eq!(connect_errno(sibling.path(), "127.0.0.1", port), 0);

    agent.json(&["degrade", "fam", "--revoke", "net.connect"]);
    let mut refused = 0;
    main.expect("connect", c.clone(), EPERM, "the target's own process (started before)");
    main.expect("fork_connect", c.clone(), EPERM, "a child forked after the degrade");
    main.expect("spawn_connect", c.clone(), EPERM, "a program started (fork + exec) after the degrade");
    nested.expect("connect", c.clone(), EPERM, "a process in a nested cgroup (started before)");
    nested.expect("fork_connect", c.clone(), EPERM, "its child");
    refused += 5;
    assert_eq!(connect_errno(&tcg.join("inner"), "127.0.0.1", port), EPERM, "a fresh process in fam/inner");
    assert_eq!(connect_errno(deeper.path(), "127.0.0.1", port), EPERM, "a fresh process in fam/inner/deeper");
    refused += 2;
    // Outside the target: untouched.
    assert_eq!(connect_errno_outside("127.0.0.1", port), 0, "the test's own cgroup");
    assert_eq!(connect_errno(sibling.path(), "127.0.0.1", port), 0, "a sibling cgroup under the same parent");
    // Membership follows the task: a process moved out of the target is
    // an escape attempt, moved back by the agent, and stays degraded.
    sibling.move_pid(nested.pid).unwrap();
    wait_until(Duration::from_secs(2), || cgroup_line(nested.pid).is_some_and(|l| l.contains("/fam")))
        .unwrap_or_else(|| panic!("a process moved out of the target was not moved back: {:?}", cgroup_line(nested.pid)));
    nested.expect("connect", c.clone(), EPERM, "moved out of the target, and back");
    nested.expect("fork_connect", c.clone(), EPERM, "moved out of the target and back, its child");
    refused += 2;
    assert_eq!(denials(&agent, "fam", "net.connect"), refused, "one denial per refused attempt, nested ones counted for the target");

    agent.json(&["restore", "fam", "--grant", "net.connect"]);
    main.expect("connect", c.clone(), 0, "restored");
    main.expect("fork_connect", c.clone(), 0, "restored");
    main.expect("spawn_connect", c.clone(), 0, "restored");
    assert_eq!(connect_errno(deeper.path(), "127.0.0.1", port), 0, "restored, nested");
    drop(nested);
    drop(main);
    let _ = sibling.remove();
}
