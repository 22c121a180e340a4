//! Reading a trail file back: the listing (`trail NAME` with `--since`,
//! `--level`, `--kind`) and the summary for a rollback planner
//! (`--summary`): destinations with bytes, programs run, files touched by
//! operation, signals, escapes, loss, and the same per level phase ("after
//! isolate: 3 refused connects").
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{
    error::{Error, Result},
    journal::{self, Record},
};

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only records at or after this unix µs.
    pub since_us: Option<u64>,
    /// Only events recorded while the target was at this level (its name).
    pub level: Option<String>,
    /// Only this group of kinds (net, exec, file, signal, escape).
    pub kind: Option<String>,
}

/// Parses `--since`: a unix time in seconds, an RFC 3339 UTC time as the
/// trail writes them (`2026-01-02T03:04:05Z`), or an age (`90s`, `10m`,
/// `2h`, `1d`) before `now_us`.
pub fn parse_since(s: &str, now_us: u64) -> Result<u64> {
    let bad =
        || Error::InvalidRequest(format!("--since {s:?}: expected unix seconds, an RFC 3339 UTC time (2026-01-02T03:04:05Z) or an age (90s, 10m, 2h, 1d)"));
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1_000_000).ok_or_else(bad);
    }
    if let Some((num, unit)) = s.char_indices().last().map(|(i, c)| (&s[..i], c)) {
        if let Ok(n) = num.parse::<u64>() {
            let mul = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            return n.checked_mul(mul * 1_000_000).map(|age| now_us.saturating_sub(age)).ok_or_else(bad);
        }
    }
    rfc3339_us(s).ok_or_else(bad)
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` into unix µs.
fn rfc3339_us(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let d: Vec<u64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<u64> = hms.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (H. Hinnant), as the journal's own encoder.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac_us: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    Some(((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000) + frac_us)
}

/// The records of the trail file at `path`, the whole chain verified.
/// None yet (a target that has recorded nothing) reads as empty.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(journal::read_records(path, 0)?)
}

/// One record as listed: seq, time, what, and its fields.
pub fn item(r: &Record) -> Value {
    let mut m = Map::new();
    if let Value::Object(p) = &r.entry.params {
        for (k, v) in p {
            m.insert(k.clone(), v.clone());
        }
    }
    // The record's own fields win over a parameter of the same name.
    m.insert("seq".into(), json!(r.seq));
    m.insert("written".into(), json!(r.time));
    m.insert("action".into(), json!(r.entry.action));
    if let Some(o) = &r.entry.outcome {
        m.insert("outcome".into(), json!(o));
    }
    Value::Object(m)
}

/// When a record happened (the event's own time, else when it was written).
fn time_of(r: &Record) -> u64 {
    r.entry.params.get("time_unix_us").and_then(Value::as_u64).unwrap_or(r.time_unix_us)
}

/// The records `f` selects, as listed.
pub fn list(records: &[Record], f: &Filter) -> Vec<Value> {
    records
        .iter()
        .filter(|r| f.since_us.is_none_or(|s| time_of(r) >= s))
        .filter(|r| f.level.as_deref().is_none_or(|l| r.entry.params.get("level").and_then(Value::as_str) == Some(l)))
        .filter(|r| f.kind.as_deref().is_none_or(|k| super::kind_group(&r.entry.action) == Some(k)))
        .map(item)
        .collect()
}

/// What happened while the target was at one level.
#[derive(Default)]
struct Phase {
    programs: BTreeMap<String, u64>,
    signals: BTreeMap<String, u64>,
    connects: BTreeMap<String, (u64, u64)>,
    listens: BTreeMap<String, u64>,
    accepts: BTreeMap<String, u64>,
    files: BTreeMap<String, BTreeMap<String, u64>>,
    escapes: u64,
    /// Bytes out/in per destination counted while at this level.
    bytes: BTreeMap<String, (u64, u64)>,
}

fn dest(v: &Value) -> String {
    let a = v.get("addr").and_then(Value::as_str).unwrap_or("?");
    let p = v.get("port").and_then(Value::as_u64).unwrap_or(0);
    let proto = v.get("proto").and_then(Value::as_str).unwrap_or("ip");
    if a.contains(':') {
        format!("{proto} [{a}]:{p}")
    } else {
        format!("{proto} {a}:{p}")
    }
}

impl Phase {
    fn see(&mut self, action: &str, p: &Value) {
        match action {
            "exec" => {
                let path = p.get("path").and_then(Value::as_str).unwrap_or("?");
                *self.programs.entry(path.to_owned()).or_default() += 1;
            }
            "signal" => {
                let k = format!("signal {} to pid {}", p["signal"], p["to_pid"]);
                *self.signals.entry(k).or_default() += 1;
            }
            "connect" => {
                let c = self.connects.entry(dest(p)).or_default();
                c.0 += 1;
                if p.get("refused").and_then(Value::as_bool) == Some(true) {
                    c.1 += 1;
                }
            }
            "listen" => *self.listens.entry(dest(p)).or_default() += 1,
            "accept" => *self.accepts.entry(dest(p)).or_default() += 1,
            "escape" => self.escapes += 1,
            a if a.starts_with("file-") && a != "file-writes" => {
                let mut path = p.get("path").and_then(Value::as_str).unwrap_or("?").to_owned();
                if let Some(to) = p.get("to").and_then(Value::as_str) {
                    path = format!("{path} -> {to}");
                }
                *self.files.entry(a.trim_start_matches("file-").to_owned()).or_default().entry(path).or_default() += 1;
            }
            _ => {}
        }
    }

    fn sentence(&self) -> String {
        let refused: u64 = self.connects.values().map(|c| c.1).sum();
        let connects: u64 = self.connects.values().map(|c| c.0).sum();
        let writes: u64 = self.files.values().flat_map(|m| m.values()).sum();
        let out: u64 = self.bytes.values().map(|b| b.0).sum();
        format!(
            "{} exec(s), {} connect(s) ({refused} refused), {out} bytes sent, {writes} file operation(s), {} signal(s) outside, {} escape attempt(s)",
            self.programs.values().sum::<u64>(),
            connects,
            self.signals.values().sum::<u64>(),
            self.escapes
        )
    }

    fn json(&self) -> Value {
        json!({
            "programs": self.programs,
            "signals": self.signals,
            "connects": self.connects.iter().map(|(d, (n, r))| json!({"destination": d, "connects": n, "refused": r})).collect::<Vec<_>>(),
            "listens": self.listens,
            "accepts": self.accepts,
            "files": self.files,
            "escapes": self.escapes,
            "destinations": self.bytes.iter().map(|(d, (o, i))| json!({"destination": d, "bytes_out": o, "bytes_in": i})).collect::<Vec<_>>(),
            "summary": self.sentence(),
        })
    }
}

/// The summary of a trail: everything, then per level phase in the order
/// the levels came.
pub fn summary(name: &str, records: &[Record]) -> Value {
    let mut all = Phase::default();
    let mut phases: Vec<(String, Phase)> = Vec::new();
    let mut level_changes = Vec::new();
    // Cumulative counters of each flow at the previous snapshot.
    let mut prev: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut destinations: BTreeMap<String, Value> = BTreeMap::new();
    let mut files_written: Vec<Value> = Vec::new();
    let mut lost = Value::Null;
    // The cgroup the counters come from: a target released and created
    // again under the same name appends to the same file with counters
    // starting from 0 (see `trail-on`).
    let mut cgroup: Option<u64> = None;
    let phase_of = |level: &str, phases: &mut Vec<(String, Phase)>| -> usize {
        if phases.last().is_none_or(|(l, _)| l != level) {
            phases.push((level.to_owned(), Phase::default()));
        }
        phases.len() - 1
    };
    for r in records {
        let p = &r.entry.params;
        match r.entry.action.as_str() {
            "level" => level_changes.push(json!({"time": r.time, "from": p["from"], "to": p["to"], "by": p["by"]})),
            "lost" => lost = p.clone(),
            "trail-on" => {
                let id = p.get("cgroup_id").and_then(Value::as_u64);
                if id.is_some() && cgroup.is_some() && id != cgroup {
                    prev.clear();
                }
                cgroup = id.or(cgroup);
            }
            "flows" => {
                let level = p.get("level").and_then(Value::as_str).unwrap_or("normal");
                let i = phase_of(level, &mut phases);
                for f in p.get("flows").and_then(Value::as_array).into_iter().flatten() {
                    let d = format!("{} {}", dest(f), f["direction"].as_str().unwrap_or("out"));
                    let now = (f["bytes_out"].as_u64().unwrap_or(0), f["bytes_in"].as_u64().unwrap_or(0));
                    let mut before = prev.insert(d.clone(), now).unwrap_or((0, 0));
                    // A counter never goes down: lower means it started again (a new cgroup).
                    if now.0 < before.0 || now.1 < before.1 {
                        before = (0, 0);
                    }
                    let delta = (now.0 - before.0, now.1 - before.1);
                    if delta != (0, 0) {
                        let b = phases[i].1.bytes.entry(d.clone()).or_default();
                        b.0 += delta.0;
                        b.1 += delta.1;
                    }
                    destinations.insert(d, f.clone());
                }
            }
            "file-writes" => {
                if let Some(f) = p.get("files").and_then(Value::as_array) {
                    files_written.clone_from(f);
                }
            }
            action if super::kind_group(action).is_some() => {
                all.see(action, p);
                let level = p.get("level").and_then(Value::as_str).unwrap_or("normal");
                let i = phase_of(level, &mut phases);
                phases[i].1.see(action, p);
            }
            _ => {}
        }
    }
    for (_, ph) in &phases {
        for (d, b) in &ph.bytes {
            let t = all.bytes.entry(d.clone()).or_default();
            t.0 += b.0;
            t.1 += b.1;
        }
    }
    let lines: Vec<String> = phases.iter().map(|(l, p)| format!("at {l}: {}", p.sentence())).collect();
    json!({
        "target": name,
        "records": records.len(),
        "total": all.json(),
        "destinations": destinations.into_values().collect::<Vec<_>>(),
        "file_writes": files_written,
        "level_changes": level_changes,
        "phases": phases.iter().map(|(l, p)| { let mut v = p.json(); v["level"] = json!(l); v }).collect::<Vec<_>>(),
        "by_level": lines,
        "lost": lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        assert_eq!(parse_since("10", 0).ok(), Some(10_000_000));
        assert_eq!(parse_since("2m", 200_000_000).ok(), Some(80_000_000));
        assert_eq!(parse_since("1970-01-01T00:01:00Z", 0).ok(), Some(60_000_000));
        assert_eq!(parse_since("2024-05-01T12:00:00.000001Z", 0).ok(), Some(1_714_564_800_000_001));
        assert!(parse_since("soon", 0).is_err());
    }

    fn rec(seq: u64, action: &str, params: Value) -> Record {
        let mut e = crate::journal::Entry::new(crate::journal::Actor::Source { source: "kernel".into() }, crate::journal::Phase::Event, action);
        e.params = params;
        Record { seq, time_unix_us: seq, time: String::new(), prev_hash: String::new(), entry: e, hash: String::new(), hmac: None }
    }

    /// Per level phase: execs and refused connects where they happened,
    /// bytes per destination as the difference between snapshots.
    #[test]
    fn summary_by_level() {
        let flow = |bytes: u64| json!({"flows": [{"proto": "tcp", "addr": "10.0.0.1", "port": 80, "direction": "out", "bytes_out": bytes, "bytes_in": 0}], "level": "normal"});
        let mut iso_flow = flow(1500);
        iso_flow["level"] = json!("isolate");
        let records = vec![
            rec(1, "exec", json!({"path": "/bin/curl", "level": "normal"})),
            rec(2, "flows", flow(1000)),
            rec(3, "level", json!({"from": "normal", "to": "isolate", "by": "isolate"})),
            rec(4, "connect", json!({"proto": "tcp", "addr": "10.0.0.1", "port": 80, "refused": true, "level": "isolate"})),
            rec(5, "connect", json!({"proto": "tcp", "addr": "10.0.0.1", "port": 80, "refused": true, "level": "isolate"})),
            rec(6, "flows", iso_flow),
        ];
        let s = summary("t", &records);
        assert_eq!(s["total"]["programs"]["/bin/curl"], 1);
        assert_eq!(s["phases"][0]["level"], "normal");
        assert_eq!(s["phases"][0]["destinations"][0]["bytes_out"], 1000);
        assert_eq!(s["phases"][1]["level"], "isolate");
        assert_eq!(s["phases"][1]["connects"][0]["refused"], 2);
        assert_eq!(s["phases"][1]["destinations"][0]["bytes_out"], 500, "bytes counted while isolated: the difference");
        assert_eq!(s["total"]["destinations"][0]["bytes_out"], 1500);
        assert!(s["by_level"][1].as_str().is_some_and(|l| l.starts_with("at isolate: 0 exec(s), 2 connect(s) (2 refused)")), "{s:#}");
        let f = Filter { kind: Some("net".into()), ..Default::default() };
        assert_eq!(list(&records, &f).len(), 4, "connects and flows");
        let f = Filter { level: Some("isolate".into()), ..Default::default() };
        assert_eq!(list(&records, &f).len(), 3);
    }

    /// A target released and created again under the same name appends
    /// to the same trail with its counters from 0: its bytes are its own,
    /// not a difference against the old cgroup's totals.
    #[test]
    fn summary_of_a_recreated_target() {
        let flow = |bytes: u64| json!({"flows": [{"proto": "tcp", "addr": "10.0.0.1", "port": 80, "direction": "out", "bytes_out": bytes, "bytes_in": 0}], "level": "normal"});
        let on = |id: u64| json!({"level": "normal", "cgroup_id": id});
        let records = vec![rec(1, "trail-on", on(7)), rec(2, "flows", flow(1000)), rec(3, "trail-on", on(9)), rec(4, "flows", flow(1200))];
        let s = summary("t", &records);
        assert_eq!(s["phases"][0]["destinations"][0]["bytes_out"], 2200, "{s:#}");
        // Even without the marker, a counter that went down started again.
        let records = vec![rec(1, "flows", flow(1000)), rec(2, "flows", flow(300))];
        assert_eq!(summary("t", &records)["phases"][0]["destinations"][0]["bytes_out"], 1300);
    }
}
