//! How `adopt --unit/--container/--pod` found its cgroup.
use serde_json::Value;

/// "unit nginx → nginx.service, by cgroup layout", or None for --cgroup/--pid.
pub(super) fn resolved(r: &Value) -> Option<String> {
    let kind = r["kind"].as_str()?;
    let (id, canonical, via) = (r["id"].as_str()?, r["canonical"].as_str()?, r["via"].as_str()?);
    let name = if id == canonical { id.to_owned() } else { format!("{id} ({canonical})") };
    let what = match (r["found"]["cgroup"].as_str(), r["found"]["pid"].as_i64()) {
        (Some(cg), _) => format!("cgroup {cg}"),
        (None, Some(pid)) => format!("init pid {pid}, whose tree moved into a new cgroup (its own cgroup holds other processes)"),
        _ => "?".into(),
    };
    Some(format!("{kind} {name}: {what}, found by {via}"))
}
