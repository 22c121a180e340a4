//! Level 2 in the agent: revoke and give back capabilities, and raise an
//! alert for every degrade step — a high-priority journal record, a line on
//! the event stream, and the operator's hook — so a degraded workload never
//! looks healthy.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use killpath_common::{level, ConnectAllow};
use serde_json::{json, Value};
use tracing::warn;

use super::{now_us, Caller, Done, State};
use crate::{
    degrade::{self, CapabilityStatus},
    error::{Error, Result},
    journal::{Entry, Phase},
    target::level_name,
};

/// A validated degrade request: nothing is applied until all of it checks out.
pub struct Plan {
    pub(super) mask: u32,
    pub(super) allow: Vec<(String, u32, ConnectAllow)>,
    pub(super) write: Vec<(String, killpath_common::WriteAllow)>,
}

/// How often denial counters are sampled for "last minute" figures.
pub const DENIAL_SAMPLE: Duration = Duration::from_secs(10);

/// Samples denial counters every [`DENIAL_SAMPLE`].
pub async fn denial_sampler(state: std::sync::Arc<std::sync::Mutex<State>>) {
    let mut tick = tokio::time::interval(DENIAL_SAMPLE);
    loop {
        tick.tick().await;
        super::stop_first::background(&state).sample_denials();
    }
}

impl State {
    pub(super) fn capabilities(&self) -> Vec<CapabilityStatus> {
        degrade::capabilities(&degrade::KernelGaps {
            lsm: self.enforcer.lsm_error.clone(),
            fs: self.enforcer.fs_error.clone(),
            signal: self.enforcer.signal_error.clone(),
        })
    }

    /// Checks every part of a degrade request against the catalog and this
    /// kernel: an unknown or unenforceable capability is an error naming it,
    /// and nothing is half-applied.
    pub(super) fn plan_degrade(&self, name: &str, revoke: &[String], allow_connect: &[String], allow_write: &[String]) -> Result<Plan> {
        let t = self.registry.get(name)?;
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "nothing left to degrade; restore it first" });
        }
        if revoke.is_empty() {
            return Err(Error::InvalidRequest("degrade needs --revoke CAP[,CAP...]".into()));
        }
        let caps = self.capabilities();
        let mut mask = 0;
        for r in revoke {
            let bit = degrade::bit(r)?;
            let c = caps.iter().find(|c| c.name == *r).ok_or_else(|| Error::InvalidRequest(r.clone()))?;
            if !c.enforceable {
                return Err(Error::InvalidRequest(format!("cannot revoke {r}: {}", c.detail)));
            }
            mask |= bit;
        }
        if !allow_write.is_empty() && mask & killpath_common::cap::FS_WRITE == 0 && (t.revoked | t.audit) & killpath_common::cap::FS_WRITE == 0 {
            return Err(Error::InvalidRequest("--allow-write only makes sense with fs.write revoked".into()));
        }
        let write = allow_write
            .iter()
            .map(|p| {
                // Resolve the real directory (.., symlinks) once, here; the
                // kernel then matches by (device, inode), which no later
                // path trick can spell differently.
                let real = std::fs::canonicalize(p).map_err(|e| Error::InvalidRequest(format!("bad --allow-write {p:?}: {e}")))?;
                let md = std::fs::metadata(&real).map_err(|e| Error::InvalidRequest(format!("bad --allow-write {p:?}: {e}")))?;
                if !md.is_dir() {
                    return Err(Error::InvalidRequest(format!("bad --allow-write {p:?}: not a directory")));
                }
                use std::os::unix::fs::MetadataExt as _;
                let key = killpath_common::WriteAllow { cgroup_id: t.cgroup_id, dev: crate::kernel::btf::kernel_dev(md.dev()), _pad: 0, ino: md.ino() };
                Ok((real.display().to_string(), key))
            })
            .collect::<Result<Vec<_>>>()?;
        if !allow_connect.is_empty() && mask & killpath_common::cap::NET_CONNECT == 0 && (t.revoked | t.audit) & killpath_common::cap::NET_CONNECT == 0 {
            return Err(Error::InvalidRequest("--allow-connect only makes sense with net.connect revoked".into()));
        }
        let allow = allow_connect.iter().map(|a| degrade::parse_allow_connect(a, t.cgroup_id).map(|(l, k)| (a.clone(), l, k))).collect::<Result<Vec<_>>>()?;
        Ok(Plan { mask, allow, write })
    }

    /// Applies a plan: allow-list first, then the revocation (one map
    /// update), so an allowed destination never sees a refusal.
    pub(super) fn degrade(&mut self, name: &str, plan: Plan, received: Instant) -> Result<Done> {
        let mut t = self.registry.get(name)?.clone();
        for (_, l, k) in &plan.allow {
            self.enforcer.maps.allow_connect(*l, *k)?;
        }
        for (dir, k) in &plan.write {
            self.enforcer.maps.allow_write(*k)?;
            if !t.allow_write.contains(dir) {
                t.allow_write.push(dir.clone());
            }
        }
        t.revoked |= plan.mask;
        for (spec, _, _) in &plan.allow {
            if !t.allow_connect.contains(spec) {
                t.allow_connect.push(spec.clone());
            }
        }
        let to = t.level.max(level::DEGRADE);
        self.enforcer.maps.set(t.cgroup_id, t.state(to))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let from = t.level;
        t.level = to;
        t.since_unix_us = now_us();
        let revoked = degrade::names(t.revoked);
        let allow = t.allow_connect.clone();
        let allow_write = t.allow_write.clone();
        self.registry.insert(t);
        self.registry.save()?;
        Ok(Done {
            result: json!({
                "target": name,
                "level": level_name(to),
                "from": level_name(from),
                "revoked": revoked,
                "allow_connect": allow,
                "allow_write": allow_write,
                "time_to_effect_us": time_to_effect_us,
            }),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Gives capabilities back (`restore --grant`).
    pub(super) fn grant(&mut self, name: &str, mask: u32, received: Instant) -> Result<Done> {
        let mut t = self.registry.get(name)?.clone();
        if t.revoked & mask == 0 {
            return Err(Error::InvalidRequest(format!("{name} has none of {} revoked", degrade::names(mask).join(", "))));
        }
        t.revoked &= !mask;
        if (t.revoked | t.audit) & killpath_common::cap::NET_CONNECT == 0 {
            self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
            t.allow_connect.clear();
        }
        if (t.revoked | t.audit) & killpath_common::cap::FS_WRITE == 0 {
            self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
            t.allow_write.clear();
        }
        let from = t.level;
        // Nothing left revoked at degrade: back to normal.
        if t.revoked == 0 && t.level == level::DEGRADE {
            t.level = level::NORMAL;
        }
        self.enforcer.maps.set(t.cgroup_id, t.state(t.level))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let to = t.level;
        let revoked = degrade::names(t.revoked);
        t.since_unix_us = now_us();
        self.registry.insert(t);
        self.registry.save()?;
        Ok(Done {
            result: json!({"target": name, "level": level_name(to), "from": level_name(from), "revoked": revoked, "granted": degrade::names(mask), "time_to_effect_us": time_to_effect_us}),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Raises an alert for a degrade or throttle step: high-priority journal record,
    /// event stream, operator hook (JSON on stdin, run without blocking).
    pub(super) fn alert(&mut self, caller: Caller, name: &str, action: &str, result: &Value, reason: Option<&str>) {
        let alert = json!({
            "type": "alert",
            "priority": "high",
            "action": action,
            "target": name,
            "reason": reason,
            "revoked": result["revoked"],
            "allow_connect": result["allow_connect"],
            "allow_write": result["allow_write"],
            "level": result["level"],
            "ceilings": result["ceilings"],
            "time_unix_us": now_us(),
            "message": match action {
                "throttle" => format!("target {name} throttled: {}", result["ceilings"]),
                _ => format!("target {name} degraded: {} revoked", result["revoked"]),
            },
        });
        let mut e = Entry::new(caller.actor(), Phase::Event, "alert");
        e.target = Some(name.to_owned());
        e.params = alert.clone();
        e.high_priority = true;
        if let Err(err) = self.journal.append(e) {
            warn!("journaling an alert failed: {err}");
        }
        self.send_alert(alert);
    }

    /// A sampled denial as an event: who (pid, comm), what (capability,
    /// destination), which target.
    pub fn denial_json(&self, ev: &killpath_common::DenialEvent) -> Value {
        let target = self.registry.targets.values().find(|t| t.cgroup_id == ev.cgroup_id).map(|t| t.name.clone());
        let comm = String::from_utf8_lossy(&ev.comm).trim_end_matches('\0').to_owned();
        let destination = match ev.family {
            2 | 10 => {
                let ip = std::net::Ipv6Addr::from(ev.addr);
                let ip = ip.to_ipv4_mapped().map_or(ip.to_string(), |v4| v4.to_string());
                Some(format!("{ip}:{}", ev.port))
            }
            _ => None,
        };
        let what = String::from_utf8_lossy(&ev.name).trim_end_matches('\0').to_owned();
        json!({
            "what": (!what.is_empty()).then_some(what),
            "type": "denial",
            "target": target,
            "cgroup_id": ev.cgroup_id,
            "capability": crate::audit::index_name(ev.cap),
            "audit": ev.audit == killpath_common::audit::EVENT_AUDIT,
            "pid": ev.pid,
            "comm": comm,
            "destination": destination,
        })
    }

    /// Snapshot of denial counters, for "last minute" figures in status.
    pub fn sample_denials(&mut self) {
        let now = Instant::now();
        let snap: Vec<(u64, u32, u64)> =
            self.registry.targets.values().flat_map(|t| self.enforcer.maps.denials(t.cgroup_id).into_iter().map(move |(i, n)| (t.cgroup_id, i, n))).collect();
        self.denial_history.push_back((now, snap));
        while self.denial_history.len() > 8 {
            self.denial_history.pop_front();
        }
    }

    /// The count of (target, capability) about a minute ago (the oldest
    /// snapshot within the last minute; 0 if none).
    pub(super) fn denials_minute_ago(&self, cgroup_id: u64, index: u32) -> u64 {
        let now = Instant::now();
        self.denial_history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= Duration::from_secs(60))
            .and_then(|(_, snap)| snap.iter().find(|(c, i, _)| *c == cgroup_id && *i == index).map(|(_, _, n)| *n))
            .unwrap_or(0)
    }
}

pub(super) fn run_hook(hook: &str, alert: &Value) {
    let mut cmd = Command::new("sh");
    crate::kernel::priority::default_for_child(&mut cmd);
    let child = cmd.arg("-c").arg(hook).stdin(Stdio::piped()).stdout(Stdio::null()).spawn();
    match child {
        Ok(mut c) => {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = writeln!(stdin, "{alert}");
            }
            match c.wait() {
                Ok(st) if st.success() => {}
                Ok(st) => warn!(hook, "alert hook exited with {st}"),
                Err(e) => warn!(hook, "alert hook: {e}"),
            }
        }
        Err(e) => warn!(hook, "cannot run alert hook: {e}"),
    }
}
