//! A target flooding the agent with `stop` and `isolate` of another target
//! (root inside a target may connect, and may only read): every request is
//! refused with `forbidden` naming the flooding target, before it is
//! queued: the operator's stop, sent while the flood runs, finds no stop
//! queued ahead of it on the stop thread, and stops its target (0
//! survivors, seen from /proc). The flooded victim is untouched (its
//! process alive, its cgroup not frozen, normal in the kernel map), and the
//! refusals are journaled at the rate limit, the rest counted.
use std::{process::Stdio, time::Duration};

use serde_json::Value;

use crate::{
    harness::{alive, wait_until, Agent},
    support::{
        process::{assert_all_dead, pids, py, sleeping_target, text},
        status::{assert_stopped, stop, target_row},
    },
};

/// Threads of the flood, each on its own connection, each writing
/// `PIPELINE` requests at once (stop and isolate of the victim,
/// alternately) and reading their answers, until the file `argv[3]`
/// exists. Answers are counted without parsing (every answer is one line;
/// a refusal naming the flooding target carries its name), so the client
/// is not the bottleneck; `argv[2]` holds the counts, rewritten after each
/// batch.
const FLOOD_PY: &str = r#"
import json, os, socket, sys, threading
sock, out, go = sys.argv[1], sys.argv[2], sys.argv[3]
THREADS, PIPELINE = 8, 64
counts = {"answered": 0, "refused": 0}
lock = threading.Lock()
batch = "".join(
    json.dumps({"id": i, "cmd": "stop" if i % 2 == 0 else "isolate", "args": {"name": "victim"}}) + "\n" for i in range(PIPELINE)
).encode()
NEEDLE = b'"code":"forbidden","message":"the caller (pid '
NAMED = b'is inside target \\"hostile\\" and may only read'
def flood():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(sock)
    while not os.path.exists(go):
        s.sendall(batch)
        buf = b""
        while buf.count(b"\n") < PIPELINE:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise SystemExit("the agent hung up")
            buf += chunk
        lines = buf.split(b"\n")[:-1]
        refused = sum(1 for l in lines if NEEDLE in l and NAMED in l)
        with lock:
            counts["answered"] += len(lines)
            counts["refused"] += refused
            with open(out + ".tmp", "w") as o:
                o.write(json.dumps(counts))
            os.replace(out + ".tmp", out)
ts = [threading.Thread(target=flood) for _ in range(THREADS)]
for t in ts: t.start()
for t in ts: t.join()
with open(out + ".tmp", "w") as o:
    o.write(json.dumps(dict(counts, done=1)))
os.replace(out + ".tmp", out)
"#;

/// Operator stops sent during the flood, each of its own target.
const STOPS: usize = 3;

fn counts(file: &std::path::Path) -> Value {
    std::fs::read_to_string(file).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null)
}

fn answered(c: &Value) -> u64 {
    c["answered"].as_u64().unwrap_or(0)
}

#[test]
fn confined_flood_of_stops_is_refused_before_the_operators_stop() {
    let Some(agent) = Agent::start() else { return };
    let (_victim, victim_pid) = sleeping_target(&agent, "victim");
    let ops: Vec<(String, std::process::Child)> = (0..STOPS)
        .map(|i| {
            let name = format!("op{i}");
            let (child, _) = sleeping_target(&agent, &name);
            (name, child)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, go) = (dir.path().join("counts"), dir.path().join("go"));
    let sock = agent.socket.to_string_lossy().into_owned();
    let (out_s, go_s) = (out.to_string_lossy().into_owned(), go.to_string_lossy().into_owned());
    // `killpath run`: the flood runs inside target `hostile` from its first instruction.
    let mut flood = agent
        .cmd(&["run", "hostile", "--", py(), "-c", FLOOD_PY, &sock, &out_s, &go_s])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the flood");
    let under_way = wait_until(Duration::from_secs(15), || answered(&counts(&out)) >= 2000);
    // The operator's stops, while the flood runs.
    let mut stops = Vec::new();
    if under_way.is_some() {
        for (name, _) in &ops {
            let cg = agent.target_cgroup(name);
            let before = pids(&cg);
            let at = answered(&counts(&out));
            let r = stop(&agent, name);
            // The flood went on during and after this stop.
            let went_on = wait_until(Duration::from_secs(15), || answered(&counts(&out)) >= at + 1000);
            stops.push((name.clone(), cg, before, r, went_on.is_some()));
        }
    }
    std::fs::write(&go, "").expect("go");
    let ended = wait_until(Duration::from_secs(20), || counts(&out)["done"] == 1);
    let _ = flood.kill();
    let flood_out = flood.wait_with_output().expect("flood");
    assert!(ended.is_some(), "the flood never ended (a request was not answered?): {}", text(&flood_out.stderr));
    let total = counts(&out);
    eprintln!("flood: {total}");
    assert!(under_way.is_some(), "the flood never got going: {total}; stderr: {}", text(&flood_out.stderr));
    // Every flood request was refused, naming the flooding target.
    let refused = total["refused"].as_u64().unwrap_or(0);
    assert_eq!(refused, answered(&total), "a flood request was not refused as coming from inside target hostile: {total}");
    for (name, cg, before, r, went_on) in &stops {
        eprintln!("stop {name} under the flood: {r}");
        assert!(went_on, "the flood stalled around the stop of {name}: {total}");
        // The operator's stop waited behind none of them on the stop thread.
        assert_eq!(r["queued_ahead"], 0, "stops from inside a target were queued ahead of the operator's stop: {r}");
        assert_stopped(&agent, name, cg, r, before);
        assert_all_dead(&agent, &format!("{name} after the stop"), before);
    }
    // The victim, from outside: alive, not frozen, normal in the kernel map.
    assert!(alive(victim_pid), "the victim's process died");
    assert_eq!(agent.target_cgroup("victim").freeze_requested().ok(), Some(false), "the victim's cgroup is frozen");
    let row = target_row(&agent, "victim").expect("victim listed");
    assert_eq!((row["level"].as_str(), row["kernel_level"].as_str()), (Some("normal"), Some("normal")), "{row}");
    // Journaled at the rate limit, the rest counted: never one fsync per request.
    let journaled: Vec<Value> = agent.journal().into_iter().filter(|j| j["action"] == "refused" && j["params"]["inside_target"] == "hostile").collect();
    assert!(!journaled.is_empty(), "no refusal from inside hostile was journaled");
    let counted: u64 = journaled.iter().filter_map(|j| j["params"]["refusals_not_journaled_before"].as_u64()).sum();
    assert!((journaled.len() as u64) < refused / 20 && journaled.len() as u64 + counted <= refused, "{} refusals journaled of {refused}", journaled.len());
    assert!(journaled.iter().all(|j| ["stop", "isolate"].contains(&j["params"]["cmd"].as_str().unwrap_or_default())), "{journaled:?}");
    // From outside a target the same stop works: the refusal was about where the caller is.
    let v = stop(&agent, "victim");
    assert_eq!(v["survivors"], 0, "{v}");
    assert!(wait_until(Duration::from_secs(2), || !alive(victim_pid)).is_some(), "victim survived the operator's stop");
}
