//! Requests that are not requests: unknown fields, duplicate keys, unknown
//! commands, bad arguments, non-JSON, invalid UTF-8. Each gets an error and
//! nothing runs.
use serde_json::{json, Value};

use super::{assert_agent_serves, assert_conn_serves, assert_error, assert_ok, assert_untouched, Conn};
use crate::{harness::Agent, support::process::sleeping_target};

/// Sends `bad` (bytes, newline included) on a fresh connection, checks the
/// error, then that the same connection, a new one and the agent still serve.
fn check_bad(agent: &Agent, bad: &[u8], id: Value, code: &str) {
    let mut c = Conn::open(agent);
    c.send(bad).expect("send");
    let r = c.recv();
    assert_error(&r, &id, code);
    assert_conn_serves(&mut c);
    assert_agent_serves(agent);
}

#[test]
fn unknown_fields_are_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    // Unknown top-level field.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"ping\",\"extra\":true}\n", json!(1), "bad-request");
    // A stop with an unknown top-level field is not a stop.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"stop\",\"args\":{\"name\":\"t\"},\"force\":true}\n", json!(1), "bad-request");
    // A stop with an unknown argument is not a stop either.
    check_bad(&agent, b"{\"id\":\"k\",\"cmd\":\"stop\",\"args\":{\"name\":\"t\",\"force\":true}}\n", json!("k"), "bad-request");
    // Unknown argument of an argument-less command.
    check_bad(&agent, b"{\"id\":4,\"cmd\":\"ping\",\"args\":{\"x\":1}}\n", json!(4), "bad-request");
    assert_untouched(&agent, "t", pid);
}

#[test]
fn duplicate_keys_are_rejected() {
    // JSON parsers disagree on which of two equal keys wins; a request
    // that reads as "status" to one and "stop" to another is ambiguous and
    // must not be executed.
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    let (_run, pid_u) = sleeping_target(&agent, "u");
    for (id, bad) in [
        (1, r#"{"id":1,"cmd":"status","cmd":"stop","args":{"name":"t"}}"#),
        (2, r#"{"id":2,"cmd":"stop","args":{"name":"u","name":"t"}}"#),
        (3, r#"{"id":3,"cmd":"stop","args":{"name":"u"},"args":{"name":"t"}}"#),
    ] {
        let mut c = Conn::open(&agent);
        let r = c.call(bad);
        assert_eq!(r["ok"], false, "an ambiguous request was executed: {bad} -> {r}");
        // Valid JSON syntax, invalid request: bad-request echoing the id is
        // the natural answer; a strict parser's "parse" error is fine too.
        let code = r["error"]["code"].as_str().unwrap_or_default();
        assert!(code == "bad-request" || code == "parse", "{r}");
        assert!(r["id"] == id || r["id"].is_null(), "{r}");
        assert_conn_serves(&mut c);
        assert_agent_serves(&agent);
    }
    assert_untouched(&agent, "t", pid);
    assert_untouched(&agent, "u", pid_u);
}

#[test]
fn unknown_command_is_rejected() {
    let Some(agent) = Agent::start() else { return };
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"explode\"}\n", json!(1), "unknown-command");
    check_bad(&agent, b"{\"id\":\"x\",\"cmd\":\"STOP\",\"args\":{\"name\":\"t\"}}\n", json!("x"), "unknown-command");
    check_bad(&agent, b"{\"id\":5,\"cmd\":\"\"}\n", json!(5), "unknown-command");
    // The error lists the known commands.
    let r = Conn::open(&agent).call(r#"{"id":1,"cmd":"explode"}"#);
    assert!(r["error"]["message"].as_str().unwrap().contains("ping"), "{r}");
}

#[test]
fn bad_arguments_are_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    for (bad, id) in [
        // stop without a name
        (&b"{\"id\":1,\"cmd\":\"stop\",\"args\":{}}\n"[..], json!(1)),
        (b"{\"id\":1,\"cmd\":\"stop\"}\n", json!(1)),
        // wrong argument types
        (b"{\"id\":2,\"cmd\":\"stop\",\"args\":{\"name\":5}}\n", json!(2)),
        (b"{\"id\":3,\"cmd\":\"stop\",\"args\":\"t\"}\n", json!(3)),
        (b"{\"id\":4,\"cmd\":\"journal\",\"args\":{\"after\":\"x\"}}\n", json!(4)),
        (b"{\"id\":5,\"cmd\":\"adopt\",\"args\":{\"name\":\"u\",\"pid\":\"1\"}}\n", json!(5)),
        // bad request shape: id of the wrong type or missing, cmd not a string, not an object
        (b"{\"id\":null,\"cmd\":\"ping\"}\n", Value::Null),
        (b"{\"id\":[1],\"cmd\":\"ping\"}\n", json!([1])),
        (b"{\"cmd\":\"ping\"}\n", Value::Null),
        (b"{\"id\":6,\"cmd\":7}\n", json!(6)),
        (b"[1,2,3]\n", Value::Null),
        (b"\"ping\"\n", Value::Null),
    ] {
        check_bad(&agent, bad, id, "bad-request");
    }
    assert_untouched(&agent, "t", pid);
}

#[test]
fn not_json_is_a_parse_error() {
    let Some(agent) = Agent::start() else { return };
    for bad in [&b"{not json\n"[..], b"\n", b"   \n", b"{\"id\":1,\"cmd\":\"ping\"\n", b"{\"id\":1,\"cmd\":\"ping\"}}\n", b"ping\n"] {
        check_bad(&agent, bad, Value::Null, "parse");
    }
    // CRLF: the CR is JSON whitespace, so the request is fine.
    let mut c = Conn::open(&agent);
    c.send(b"{\"id\":9,\"cmd\":\"ping\"}\r\n").unwrap();
    assert_ok(&c.recv(), &json!(9));
}

#[test]
fn invalid_utf8_is_rejected() {
    let Some(agent) = Agent::start() else { return };
    let (_run, pid) = sleeping_target(&agent, "t");
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"\xff\"}\n", Value::Null, "invalid-utf8");
    // A stop whose target name holds invalid UTF-8 is not a stop of anything.
    check_bad(&agent, b"{\"id\":1,\"cmd\":\"stop\",\"args\":{\"name\":\"t\xc3\"}}\n", Value::Null, "invalid-utf8");
    check_bad(&agent, b"\xfe\xff\n", Value::Null, "invalid-utf8");
    assert_untouched(&agent, "t", pid);
}
