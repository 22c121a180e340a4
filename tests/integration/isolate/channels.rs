//! Every channel works before isolate, is cut while isolated and works
//! again after restore; bystanders keep every channel.
use std::time::Duration;

use super::{
    assert_level,
    clients::{check_dns, check_http, check_inbound, check_ping, check_udp, dns_server, udp_listener},
    outside,
};
use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        net::{free_tcp_port, http_server, ipv6_loopback, www},
        process::{py, run_bg, show},
    },
};

/// Every channel works before isolate, is cut while isolated, and works
/// again after `restore --to normal`, with real clients inside the target
/// and real servers outside it (and a server inside, reached from outside).
#[test]
fn isolate_cuts_every_channel_and_restore_reopens() {
    let Some(agent) = Agent::start() else { return };
    let (http4, p4) = http_server(&agent, "http4", "127.0.0.1");
    let http6 = ipv6_loopback().then(|| http_server(&agent, "http6", "::1"));
    if http6.is_none() {
        eprintln!("no ::1 on this host: IPv6 clients not checked");
    }
    let (nc, udp_port) = udp_listener(&agent);
    let (dns, dns_port) = dns_server(&agent);
    // The target's own workload: an HTTP server, reached from outside.
    let inbound = free_tcp_port();
    let dir = www(&agent);
    let serve = format!("exec {} -m http.server {inbound} --bind 127.0.0.1 --directory {} 2>/dev/null", py(), dir.display());
    let _run = run_bg(&agent, "web", &["sh", "-c", &serve], 1);
    let url = format!("http://127.0.0.1:{inbound}/hello.txt");
    assert!(
        wait_until(Duration::from_secs(10), || outside(&["curl", "-s", "--max-time", "1", &url]).status.success()).is_some(),
        "the target's http.server never answered"
    );
    let cg = agent.target_cgroup("web");
    let cgp = cg.path();
    // Another target, never isolated: isolating "web" must not touch it.
    let _by = run_bg(&agent, "bystander", &["sleep", "1000"], 1);
    let bystander = agent.target_cgroup("bystander");

    let check_all = |open: bool, ctx: &str| {
        check_http(&http4, cgp, &format!("http://127.0.0.1:{p4}/hello.txt"), open, &format!("{ctx} tcp4"));
        if let Some((h6, p6)) = &http6 {
            check_http(h6, cgp, &format!("http://[::1]:{p6}/hello.txt"), open, &format!("{ctx} tcp6"));
        }
        check_udp(&nc, udp_port, cgp, open, &format!("{ctx} udp"));
        check_dns(&dns, dns_port, cgp, open, &format!("{ctx} dns"));
        check_ping(cgp, open, &format!("{ctx} icmp"));
        check_inbound(inbound, open, &format!("{ctx} inbound tcp4"));
    };

    check_all(true, "before isolate");
    let before = agent.json(&["status"])["isolation"].clone();

    let r = agent.json(&["isolate", "web", "--reason", "integration test"]);
    assert_eq!(r["level"], "isolate", "{r}");
    assert_level(&agent, "web", "isolate", "after isolate");
    check_all(false, "isolated");
    // Only the target: a sibling target and the test itself keep every channel.
    let (by, byp) = (bystander.path(), "bystander while web is isolated");
    check_http(&http4, by, &format!("http://127.0.0.1:{p4}/hello.txt"), true, byp);
    check_udp(&nc, udp_port, by, true, byp);
    check_dns(&dns, dns_port, by, true, byp);
    check_ping(by, true, byp);
    let out = outside(&["curl", "-sS", "--max-time", "3", &format!("http://127.0.0.1:{p4}/hello.txt")]);
    assert!(out.status.success(), "outside every target, curl must work while web is isolated: {}", show(&out));
    // The kernel did it: the programs' counters moved.
    let during = agent.json(&["status"])["isolation"].clone();
    for k in ["connects_refused", "raw_sockets_refused", "packets_dropped"] {
        assert!(during[k].as_u64() > before[k].as_u64(), "{k} must grow while isolated: {before} -> {during}");
    }
    // The workload itself is untouched: isolation is not a stop.
    assert!(alive(_run.pid()), "isolate must not kill the workload");

    let r = agent.json(&["restore", "web", "--to", "normal"]);
    assert_eq!((r["level"].as_str(), r["from"].as_str()), (Some("normal"), Some("isolate")), "{r}");
    assert_level(&agent, "web", "normal", "after restore");
    check_all(true, "after restore");
}
