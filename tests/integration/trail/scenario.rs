//! The whole scenario in one workload, as a rollback planner would
//! meet it: a recording target uploads to two servers, writes, renames and
//! deletes files, execs helpers and signals a process outside; then it is
//! isolated (its next connect refused) and stopped. Everything the trail
//! says is checked against what is known from outside: each server's own
//! byte count, the outside process's record of the signal, the files left
//! on disk, the pids /proc showed, 0 survivors. On the host (no BPF LSM)
//! the file operations are reported as not recorded; in the VM they are
//! listed exactly.
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::{execs_of, records, run_recorded};
use crate::harness::{alive, skip, wait_until, Agent};
use crate::support::{cgroup::in_cgroup_within, process::py, status::need_lsm};
use crate::trail_net::{assert_tcp_bytes, flow, flows, http_server, n};

#[test]
fn trail_scenario_for_a_rollback_planner() {
    scenario(false);
}

/// The same where BPF LSM runs: the file operations are listed too.
#[test]
fn lsm_vm_trail_scenario_for_a_rollback_planner() {
    scenario(true);
}

fn scenario(lsm: bool) {
    let Some(a) = Agent::start() else {
        skip("needs root");
        return;
    };
    if lsm && !need_lsm(&a) {
        return;
    }
    let name = "tr-all";
    let (pa, sa) = http_server(2_000);
    let (pb, sb) = http_server(90_000);
    let marks = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let m = |f: &str| marks.path().join(f).display().to_string();
    let w = |f: &str| work.path().join(f).display().to_string();
    std::fs::write(m("up-a"), vec![b'a'; 5_000]).expect("upload a");
    std::fs::write(m("up-b"), vec![b'b'; 150_000]).expect("upload b");
    // The process outside that the workload signals: it writes down what it gets.
    let trap = format!("trap 'echo usr1 >> {}' USR1; while :; do sleep 0.05; done", m("got"));
    let mut outside = Command::new("sh").args(["-c", &trap]).stdin(Stdio::null()).spawn().expect("receiver");
    let rx = outside.id();
    wait_until(Duration::from_secs(5), || std::fs::read_to_string(format!("/proc/{rx}/task/{rx}/children")).is_ok_and(|c| !c.trim().is_empty()))
        .expect("receiver running (its trap installed)");
    let files = format!(
        "import os\nfd = os.open('{st}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\nos.write(fd, b'state' * 100)\nos.close(fd)\nos.rename('{st}', '{kept}')\nos.unlink('{kept}')\n",
        st = w("state.txt"),
        kept = w("kept.txt")
    );
    std::fs::write(m("files.py"), files).expect("files script");
    let script = format!(
        "curl -sS --fail -H Expect: -o /dev/null --data-binary @{upa} http://127.0.0.1:{pa}/ && \
         curl -sS --fail -H Expect: -o /dev/null --data-binary @{upb} http://127.0.0.1:{pb}/ && \
         {py} {files} && /bin/echo helper-one >/dev/null && /usr/bin/env /bin/true helper-two && \
         kill -USR1 {rx} && touch {done}; exec sleep 600",
        upa = m("up-a"),
        upb = m("up-b"),
        py = py(),
        files = m("files.py"),
        done = m("done"),
    );
    let mut child = run_recorded(&a, name, &script);
    let sh = child.id();
    wait_until(Duration::from_secs(30), || std::path::Path::new(&m("done")).exists()).expect("the workload ran to its end");

    // From outside first: what really happened.
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(m("got")).is_ok_and(|s| s.contains("usr1"))).expect("the outside process got USR1");
    assert!(wait_until(Duration::from_secs(5), || sa.received.load(Ordering::SeqCst) > 5_000 && sb.received.load(Ordering::SeqCst) > 150_000).is_some());
    assert_eq!((sa.conns.load(Ordering::SeqCst), sb.conns.load(Ordering::SeqCst)), (1, 1), "one connection to each server");
    assert!(!work.path().join("state.txt").exists() && !work.path().join("kept.txt").exists(), "the workload deleted its files");

    // The trail, once the last exec (the sleep) and a flows snapshot with
    // both servers are in.
    let mut fl = Vec::new();
    wait_until(Duration::from_secs(20), || {
        fl = flows(&a, name);
        let recs = records(&a, name, &["--kind", "exec"]);
        recs.iter().any(|r| r["argv"][0] == "sleep") && flow(&fl, "tcp", pa, "out").is_some() && flow(&fl, "tcp", pb, "out").is_some()
    })
    .unwrap_or_else(|| panic!("the trail never held the final exec and both flows: {fl:#?}\n{:#?}", records(&a, name, &[])));
    // Bytes per destination: what each server counted, plus the headers.
    for (what, port, seen) in [("server A", pa, &sa), ("server B", pb, &sb)] {
        let f = flow(&fl, "tcp", port, "out").unwrap_or_else(|| panic!("no flow to {what}: {fl:#?}"));
        assert_tcp_bytes(&format!("{what} out"), n(f, "bytes_out"), n(f, "packets_out"), seen.received.load(Ordering::SeqCst), !lsm);
        assert_tcp_bytes(&format!("{what} in"), n(f, "bytes_in"), n(f, "packets_in"), seen.sent.load(Ordering::SeqCst), !lsm);
    }
    let recs = records(&a, name, &[]);
    // Programs run, each exactly, with argv.
    assert_eq!(execs_of(&recs, "/bin/echo"), [["/bin/echo", "helper-one"]], "{recs:#?}");
    assert_eq!(execs_of(&recs, "/usr/bin/env"), [["/usr/bin/env", "/bin/true", "helper-two"]], "{recs:#?}");
    assert_eq!(execs_of(&recs, "/bin/true"), [["/bin/true", "helper-two"]], "{recs:#?}");
    let curls: Vec<&Value> = recs.iter().filter(|r| r["action"] == "exec" && r["argv"][0] == "curl").collect();
    assert_eq!(curls.len(), 2, "two curls: {recs:#?}");
    let shell = recs.iter().find(|r| r["action"] == "exec" && r["argv"].get(1) == Some(&Value::from("-c"))).expect("the shell's exec");
    assert_eq!(shell["pid"], sh, "attributed to the pid /proc showed");
    // Connects: one to each server, none refused.
    let connects: Vec<&Value> = recs.iter().filter(|r| r["action"] == "connect").collect();
    for port in [pa, pb] {
        let c: Vec<_> = connects.iter().filter(|c| c["port"] == port).collect();
        assert_eq!(c.len(), 1, "one connect to {port}: {connects:#?}");
        assert_eq!((&c[0]["refused"], &c[0]["level"]), (&Value::Bool(false), &Value::from("normal")), "{:#}", c[0]);
    }
    // The signal outside, exactly once; nothing else signalled outside.
    let sigs: Vec<&Value> = recs.iter().filter(|r| r["action"] == "signal").collect();
    assert_eq!(sigs.len(), 1, "{sigs:#?}");
    assert_eq!((&sigs[0]["signal"], &sigs[0]["to_pid"], &sigs[0]["pid"]), (&Value::from(10), &Value::from(rx), &Value::from(sh)), "{:#}", sigs[0]);
    // Files: listed exactly where BPF LSM runs; said not recorded elsewhere.
    let file_ops: Vec<(String, String, String)> = recs
        .iter()
        .filter(|r| r["action"].as_str().is_some_and(|x| x.starts_with("file-") && x != "file-writes"))
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(&work.path().display().to_string())))
        .map(|r| (r["action"].as_str().unwrap_or("").to_owned(), r["path"].as_str().unwrap_or("").to_owned(), r["to"].as_str().unwrap_or("").to_owned()))
        .collect();
    if lsm {
        let want: Vec<(String, String, String)> = [
            ("file-create", w("state.txt"), String::new()),
            ("file-write", w("state.txt"), String::new()),
            ("file-rename", w("state.txt"), w("kept.txt")),
            ("file-unlink", w("kept.txt"), String::new()),
        ]
        .into_iter()
        .map(|(x, p, t)| (x.to_owned(), p, t))
        .collect();
        assert_eq!(file_ops, want, "each file operation exactly once, in order: {recs:#?}");
    } else {
        assert!(file_ops.is_empty(), "{file_ops:?}");
        let st = a.json(&["status", name]);
        let says = st["targets"][0]["trail"]["files"].as_str().unwrap_or("");
        assert!(says.contains("not recorded") && says.contains("BPF LSM"), "status must say files are not recorded: {st:#}");
    }

    // Isolate: the next connect is refused, and the trail says so at isolate.
    a.json(&["isolate", name]);
    let cg = a.target_cgroup(name);
    let out = in_cgroup_within(15, cg.path(), &["curl", "-sS", "--max-time", "5", "-o", "/dev/null", &format!("http://127.0.0.1:{pa}/")]);
    assert!(!out.status.success(), "a connect while isolated succeeded");
    assert_eq!(sa.conns.load(Ordering::SeqCst), 1, "server A saw a connection after isolate");
    wait_until(Duration::from_secs(10), || records(&a, name, &["--kind", "net"]).iter().any(|r| r["action"] == "connect" && r["refused"] == true))
        .unwrap_or_else(|| panic!("the refused connect never reached the trail: {:#?}", records(&a, name, &["--kind", "net"])));

    // Stop: 0 survivors from /proc; the result points to the summary.
    let before = crate::support::process::pids(&cg);
    let stop = a.json(&["stop", name]);
    assert_eq!(stop["survivors"], 0, "{stop:#}");
    let _ = child.wait();
    assert!(!alive(sh as i32) && crate::support::process::living(&before).is_empty(), "the workload is gone (from /proc)");
    assert_eq!(stop["trail"]["summary"], format!("killpath trail {name} --summary"), "{stop:#}");

    // The summary a rollback planner reads: per level phase.
    let s = a.json(&["trail", name, "--summary"]);
    let phase = |lvl: &str| s["phases"].as_array().and_then(|p| p.iter().find(|p| p["level"] == lvl).cloned()).unwrap_or(Value::Null);
    let normal = phase("normal");
    assert_eq!(normal["programs"]["/bin/echo"], 1, "{s:#}");
    assert_eq!(normal["signals"][format!("signal 10 to pid {rx}")], 1, "{s:#}");
    for port in [pa, pb] {
        let d = format!("tcp 127.0.0.1:{port} out");
        let f = flow(&fl, "tcp", port, "out").expect("flow");
        let sum_out = s["total"]["destinations"].as_array().and_then(|ds| ds.iter().find(|x| x["destination"] == d.as_str())).map(|x| n(x, "bytes_out"));
        assert!(sum_out.is_some_and(|b| b >= n(f, "bytes_out")), "summary bytes to {d} (at least the snapshot's {}): {s:#}", n(f, "bytes_out"));
    }
    let iso = phase("isolate");
    let refused: u64 = iso["connects"].as_array().map(|c| c.iter().filter_map(|c| c["refused"].as_u64()).sum()).unwrap_or(0);
    assert_eq!(refused, 1, "after isolate: 1 refused connect: {s:#}");
    assert!(
        iso["destinations"].as_array().is_none_or(|d| d.iter().all(|x| x["destination"] != format!("tcp 127.0.0.1:{pa} out") || n(x, "bytes_out") == 0)),
        "no bytes to A while isolated: {s:#}"
    );
    if lsm {
        assert_eq!(s["total"]["files"]["rename"][format!("{} -> {}", w("state.txt"), w("kept.txt"))], 1, "{s:#}");
        assert_eq!(s["total"]["files"]["unlink"][w("kept.txt")], 1, "{s:#}");
    }
    assert!(
        s["by_level"].as_array().is_some_and(|l| l.iter().any(|x| x.as_str().is_some_and(|x| x.starts_with("at isolate:") && x.contains("(1 refused)")))),
        "{s:#}"
    );
    // Nothing at stopped; the chain verifies.
    let events = ["exec", "connect", "signal", "listen", "accept", "escape"];
    let late: Vec<Value> =
        records(&a, name, &[]).into_iter().filter(|r| r["level"] == "stopped" && events.contains(&r["action"].as_str().unwrap_or(""))).collect();
    assert!(late.is_empty(), "no event at stopped: {late:#?}");
    let v = a.kp(&["trail", name, "--verify"]);
    assert!(v.status.success(), "trail --verify: {v:?}");
    let _ = outside.kill();
    let _ = outside.wait();
}
