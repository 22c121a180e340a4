//! `net.connect` revoked with an allow-list, then given back.
use serde_json::json;

use super::{
    assert_state,
    clients::{check_curl, connect_errno, connect_errno_outside, udp_errno},
    in_cgroup, row, ECONNREFUSED, EPERM,
};
use crate::{
    harness::Agent,
    support::{
        net::{http_server, ipv6_loopback},
        process::{py, run_bg, show, text},
        status::strs,
    },
};

/// net.connect with an allow-list: allowed destinations (a port on a CIDR,
/// an address on any port, the same destination spelled v4-mapped) pass; a
/// neighbour port, a neighbour address, IPv6 loopback and UDP to a
/// neighbour are refused with EPERM; unrelated operations are untouched;
/// `restore --grant` gives everything back and drops the allow-list.
#[test]
fn degrade_net_connect_allow_list_and_restore() {
    let Some(agent) = Agent::start() else { return };
    let (s1, p1) = http_server(&agent, "allowed", "0.0.0.0");
    let (s2, p2) = http_server(&agent, "neighbour", "127.0.0.1");
    let _web = run_bg(&agent, "web", &["sleep", "1000"], 1);
    let cg = agent.target_cgroup("web").path().to_owned();
    let file = agent.dir.path().join("data.txt");
    std::fs::write(&file, "read me\n").unwrap();

    for (host, srv, port) in [("127.0.0.1", &s1, p1), ("127.0.0.2", &s1, p1), ("127.0.0.1", &s2, p2)] {
        check_curl(srv, &cg, host, port, true, "before degrade");
    }

    let a1 = format!("127.0.0.0/8:{p1}");
    let r = agent.json(&["degrade", "web", "--revoke", "net.connect", "--allow-connect", &a1, "--allow-connect", "127.0.0.3", "--reason", "allow-list drill"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("degrade"), Some("normal")), "{r}");
    assert_eq!(strs(&r["revoked"]), ["net.connect"], "{r}");
    assert_eq!(strs(&r["allow_connect"]), [a1.as_str(), "127.0.0.3"], "{r}");
    assert!(r["time_to_effect_us"].as_u64().is_some_and(|t| t > 0 && t < 1_000_000), "{r}");
    assert_state(&agent, "web", "degrade", &["net.connect"], &[&a1, "127.0.0.3"], "degraded");
    let mut refused = 0u64;

    // Allowed: the port on every address of the prefix, and any port of 127.0.0.3.
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "allowed 127.0.0.0/8:P1");
    check_curl(&s1, &cg, "127.0.0.2", p1, true, "allowed 127.0.0.0/8:P1 (another address in the prefix)");
    check_curl(&s1, &cg, "127.0.0.3", p1, true, "allowed 127.0.0.3 (any port)");
    // 127.0.0.3 on P2: killpath lets it through; nothing listens there
    // (the neighbour server is bound to 127.0.0.1 only): ECONNREFUSED, not EPERM.
    assert_eq!(connect_errno(&cg, "127.0.0.3", p2), ECONNREFUSED, "127.0.0.3 is allowed on any port");
    // The same destination spelled as a v4-mapped IPv6 address is allowed too.
    assert_eq!(connect_errno(&cg, "::ffff:127.0.0.1", p1), 0, "v4-mapped allowed destination");

    // Refused: the neighbour port, neighbour addresses, IPv6, UDP.
    check_curl(&s2, &cg, "127.0.0.1", p2, false, "neighbour port");
    refused += 1;
    assert_eq!(connect_errno(&cg, "127.0.0.1", p2), EPERM, "neighbour port: EPERM");
    assert_eq!(connect_errno(&cg, "127.0.0.2", p2), EPERM, "neighbour port on another address of the prefix");
    assert_eq!(connect_errno(&cg, "128.0.0.1", p1), EPERM, "allowed port, address just outside 127.0.0.0/8");
    assert_eq!(connect_errno(&cg, "::ffff:127.0.0.1", p2), EPERM, "v4-mapped spelling of a refused destination");
    refused += 4;
    if ipv6_loopback() {
        assert_eq!(connect_errno(&cg, "::1", p1), EPERM, "::1 is not in the IPv4 allow-list");
        refused += 1;
    }
    assert_eq!(udp_errno(&cg, "127.0.0.1", p2), EPERM, "UDP to a neighbour port");
    assert_eq!(udp_errno(&cg, "127.0.0.2", p1), 0, "UDP to an allowed destination");
    refused += 1;
    // Python's errno and message, as the workload sees it.
    let out = in_cgroup(&cg, &[py(), "-c", "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)", &p2.to_string()]);
    assert!(text(&out.stderr).contains("[Errno 1] Operation not permitted"), "refused with EPERM: {}", show(&out));
    refused += 1;

    // Unrelated things still work: files, listening, a process outside.
    let out = in_cgroup(&cg, &["sh", "-c", r#"cat "$1" && echo written > "$1.out" && cat "$1.out""#, "sh", file.to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stdout) == "read me\nwritten\n", "files: {}", show(&out));
    let out = in_cgroup(&cg, &[py(), "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); print('listening')"]);
    assert!(out.status.success(), "listen inside the target: {}", show(&out));
    assert_eq!(connect_errno_outside("127.0.0.1", p2), 0, "outside the target nothing is refused");

    let r = row(&agent, "web");
    assert_eq!(r["denials"]["net.connect"]["total"], refused, "one denial per refused attempt: {r}");
    assert_eq!(r["denials"]["net.connect"]["last_minute"], refused, "{r}");
    let human = text(&agent.kp(&["status", "web"]).stdout);
    assert!(human.contains("DEGRADED: revoked net.connect") && human.contains(&format!("net.connect: {refused}")), "{human}");

    // Restore: everything works again, the level is normal.
    let r = agent.json(&["restore", "web", "--grant", "net.connect", "--reason", "drill over"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("normal"), Some("degrade")), "{r}");
    assert_eq!(r["revoked"], json!([]), "{r}");
    assert_eq!(strs(&r["granted"]), ["net.connect"], "{r}");
    assert_state(&agent, "web", "normal", &[], &[], "after restore --grant");
    check_curl(&s2, &cg, "127.0.0.1", p2, true, "restored: neighbour port");
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "restored: allowed port");
    assert_eq!(connect_errno(&cg, "127.0.0.2", p2), ECONNREFUSED, "restored: a neighbour address is no longer refused by killpath");
    assert_eq!(udp_errno(&cg, "127.0.0.1", p2), 0);
    assert!(!text(&agent.kp(&["status", "web"]).stdout).contains("DEGRADED"));

    // The allow-list went with the grant: revoked again without one, even
    // the formerly allowed destination is refused.
    agent.json(&["degrade", "web", "--revoke", "net.connect"]);
    assert_state(&agent, "web", "degrade", &["net.connect"], &[], "degraded again, no allow-list");
    check_curl(&s1, &cg, "127.0.0.1", p1, false, "the old allow-list is gone");
    assert_eq!(connect_errno(&cg, "127.0.0.3", p2), EPERM, "the old any-port entry is gone");
    let r = agent.json(&["restore", "web", "--to", "normal"]);
    assert_eq!(r["level"], "normal", "{r}");
    assert_state(&agent, "web", "normal", &[], &[], "after restore --to normal");
    check_curl(&s1, &cg, "127.0.0.1", p1, true, "restored --to normal");
    check_curl(&s2, &cg, "127.0.0.1", p2, true, "restored --to normal");

    // Journal: degrade and restore, intent and result, with levels.
    let recs = agent.journal();
    let results: Vec<(String, u64)> = recs
        .iter()
        .filter(|e| e["target"] == "web" && e["phase"] == "result" && (e["action"] == "degrade" || e["action"] == "restore"))
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["to_level"].as_u64().unwrap()))
        .collect();
    assert_eq!(results, [("degrade".into(), 2), ("restore".into(), 0), ("degrade".into(), 2), ("restore".into(), 0)], "{recs:?}");
    let intent = recs.iter().find(|e| e["target"] == "web" && e["phase"] == "intent" && e["action"] == "degrade").unwrap();
    assert_eq!(intent["params"]["reason"], "allow-list drill", "{intent}");
    assert_eq!(intent["params"]["allow_connect"], json!([a1, "127.0.0.3"]), "{intent}");
}
