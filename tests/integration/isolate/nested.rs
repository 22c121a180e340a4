//! Nested cgroups: below an isolated target, and a target inside another
//! target.
use super::{
    assert_level,
    clients::{check_http, check_ping, check_udp, udp_listener},
};
use crate::{
    harness::Agent,
    support::{
        cgroup::make_cgroup,
        net::http_server,
        process::{run_bg, show, text},
    },
};

/// Tasks in nested cgroups of the target (made before or after the
/// isolation) get no way out either.
#[test]
fn isolate_cuts_nested_cgroups() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let (nc, udp_port) = udp_listener(&agent);
    let _run = run_bg(&agent, "nest", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("nest");
    let inner = make_cgroup(cg.path().join("inner"));
    let deeper = make_cgroup(cg.path().join("inner").join("deeper"));
    let url = format!("http://127.0.0.1:{p4}/hello.txt");

    check_http(&http4, deeper.path(), &url, true, "before isolate, inner/deeper");
    agent.json(&["isolate", "nest"]);
    for (what, sub) in [("inner", inner.path().to_owned()), ("inner/deeper", deeper.path().to_owned())] {
        check_http(&http4, &sub, &url, false, &format!("isolated, {what}"));
        check_udp(&nc, udp_port, &sub, false, &format!("isolated, {what}"));
        check_ping(&sub, false, &format!("isolated, {what}"));
    }
    // A cgroup the workload makes after the isolation is no way out either.
    let late = make_cgroup(deeper.path().join("made-after-isolate"));
    check_http(&http4, late.path(), &url, false, "isolated, cgroup made after isolate");
    check_udp(&nc, udp_port, late.path(), false, "isolated, cgroup made after isolate");

    agent.json(&["restore", "nest", "--to", "normal"]);
    check_http(&http4, deeper.path(), &url, true, "after restore, inner/deeper");
    check_http(&http4, late.path(), &url, true, "after restore, cgroup made after isolate");
}

/// A target adopted from a cgroup inside another target: isolating the
/// inner one cuts it even though the outer one is normal (the strictest
/// level on the path wins), and isolating the outer one cuts the inner one
/// too. (Refusing such an adopt with a clear error would also be correct.)
#[test]
fn isolate_cuts_target_nested_in_another_target() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let _run = run_bg(&agent, "outer", &["sleep", "1000"], 1);
    let outer = agent.target_cgroup("outer");
    let sub = make_cgroup(outer.path().join("sub"));
    let out = agent.kp(&["--json", "adopt", "inner", "--cgroup", sub.path().to_str().unwrap()]);
    if !out.status.success() {
        assert!(text(&out.stderr).contains("outer"), "refusing a target inside a target must name it: {}", show(&out));
        return;
    }
    let url = format!("http://127.0.0.1:{p4}/hello.txt");
    check_http(&http4, sub.path(), &url, true, "nothing isolated, inner");

    agent.json(&["isolate", "inner"]);
    assert_level(&agent, "inner", "isolate", "inner isolated");
    assert_level(&agent, "outer", "normal", "inner isolated");
    check_http(&http4, sub.path(), &url, false, "inner isolated (outer normal), inner");
    check_ping(sub.path(), false, "inner isolated (outer normal), inner");
    check_http(&http4, outer.path(), &url, true, "inner isolated, outer itself");

    agent.json(&["restore", "inner", "--to", "normal"]);
    agent.json(&["isolate", "outer"]);
    check_http(&http4, outer.path(), &url, false, "outer isolated, outer itself");
    check_http(&http4, sub.path(), &url, false, "outer isolated (inner normal), inner");
}
