//! `killpath lease`: the dead-man lease. A fleet controller arms a lease
//! on a target (`--ttl 30s --on-expiry isolate|stop`) and must keep
//! renewing it; when a deadline passes the kernel itself raises the
//! target (killpath-ebpf's `deadman.rs`), with or without this agent.
//!
//! The kernel's `KP_LEASES` map is the source of truth: the deadline, the
//! ttl, the renewal count and who renewed live there, a renewal is
//! acknowledged only once its deadline is in the map, and a restarted
//! agent reads every lease back from it. So a crash can never leave the
//! kernel with a shorter deadline than the last acknowledged renewal, nor
//! a longer one than the controller asked for.
//!
//! Journal: arming and cancelling go through [`State::execute`]. Renewals
//! are frequent (a controller renewing a 1 s lease every 300 ms): the first
//! one and every [`RENEW_JOURNAL_EVERY`]th are journaled; the count and the
//! last renewal (time, uid, pid) are in the map, in `status`, and in the
//! cancel record or the expiry's kernel-raise record.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use killpath_common::{deadman::Lease, level, raise::cause, raise::Raise};
use serde_json::{json, Value};
use tracing::warn;

use super::{raise::now_ktime_ns, transaction::Done, Caller, State};
use crate::{
    error::{Error, Result},
    kernel::raises::Armed,
    target::level_name,
};

/// Renewals journaled: the first, then one in this many.
pub const RENEW_JOURNAL_EVERY: u64 = 100;
/// Longest ttl accepted.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the agent re-counts live leases (an expiry the kernel
/// enforced stops being armed; the tick detaches with the last lease).
const LEASE_CHECK: Duration = Duration::from_millis(100);

/// What `lease` was asked to do.
pub struct Request<'a> {
    pub ttl: Option<&'a str>,
    pub on_expiry: Option<&'a str>,
    pub renew: bool,
    pub cancel: bool,
}

/// Parses a ttl: a number with a unit (ms, s, m, h; a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| Error::InvalidRequest(format!("--ttl {s:?}: expected a number with a unit (500ms, 30s, 2m, 1h)")))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        u => return Err(Error::InvalidRequest(format!("--ttl {s:?}: unknown unit {u:?} (ms, s, m, h)"))),
    };
    if d.is_zero() {
        return Err(Error::InvalidRequest("--ttl must be more than 0: a lease that is already expired would raise the target at once".into()));
    }
    if d > MAX_TTL {
        return Err(Error::InvalidRequest(format!("--ttl {s:?} is longer than the 7-day maximum")));
    }
    Ok(d)
}

/// The expiry level: isolate or stop only. Throttle and degrade need
/// parameters and leave the target acting with a controller gone; a
/// lease is for when nobody is left to decide.
pub fn parse_expiry(s: Option<&str>) -> Result<u32> {
    let s = s.ok_or_else(|| Error::InvalidRequest("arming a lease needs --on-expiry isolate|stop".into()))?;
    match crate::level::parse(s) {
        Ok(l @ (level::ISOLATE | level::STOPPED)) => Ok(l),
        Ok(_) => Err(Error::InvalidRequest(format!("--on-expiry {s}: a lease expires to isolate or stop only"))),
        Err(_) => Err(Error::InvalidRequest(format!("--on-expiry {s:?}: unknown level (isolate or stop)"))),
    }
}

/// Adopts expiries' bookkeeping every [`LEASE_CHECK`] while the tick runs.
pub async fn lease_watch(state: Arc<Mutex<State>>) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    loop {
        tick.tick().await;
        let mut s = super::stop_first::background(&state);
        if s.enforcer.leases.ticking() {
            if let Err(e) = s.sync_leases() {
                warn!("syncing dead-man leases: {e}");
            }
        }
    }
}

/// What `probe` says of the dead-man lease on this kernel.
pub fn probe(f: &crate::kernel::probe::KernelFeatures) -> super::probe::LevelSupport {
    let perf = f.available("perf_event");
    let link = aya::features().bpf_perf_link();
    let detail = match (perf, link) {
        (true, true) => {
            "expiry enforced by the kernel (perf_event cpu-clock tick every 1 ms, pinned bpf_link), with or without the agent, idle targets included".into()
        }
        (false, _) => "UNAVAILABLE: perf_event programs refused; `lease` is refused with this error, never armed unenforced".into(),
        (true, false) => "UNAVAILABLE: no perf_event bpf_link (Linux < 5.15): the tick could not outlive the agent; `lease` is refused".into(),
    };
    super::probe::LevelSupport { level: "dead-man lease".into(), enforceable: perf && link, detail }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl State {
    /// `lease NAME`: arm, renew or cancel.
    pub(super) fn lease(&mut self, caller: Caller, name: &str, req: Request<'_>) -> Result<Value> {
        let t = self.registry.get(name)?.clone();
        match (req.ttl, req.renew, req.cancel) {
            (Some(ttl), false, false) => {
                let ttl = parse_ttl(ttl)?;
                let lvl = parse_expiry(req.on_expiry)?;
                if let Some(e) = self.enforcer.leases.error() {
                    return Err(Error::Kernel(format!("dead-man leases cannot be enforced on this kernel: {e}")));
                }
                if t.level >= lvl {
                    return Err(Error::InvalidRequest(format!(
                        "{name} is already at {}: a lease expiring to {} would change nothing",
                        level_name(t.level),
                        level_name(lvl)
                    )));
                }
                let params = json!({"ttl_ms": ttl.as_millis() as u64, "on_expiry": level_name(lvl)});
                self.execute(caller, "lease", Some(name), params, |s| s.arm_lease(t.cgroup_id, ttl, lvl))
            }
            (None, true, false) => {
                if req.on_expiry.is_some() {
                    return Err(Error::InvalidRequest("--on-expiry goes with --ttl (arming), not --renew".into()));
                }
                self.renew_lease(caller, name, t.cgroup_id)
            }
            (None, false, true) => {
                let Some((slot, l)) = self.enforcer.leases.find(t.cgroup_id) else {
                    return Err(Error::InvalidRequest(format!("{name} has no lease to cancel")));
                };
                let params = json!({"lease": lease_json(&l, now_ktime_ns())});
                self.execute(caller, "lease-cancel", Some(name), params, |s| {
                    s.enforcer.leases.clear(slot)?;
                    s.sync_leases()?;
                    Ok(Done { result: json!({"target": name, "cancelled": true, "renewals": l.renewals}), to_level: None, time_to_effect_us: None })
                })
            }
            (None, false, false) => Err(Error::InvalidRequest("lease needs --ttl DURATION --on-expiry LEVEL, --renew or --cancel".into())),
            _ => Err(Error::InvalidRequest("lease takes one of --ttl, --renew, --cancel".into())),
        }
    }

    fn arm_lease(&mut self, cgroup_id: u64, ttl: Duration, lvl: u32) -> Result<Done> {
        let slot = match self.enforcer.leases.find(cgroup_id) {
            Some((slot, _)) => slot,
            None => self.enforcer.leases.free_slot()?,
        };
        let now = now_ktime_ns();
        let ttl_ns = ttl.as_nanos() as u64;
        let lease = Lease { cgroup_id, deadline_ns: now + ttl_ns, ttl_ns, armed_ns: now, level: lvl, ..Default::default() };
        // A replaced lease's earlier expiry (if any) was already adopted:
        // the new one starts clean.
        self.enforcer.leases.set(slot, lease)?;
        self.sync_leases()?;
        Ok(Done { result: json!({"lease": lease_json(&lease, now), "slot": slot}), to_level: None, time_to_effect_us: None })
    }

    fn renew_lease(&mut self, caller: Caller, name: &str, cgroup_id: u64) -> Result<Value> {
        let Some((slot, l)) = self.enforcer.leases.find(cgroup_id) else {
            return Err(Error::InvalidRequest(format!("{name} has no lease to renew: arm one with --ttl and --on-expiry")));
        };
        let now = now_ktime_ns();
        if l.expired_ns != 0 {
            return Err(Error::InvalidRequest(format!(
                "the lease on {name} expired {:.1} ms ago: the kernel raised it to {}; arm a new lease (--ttl) after restoring it",
                ms(now.saturating_sub(l.expired_ns)),
                level_name(l.level)
            )));
        }
        if now >= l.deadline_ns {
            return Err(Error::InvalidRequest(format!(
                "the lease on {name} expired {:.1} ms before this renewal: the kernel raises it to {}",
                ms(now - l.deadline_ns),
                level_name(l.level)
            )));
        }
        let renewed =
            Lease { deadline_ns: now + l.ttl_ns, renewed_ns: now, renewals: l.renewals + 1, renew_uid: caller.uid, renew_pid: caller.pid as u32, ..l };
        let journaled = renewed.renewals == 1 || renewed.renewals.is_multiple_of(RENEW_JOURNAL_EVERY);
        let apply = move |s: &mut Self| -> Result<Done> {
            s.enforcer.leases.set(slot, renewed)?;
            // The tick may have expired the lease between the read above and
            // this write, which overwrote its mark: its raise record says so.
            if let Some(r) = s.enforcer.maps.raise_of(cgroup_id).filter(|r| r.cause == cause::LEASE) {
                s.enforcer.leases.set(slot, Lease { expired_ns: r.time_ns, ..l })?;
                return Err(Error::InvalidRequest(format!(
                    "the lease on {name} expired while this renewal was applied: the kernel raised it to {}",
                    level_name(l.level)
                )));
            }
            Ok(Done { result: json!({"lease": lease_json(&renewed, now), "journaled": journaled}), to_level: None, time_to_effect_us: None })
        };
        if journaled {
            let params = json!({"renewals": renewed.renewals, "ttl_ms": l.ttl_ns / 1_000_000, "journal_every": RENEW_JOURNAL_EVERY});
            self.execute(caller, "lease-renew", Some(name), params, apply)
        } else {
            apply(self).map(|d| d.result)
        }
    }

    /// Re-counts the live leases into the global switches and attaches or
    /// detaches the tick to match. Frees the slots of released targets.
    pub(super) fn sync_leases(&mut self) -> Result<()> {
        let mut armed = Armed::default();
        for (slot, l) in self.enforcer.leases.all() {
            if !self.registry.targets.values().any(|t| t.cgroup_id == l.cgroup_id) {
                self.enforcer.leases.clear(slot)?;
                continue;
            }
            if l.expired_ns == 0 {
                armed.add(l.level, 0);
            }
        }
        let live = armed != Armed::default();
        if self.enforcer.maps.armed.as_ref().and_then(|a| a.get("lease")) != Some(&armed) {
            self.enforcer.maps.set_armed("lease", armed)?;
        }
        self.enforcer.leases.sync_tick(live)
    }

    /// The lease on a target, for `status`.
    pub(super) fn lease_status(&self, cgroup_id: u64) -> Value {
        self.enforcer.leases.find(cgroup_id).map_or(Value::Null, |(_, l)| {
            let mut v = lease_json(&l, now_ktime_ns());
            if let Value::Object(m) = &mut v {
                let tick = match (self.enforcer.leases.error(), self.enforcer.leases.ticking()) {
                    (Some(e), _) => format!("unavailable: {e}"),
                    (None, true) => "kernel tick attached (perf_event cpu-clock, 1 ms, pinned: enforced without the agent)".into(),
                    (None, false) => "kernel tick detached".into(),
                };
                m.insert("enforcement".into(), json!(tick));
            }
            v
        })
    }

    /// The journal's context for a lease expiry the kernel enforced.
    pub(super) fn lease_raise_context(&self, _name: &str, r: &Raise) -> (String, Value) {
        let mut v = json!({"slot": r.detail, "late_ns": r.time_ns.saturating_sub(r.trigger_ns)});
        if let (Some(l), Value::Object(m)) = (self.enforcer.leases.get(r.detail), &mut v) {
            m.insert("lease".into(), lease_json(&l, r.time_ns));
        }
        ("dead-man lease expired".into(), v)
    }
}

/// A lease as `status`, the journal and responses show it, at ktime `now`.
fn lease_json(l: &Lease, now: u64) -> Value {
    json!({
        "on_expiry": level_name(l.level),
        "ttl_ms": l.ttl_ns / 1_000_000,
        "deadline_ktime_ns": l.deadline_ns,
        "time_left_ms": if l.expired_ns == 0 { ms(l.deadline_ns.saturating_sub(now)) } else { 0.0 },
        "armed_ktime_ns": l.armed_ns,
        "renewals": l.renewals,
        "last_renewal_ktime_ns": (l.renewed_ns != 0).then_some(l.renewed_ns),
        "renewed_by": (l.renewed_ns != 0).then(|| json!({"uid": l.renew_uid, "pid": l.renew_pid})),
        "expired": l.expired_ns != 0,
        "expired_ktime_ns": (l.expired_ns != 0).then_some(l.expired_ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units_and_bounds() {
        assert_eq!(parse_ttl("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_ttl("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_ttl("5").ok(), Some(Duration::from_secs(5)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("10x").is_err());
        assert!(parse_ttl("s").is_err());
        assert!(parse_ttl("8000h").is_err());
    }

    #[test]
    fn expiry_isolate_or_stop_only() {
        assert_eq!(parse_expiry(Some("isolate")).ok(), Some(level::ISOLATE));
        assert_eq!(parse_expiry(Some("stop")).ok(), Some(level::STOPPED));
        for bad in ["throttle", "degrade", "normal", "nonsense"] {
            assert!(parse_expiry(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_expiry(None).is_err());
    }
}
