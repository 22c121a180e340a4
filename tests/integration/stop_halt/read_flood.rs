//! A stop while clients flood the agent with read-only commands: it
//! completes (the flood does not starve it), and every `journal` answer,
//! served without the state lock, is a whole, gap-free prefix of the file
//! the agent ends with (no torn record, no record the file does not keep).
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use killpath_sandbox::Client;
use serde_json::{json, Value};

use crate::{
    harness::{wait_until, Agent},
    support::{
        process::{pids, sleeping_target},
        status::{assert_stopped, stop},
    },
};

const CLIENTS: usize = 16;

#[test]
fn stop_under_read_flood_completes_and_journal_reads_stay_whole() {
    let Some(agent) = Agent::start() else { return };
    let (_run, _pid) = sleeping_target(&agent, "flooded");
    let cg = agent.target_cgroup("flooded");
    let before = pids(&cg);
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (done, ready, socket) = (done.clone(), ready.clone(), agent.socket.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket, Duration::from_secs(30)).expect("connect");
                let mut answers: Vec<Vec<Value>> = Vec::new();
                let mut n = 0usize;
                while !done.load(Ordering::Relaxed) {
                    if i % 2 == 0 {
                        c.call("status", json!({})).expect("status");
                    } else {
                        let (_, r) = c.call("journal", json!({"after": 0})).expect("journal");
                        let records = r["records"].as_array().expect("records").clone();
                        if answers.len() < 200 {
                            answers.push(records);
                        }
                    }
                    n += 1;
                    if n == 1 {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (n, answers)
            })
        })
        .collect();
    wait_until(Duration::from_secs(20), || ready.load(Ordering::Relaxed) == CLIENTS).expect("every flood client got an answer");
    let r = stop(&agent, "flooded");
    assert_stopped(&agent, "flooded", &cg, &r, &before);
    // A little more flood after the stop, so journal reads see its records.
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Relaxed);
    let file = agent.journal();
    let mut reads = 0;
    let mut saw_stop = false;
    for t in threads {
        let (n, answers) = t.join().expect("flood client");
        assert!(n > 0);
        for records in answers {
            reads += 1;
            for (k, rec) in records.iter().enumerate() {
                let seq = rec["seq"].as_u64().expect("seq");
                assert_eq!(seq, k as u64 + 1, "journal answer has a gap or is out of order at {k}: {rec}");
                let kept = file.get(k).unwrap_or_else(|| panic!("a journal answer returned record {seq}, which the file does not hold"));
                assert_eq!(rec, kept, "a journal answer differs from the file's record {seq}");
                saw_stop |= rec["action"] == "stop" && rec["phase"] == "result";
            }
        }
    }
    assert!(reads > 0, "no journal answer was checked");
    assert!(saw_stop, "no journal answer taken after the stop holds its result");
}
