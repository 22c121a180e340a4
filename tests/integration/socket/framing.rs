//! Line framing: oversized lines are too long (and discarded up to the next
//! newline), half a line then a hang-up is dropped unanswered.
use std::{io::Write as _, net::Shutdown, time::Duration};

use serde_json::{json, Value};

use super::{assert_agent_serves, assert_conn_serves, assert_error, assert_ok, assert_untouched, Conn};
use crate::{
    harness::{wait_until, Agent},
    support::process::sleeping_target,
};

const MAX_LINE: usize = killpath::client::protocol::MAX_LINE;

/// `req` padded with trailing spaces (valid JSON whitespace) to `len` bytes.
fn padded(req: &str, len: usize) -> String {
    assert!(req.len() <= len);
    format!("{req}{}", " ".repeat(len - req.len()))
}

#[test]
fn oversized_line_is_too_long() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let mut c = Conn::open(&agent);

    // Exactly MAX_LINE bytes (newline excluded) is still a request.
    let exact = padded(r#"{"id":7,"cmd":"ping"}"#, MAX_LINE);
    assert_ok(&c.call(&exact), &json!(7));

    // One byte more is too long, whatever it holds: a stop padded past the
    // limit is not executed, not even its first 64 KiB.
    let over = padded(r#"{"id":8,"cmd":"stop","args":{"name":"t"}}"#, MAX_LINE + 1);
    c.send(format!("{over}\n").as_bytes()).expect("send");
    let r = c.recv();
    assert_error(&r, &Value::Null, "too-long");
    // "discarded up to the next newline": the connection goes on.
    assert_conn_serves(&mut c);
    assert_agent_serves(&agent);

    // A far longer line (4 MiB) directly followed by a ping in the same
    // write, on a new connection: one too-long, then the ping is answered.
    let mut c = Conn::open(&agent);
    let writer = c.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut big = padded(r#"{"id":10,"cmd":"stop","args":{"name":"t"}}"#, 4 << 20);
        big.push_str("\n{\"id\":11,\"cmd\":\"ping\"}\n");
        (&writer).write_all(big.as_bytes())
    });
    let r = c.recv();
    assert_error(&r, &Value::Null, "too-long");
    let sent = sender.join().unwrap();
    let r = c.recv_opt().expect("read");
    assert!(sent.is_ok(), "the agent stopped reading after too-long: {sent:?}");
    let r = r.expect("the agent closed the connection after too-long instead of discarding to the newline");
    assert_ok(&r, &json!(11));
    assert_conn_serves(&mut c);

    assert_agent_serves(&agent);
    assert_untouched(&agent, "t", pid);
}

#[test]
fn oversized_line_closed_connection_still_leaves_agent_serving() {
    // Whatever happens to the offending connection, other connections and
    // the agent are unaffected, and nothing in the long line ran.
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let other = {
        let mut o = Conn::open(&agent);
        assert_conn_serves(&mut o);
        o
    };
    let mut c = Conn::open(&agent);
    let over = padded(r#"{"id":8,"cmd":"stop","args":{"name":"t"}}"#, MAX_LINE + 100);
    let _ = c.send(format!("{over}\n").as_bytes());
    assert_error(&c.recv(), &Value::Null, "too-long");
    let mut other = other;
    assert_conn_serves(&mut other);
    assert_agent_serves(&agent);
    assert_untouched(&agent, "t", pid);
}

#[test]
fn half_a_line_then_hang_up_is_dropped() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let stop = br#"{"id":1,"cmd":"stop","args":{"name":"t"}}"#;
    let drops_logged = || agent.log_text().matches("dropping unterminated request").count();

    // Half shutdown: the agent sees EOF after a complete stop request
    // without its newline. No response, nothing executed.
    let mut c = Conn::open(&agent);
    c.send(stop).unwrap();
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.recv_opt().expect("read"), None, "an unterminated request was answered (and so executed)");

    // Full close.
    let c = Conn::open(&agent);
    c.send(stop).unwrap();
    drop(c);

    // A complete ping, then half a stop: the ping is answered, the rest dropped.
    let mut c = Conn::open(&agent);
    let mut bytes = b"{\"id\":5,\"cmd\":\"ping\"}\n".to_vec();
    bytes.extend_from_slice(stop);
    c.send(&bytes).unwrap();
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_ok(&c.recv(), &json!(5));
    assert_eq!(c.recv_opt().expect("read"), None, "an unterminated request was answered");

    // Let the agent finish with all three connections before judging.
    let _ = wait_until(Duration::from_secs(5), || drops_logged() >= 3);
    std::thread::sleep(Duration::from_millis(200));
    assert_untouched(&agent, "t", pid);
    assert_agent_serves(&agent);
}
