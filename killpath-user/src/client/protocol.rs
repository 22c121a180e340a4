//! The agent's socket protocol: one JSON object per line in each direction.
//!
//! Request:  `{"id": <number|string>, "cmd": "<command>", "args": {...}}`
//! Response: `{"id": ..., "ok": true, "result": {...}}` or
//!           `{"id": ..., "ok": false, "error": {"code": "...", "message": "..."}}`
//!
//! Unknown top-level fields, unknown commands and unknown arguments are
//! errors, never ignored: a typo in a kill command must not silently do
//! something else.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line the agent accepts, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// A request as it arrives, before the command is decoded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    id: Value,
    cmd: String,
    #[serde(default)]
    args: Option<Value>,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub cmd: Command,
}

/// Every command the agent serves. `args` of each variant are its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Liveness check.
    Ping {},
    /// What the running kernel can enforce.
    Probe {},
    /// Create target NAME with a fresh cgroup; with `move_caller`, move the
    /// calling process (identified by SO_PEERCRED, not by anything it sends)
    /// into it: this is how `killpath run` starts CMD inside the cgroup.
    #[serde(rename_all = "snake_case")]
    Create {
        name: String,
        #[serde(default)]
        move_caller: bool,
        /// Record the activity trail from the start (`run --trail`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trail: bool,
    },
    /// Adopt an existing cgroup, or a process and all its descendants.
    Adopt {
        name: String,
        #[serde(default)]
        cgroup: Option<String>,
        #[serde(default)]
        pid: Option<i32>,
        /// A systemd unit, a container id or a pod UID (`resolve`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
        /// Record the activity trail from the adoption on, in the same
        /// transaction (`adopt --trail`): no event between the two.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trail: bool,
    },
    /// Targets and their state.
    Status {
        #[serde(default)]
        name: Option<String>,
    },
    /// Level 4: kill every task of the target.
    Stop {
        name: String,
        #[serde(default)]
        reason: Option<String>,
        /// The freeze/kill order (None: the agent's choice); for the bench.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<crate::stop::StopOrder>,
    },
    /// Level 3: cut the target off from everything outside it.
    Isolate {
        name: String,
        #[serde(default)]
        reason: Option<String>,
        /// Probe every channel from inside the target after isolating.
        #[serde(default)]
        verify: bool,
        /// Host-side network devices (a container's veth) to cut at TC too.
        #[serde(default)]
        netdev: Vec<String>,
        /// Audit mode: count what isolation would refuse, cut nothing.
        #[serde(default)]
        audit: bool,
    },
    /// Level 2: revoke capabilities while the target keeps running.
    #[serde(rename_all = "snake_case")]
    Degrade {
        name: String,
        revoke: Vec<String>,
        #[serde(default)]
        allow_connect: Vec<String>,
        #[serde(default)]
        allow_write: Vec<String>,
        #[serde(default)]
        reason: Option<String>,
        /// Audit mode: count what the revocation would refuse, refuse nothing.
        #[serde(default)]
        audit: bool,
    },
    /// Level 1: cap the target's rate of action. Running it again changes
    /// the named ceilings live and keeps the others. Rates are per second.
    #[serde(rename_all = "snake_case")]
    Throttle {
        name: String,
        /// Ceiling on all syscalls.
        #[serde(default)]
        syscalls: Option<u64>,
        /// Ceilings per syscall class (net, exec, fork, fs-write, all).
        #[serde(default)]
        syscall_class: std::collections::BTreeMap<String, u64>,
        #[serde(default)]
        egress_bytes: Option<u64>,
        #[serde(default)]
        egress_packets: Option<u64>,
        /// Most live tasks.
        #[serde(default)]
        tasks: Option<u64>,
        /// pace (default) or deny.
        #[serde(default)]
        mode: Option<String>,
        /// Host-side network devices (a container's veth) to police at TC too.
        #[serde(default)]
        netdev: Vec<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// One level up with the configured defaults; jumping levels needs
    /// `skip_reason` (journaled).
    #[serde(rename_all = "snake_case")]
    Escalate {
        name: String,
        /// Level name; default: the next one.
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        skip_reason: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Begins a drill on `target` on this connection: the agent keeps a
    /// snapshot and puts the target back if the connection closes before
    /// `drill-end`. Later commands on the connection are the drill's.
    DrillBegin { target: String },
    /// Ends this connection's drill: journals the report and (by default)
    /// restores the target to its snapshot.
    DrillEnd {
        report: Value,
        #[serde(default = "yes")]
        restore: bool,
    },
    /// Step a target down to a lower level (default: one), or give capabilities back.
    Restore {
        name: String,
        /// Level name: normal, throttle, degrade, isolate.
        #[serde(default)]
        to: Option<String>,
        /// Capabilities to give back.
        #[serde(default)]
        grant: Vec<String>,
        #[serde(default)]
        reason: Option<String>,
        /// End audit mode (alone: not with `to` or `grant`).
        #[serde(default)]
        audit_off: bool,
    },
    /// The capability catalog and what this kernel enforces of it.
    Capabilities {},
    /// Subscribe: the agent streams alerts and sampled denials on this
    /// connection, one `{"id", "ok": true, "event": {...}}` line each.
    Events {},
    /// Probe every channel from inside the target and report cut or OPEN.
    Verify { name: String },
    /// Forget a target and lift its enforcement.
    Release { name: String },
    /// Ask for a level that a human must approve (see `agent::pending`).
    #[serde(rename_all = "snake_case")]
    Propose {
        name: String,
        /// throttle, degrade, isolate or stop.
        level: String,
        #[serde(default)]
        reason: Option<String>,
        /// How long to wait: 500ms, 30s, 5m (default), 1h.
        #[serde(default)]
        timeout: Option<String>,
        /// hold (default), apply or drop.
        #[serde(default)]
        on_timeout: Option<String>,
        /// A lower level (throttle or degrade) applied at once meanwhile.
        #[serde(default)]
        meanwhile: Option<String>,
        /// gid an approver must hold.
        #[serde(default)]
        approver_group: Option<u32>,
        #[serde(default)]
        evidence: Value,
    },
    /// Actions waiting for approval.
    Pending {},
    /// Apply pending action `id`.
    Approve {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Drop pending action `id` (`reason` required).
    Deny {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Dead-man lease: arm (`ttl` + `on_expiry`), `renew` or `cancel`.
    #[serde(rename_all = "snake_case")]
    Lease {
        name: String,
        #[serde(default)]
        ttl: Option<String>,
        #[serde(default)]
        on_expiry: Option<String>,
        #[serde(default)]
        renew: bool,
        #[serde(default)]
        cancel: bool,
    },
    /// Journal records with seq greater than `after`.
    Journal {
        #[serde(default)]
        after: u64,
    },
    /// The activity trail of a target (see `agent::trail`).
    Trail(crate::trail::Request),
    /// Verify the journal's hash chain (and, with `anchor` = `SEQ:HASH`,
    /// that the record SEQ still has HASH).
    JournalVerify {
        #[serde(default)]
        anchor: Option<String>,
    },
    /// Arm a tripwire rule.
    TripwireAdd(crate::tripwire::RuleSpec),
    /// Every rule, where it is evaluated, its windows now and firings.
    TripwireList {},
    /// Disarm and forget a rule.
    TripwireRemove { name: String },
    /// Let a fired rule fire again (for one target, or every target).
    TripwireRearm {
        name: String,
        #[serde(default)]
        target: Option<String>,
    },
}

fn yes() -> bool {
    true
}

impl Command {
    /// Whether the command changes anything (and so needs an authorized caller).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::Create { .. }
                | Self::Adopt { .. }
                | Self::Stop { .. }
                | Self::Release { .. }
                | Self::Lease { .. }
                | Self::Isolate { .. }
                | Self::Restore { .. }
                | Self::Verify { .. }
                | Self::Degrade { .. }
                | Self::Throttle { .. }
                | Self::Escalate { .. }
                | Self::DrillBegin { .. }
                | Self::DrillEnd { .. }
                | Self::Propose { .. }
                | Self::Approve { .. }
                | Self::Deny { .. }
                | Self::TripwireAdd(..)
                | Self::TripwireRemove { .. }
                | Self::TripwireRearm { .. }
        ) || matches!(self, Self::Trail(r) if r.on || r.off)
    }

    /// Whether a caller inside a target is refused this command: every
    /// change, and the reads that would tell a workload how close it is to
    /// being cut (pending approvals and their evidence, tripwire rules and
    /// their thresholds), so it cannot pace itself just under them.
    pub fn confined(&self) -> bool {
        self.mutates() || matches!(self, Self::Pending {} | Self::TripwireList {} | Self::Trail(..))
    }

    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping {} => "ping",
            Self::Probe {} => "probe",
            Self::Create { .. } => "create",
            Self::Adopt { .. } => "adopt",
            Self::Status { .. } => "status",
            Self::Stop { .. } => "stop",
            Self::Release { .. } => "release",
            Self::Lease { .. } => "lease",
            Self::Isolate { .. } => "isolate",
            Self::Degrade { .. } => "degrade",
            Self::Throttle { .. } => "throttle",
            Self::Escalate { .. } => "escalate",
            Self::DrillBegin { .. } => "drill-begin",
            Self::DrillEnd { .. } => "drill-end",
            Self::Capabilities {} => "capabilities",
            Self::Events {} => "events",
            Self::Restore { .. } => "restore",
            Self::Verify { .. } => "verify",
            Self::Journal { .. } => "journal",
            Self::Trail(..) => "trail",
            Self::JournalVerify { .. } => "journal-verify",
            Self::Propose { .. } => "propose",
            Self::Pending {} => "pending",
            Self::Approve { .. } => "approve",
            Self::Deny { .. } => "deny",
            Self::TripwireAdd(..) => "tripwire-add",
            Self::TripwireList {} => "tripwire-list",
            Self::TripwireRemove { .. } => "tripwire-remove",
            Self::TripwireRearm { .. } => "tripwire-rearm",
        }
    }
}

/// Wire names of every command, for the unknown-command error.
pub const COMMANDS: &[&str] = &[
    "ping",
    "probe",
    "create",
    "adopt",
    "status",
    "stop",
    "release",
    "lease",
    "isolate",
    "degrade",
    "throttle",
    "escalate",
    "drill-begin",
    "drill-end",
    "restore",
    "verify",
    "capabilities",
    "events",
    "journal",
    "journal-verify",
    "trail",
    "propose",
    "pending",
    "approve",
    "deny",
    "tripwire-add",
    "tripwire-list",
    "tripwire-remove",
    "tripwire-rearm",
];

/// A request that could not be decoded: the id (if one could be read) and
/// the error to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Value,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

/// Decodes one request line (without its newline).
pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|e| DecodeError {
        id: Value::Null,
        error: ErrorBody::new("invalid-utf8", format!("request is not valid UTF-8 (byte {})", e.valid_up_to())),
    })?;
    let value: Value = serde_json::from_str::<Unique>(text)
        .map_err(|e| DecodeError {
            id: Value::Null,
            error: if e.is_data() {
                ErrorBody::new("bad-request", format!("malformed request: {e}"))
            } else {
                ErrorBody::new("parse", format!("request is not valid JSON: {e}"))
            },
        })?
        .0;
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let bad = |code: &str, message: String| DecodeError { id: id.clone(), error: ErrorBody::new(code, message) };
    let raw: RawRequest = serde_json::from_value(value).map_err(|e| bad("bad-request", format!("malformed request: {e}")))?;
    if !(raw.id.is_number() || raw.id.is_string()) {
        return Err(bad("bad-request", "`id` must be a number or a string".into()));
    }
    if !COMMANDS.contains(&raw.cmd.as_str()) {
        return Err(bad("unknown-command", format!("unknown command {:?}; known: {}", raw.cmd, COMMANDS.join(", "))));
    }
    let args = raw.args.unwrap_or_else(|| Value::Object(Default::default()));
    let tagged = serde_json::json!({ "cmd": raw.cmd, "args": args });
    let cmd: Command = serde_json::from_value(tagged).map_err(|e| bad("bad-request", format!("bad arguments for {:?}: {e}", raw.cmd)))?;
    Ok(Request { id: raw.id, cmd })
}

/// A JSON value whose objects have no duplicate keys, at any depth.
/// serde_json keeps the last of duplicate keys, so
/// `{"cmd":"status","cmd":"stop"}` would silently be a stop while a
/// logger keeping the first key saw a status: an ambiguous request is an
/// error instead.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Unique(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if m.insert(k.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
            }
        }
        Ok(Value::Object(m))
    }
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Self {
        Self { id, ok: true, result: Some(result), error: None }
    }

    pub fn err(id: Value, error: ErrorBody) -> Self {
        Self { id, ok: false, result: None, error: Some(error) }
    }
}

/// Encodes a command as a request line (client side).
pub fn encode(id: u64, cmd: &Command) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(cmd)?;
    if let Value::Object(m) = &mut v {
        m.insert("id".into(), Value::from(id));
    }
    serde_json::to_string(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let line = encode(7, &Command::Stop { name: "a".into(), reason: Some("r".into()), order: None }).unwrap();
        let req = decode(line.as_bytes()).unwrap();
        assert_eq!(req.id, Value::from(7));
        assert_eq!(req.cmd, Command::Stop { name: "a".into(), reason: Some("r".into()), order: None });
    }

    #[test]
    fn args_optional_for_empty_commands() {
        assert_eq!(decode(br#"{"id":1,"cmd":"ping"}"#).unwrap().cmd, Command::Ping {});
    }

    #[test]
    fn rejects_bad_input() {
        let code = |l: &[u8]| decode(l).unwrap_err().error.code;
        assert_eq!(code(b"\xff\xfe"), "invalid-utf8");
        assert_eq!(code(b"{not json"), "parse");
        assert_eq!(code(br#"{"id":1,"cmd":"ping","extra":1}"#), "bad-request");
        assert_eq!(code(br#"{"id":1,"cmd":"explode"}"#), "unknown-command");
        assert_eq!(code(br#"{"id":1,"cmd":"stop","args":{"name":"a","force":true}}"#), "bad-request");
        assert_eq!(code(br#"{"id":1,"cmd":"stop","args":{}}"#), "bad-request");
        assert_eq!(code(br#"{"id":null,"cmd":"ping"}"#), "bad-request");
        assert_eq!(code(br#"{"id":1,"cmd":"status","cmd":"stop","args":{"name":"t"}}"#), "bad-request");
        assert_eq!(code(br#"{"id":1,"cmd":"stop","args":{"name":"u","name":"t"}}"#), "bad-request");
        assert_eq!(decode(br#"{"id":"x","cmd":"nope"}"#).unwrap_err().id, Value::from("x"));
    }
}
