//! One function per command. Mutating commands run inside
//! [`State::execute`]: intent journaled and fsynced, action, result journaled
//! and fsynced, and only then the response.
use std::{path::PathBuf, time::Instant};

use killpath_common::{counter, level};
use serde_json::{json, Value};

use super::{now_us, State};
use crate::{
    client::protocol::Command,
    error::{Error, Result},
    isolate::verify,
    journal::{self, Actor, Entry, Phase},
    kernel::cgroup::{self, Cgroup},
    kernel::proctree as tree,
    stop,
    target::{level_name, validate_name, Target},
};

/// Parses a level name for `restore --to` (stop is not a level to restore to).
fn parse_level(s: &str) -> Result<u32> {
    match crate::agent::defaults::parse_level(s)? {
        level::STOPPED => Err(Error::InvalidRequest("restore goes down: stop is the top level (use stop)".into())),
        l => Ok(l),
    }
}

/// Who is asking, from SO_PEERCRED.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// The drill this connection began, if any: its commands are the drill's.
    pub drill: Option<u64>,
}

impl Caller {
    pub(super) fn actor(self) -> Actor {
        match self.drill {
            Some(d) => super::drill::actor(d, self.uid, self.pid),
            None => Actor::Caller { uid: self.uid, pid: self.pid },
        }
    }
}

/// What an action reports back to `execute`.
pub(super) struct Done {
    pub(super) result: Value,
    pub(super) to_level: Option<u32>,
    pub(super) time_to_effect_us: Option<u64>,
}

impl State {
    /// Serves one decoded command. `received` is when its line arrived.
    pub fn handle(&mut self, cmd: Command, caller: Caller, received: Instant) -> Result<Value> {
        match cmd {
            Command::Ping {} => Ok(json!({"pong": true, "pid": std::process::id()})),
            Command::Probe {} => Ok(json!(super::probe::run(Some(&self.config.cgroup_parent)))),
            Command::Status { name } => self.status(name.as_deref()),
            Command::Journal { after } => Ok(json!({"records": journal::read_records(self.journal.path(), after)?})),
            Command::JournalVerify {} => Ok(json!(self.verify_journal()?)),
            Command::Create { name, move_caller } => {
                validate_name(&name)?;
                let params = json!({"move_caller": move_caller, "caller_pid": caller.pid});
                self.execute(caller, "run", Some(&name), params, |s| s.create(&name, move_caller.then_some(caller.pid)))
            }
            Command::Adopt { name, cgroup, pid } => {
                validate_name(&name)?;
                let params = json!({"cgroup": cgroup, "pid": pid});
                self.execute(caller, "adopt", Some(&name), params, |s| s.adopt(&name, cgroup.as_deref(), pid))
            }
            Command::Stop { name, reason } => {
                self.registry.get(&name)?;
                let params = json!({"reason": reason});
                self.execute(caller, "stop", Some(&name), params, |s| s.stop(&name, received))
            }
            Command::Isolate { name, reason, verify, netdev } => {
                self.registry.get(&name)?;
                // Every device must exist before anything changes.
                for d in &netdev {
                    crate::isolate::netdev::ifindex(d)?;
                }
                let params = json!({"reason": reason, "verify": verify, "netdev": netdev});
                self.execute(caller, "isolate", Some(&name), params, |s| s.isolate(&name, verify, &netdev, received))
            }
            Command::Restore { name, to, grant, reason } => {
                self.registry.get(&name)?;
                let params = json!({"to": to, "grant": grant, "reason": reason});
                match (to, grant.is_empty()) {
                    (Some(to), true) => {
                        let to_level = parse_level(&to)?;
                        self.execute(caller, "restore", Some(&name), params, |s| s.restore(&name, to_level, received))
                    }
                    // Neither: one level down.
                    (None, true) => {
                        let cur = self.registry.get(&name)?.level;
                        if cur == level::NORMAL {
                            return Err(Error::InvalidRequest(format!("{name} is already at normal")));
                        }
                        self.execute(caller, "restore", Some(&name), params, |s| s.restore(&name, cur - 1, received))
                    }
                    (None, false) => {
                        let mask = grant.iter().map(|g| crate::degrade::bit(g)).collect::<Result<Vec<u32>>>()?.into_iter().fold(0, |a, b| a | b);
                        self.execute(caller, "restore", Some(&name), params, |s| s.grant(&name, mask, received))
                    }
                    _ => Err(Error::InvalidRequest("restore takes --to LEVEL or --grant CAP, not both".into())),
                }
            }
            Command::Degrade { name, revoke, allow_connect, allow_write, reason } => {
                self.registry.get(&name)?;
                let plan = self.plan_degrade(&name, &revoke, &allow_connect, &allow_write)?;
                let params = json!({"revoke": revoke, "allow_connect": allow_connect, "allow_write": allow_write, "reason": reason});
                let r = self.execute(caller, "degrade", Some(&name), params, |s| s.degrade(&name, plan, received))?;
                self.alert(caller, &name, "degrade", &r, reason.as_deref());
                Ok(r)
            }
            Command::Throttle { name, syscalls, syscall_class, egress_bytes, egress_packets, tasks, mode, netdev, reason } => {
                let mut req = crate::throttle::Ceilings { egress_bytes, egress_packets, tasks, ..Default::default() };
                req.syscalls = syscall_class.clone();
                if let Some(n) = syscalls {
                    req.syscalls.insert("all".into(), n);
                }
                req.mode = mode.as_deref().map(crate::throttle::Mode::parse).transpose()?.unwrap_or_default();
                let plan = self.plan_throttle(&name, &req)?;
                for d in &netdev {
                    crate::isolate::netdev::ifindex(d)?;
                }
                if !netdev.is_empty() && !plan.has_egress() {
                    return Err(Error::InvalidRequest("--netdev only makes sense with --egress-bytes or --egress-packets".into()));
                }
                let params = json!({"syscalls": syscalls, "syscall_class": syscall_class, "egress_bytes": egress_bytes,
                    "egress_packets": egress_packets, "tasks": tasks, "mode": mode, "netdev": netdev, "reason": reason});
                let r = self.execute(caller, "throttle", Some(&name), params, |s| s.throttle(&name, plan, &netdev, received))?;
                self.alert(caller, &name, "throttle", &r, reason.as_deref());
                Ok(r)
            }
            Command::Escalate { name, to, skip_reason, reason } => {
                self.escalate(caller, &name, to.as_deref(), skip_reason.as_deref(), reason.as_deref(), received)
            }
            Command::DrillBegin { target } => self.drill_begin(caller, &target),
            Command::DrillEnd { report, restore } => self.drill_end(caller, &report, restore),
            Command::Capabilities {} => Ok(json!({"capabilities": self.capabilities()})),
            Command::Events {} => Err(Error::InvalidRequest("events is a subscription: the server handles it".into())),
            Command::Verify { name } => {
                self.registry.get(&name)?;
                self.execute(caller, "verify", Some(&name), Value::Null, |s| s.verify(&name))
            }
            Command::Release { name } => {
                self.registry.get(&name)?;
                self.execute(caller, "release", Some(&name), Value::Null, |s| s.release(&name))
            }
        }
    }

    /// Verifies the file, and also that it still ends where this agent
    /// last wrote: removing the last records keeps the chain valid, but the
    /// agent remembers how far it got.
    fn verify_journal(&self) -> Result<journal::VerifyReport> {
        let mut report = journal::verify_file(self.journal.path())?;
        let written = self.journal.last_seq();
        if report.records < written {
            report.ok = false;
            report.problems.push(journal::Problem {
                line: report.records + 1,
                seq: Some(report.records + 1),
                kind: "truncated".into(),
                message: format!(
                    "the journal ends at seq {} but this agent wrote up to seq {written}: the last {} record(s) were removed",
                    report.records,
                    written - report.records
                ),
            });
        }
        Ok(report)
    }

    /// Journals a refused request (unauthorized caller).
    pub fn journal_refusal(&mut self, caller: Caller, cmd: &Command) -> Result<()> {
        let mut e = Entry::new(caller.actor(), Phase::Event, "refused");
        e.params = json!({"cmd": cmd.name(), "gid": caller.gid});
        e.outcome = Some("forbidden: caller is not root or in the agent's group".into());
        e.high_priority = true;
        self.journal.append(e)?;
        Ok(())
    }

    pub(super) fn execute(
        &mut self,
        caller: Caller,
        action: &str,
        target: Option<&str>,
        params: Value,
        f: impl FnOnce(&mut Self) -> Result<Done>,
    ) -> Result<Value> {
        let from_level = target.and_then(|t| self.registry.targets.get(t)).map(|t| t.level);
        let mut intent = Entry::new(caller.actor(), Phase::Intent, action);
        intent.target = target.map(str::to_owned);
        intent.from_level = from_level;
        intent.params = params;
        let intent = self.journal.append(intent)?;
        let outcome = f(self);
        let mut res = Entry::new(caller.actor(), Phase::Result, action);
        res.target = target.map(str::to_owned);
        res.from_level = from_level;
        res.intent_seq = Some(intent.seq);
        match &outcome {
            Ok(done) => {
                if let (Some(name), Some(to)) = (target, done.to_level) {
                    if from_level != Some(to) {
                        if let Some(t) = self.registry.targets.get_mut(name) {
                            t.record_level(from_level.unwrap_or(0), to, action, caller.actor());
                            // The level change is already saved by the
                            // action; a failed save here only loses history.
                            let _ = self.registry.save();
                        }
                    }
                }
                res.to_level = done.to_level;
                res.outcome = Some("ok".into());
                res.time_to_effect_us = done.time_to_effect_us;
                res.params = done.result.clone();
            }
            Err(e) => res.outcome = Some(format!("error: {e}")),
        }
        // The response waits for this fsync: nothing acknowledged is lost.
        let rec = self.journal.append(res)?;
        outcome.map(|mut d| {
            if let Value::Object(m) = &mut d.result {
                m.insert("journal_seq".into(), json!(rec.seq));
            }
            d.result
        })
    }

    fn insert_target(&mut self, name: &str, cg: &Cgroup, created: bool, adopted: bool) -> Result<Target> {
        let cgroup_id = cg.id()?;
        // Two names for one cgroup would share one kernel entry: adopting
        // it again would reset a stopped target's guard to normal.
        if let Some(other) = self.registry.targets.values().find(|t| t.cgroup_id == cgroup_id) {
            return Err(Error::InvalidRequest(format!("cgroup {} is already target {:?}", cg.path().display(), other.name)));
        }
        let t = Target {
            name: name.to_owned(),
            cgroup: cg.path().to_owned(),
            cgroup_id,
            depth: cg.depth(&self.cgroup_mount)?,
            created,
            level: level::NORMAL,
            since_unix_us: now_us(),
            last_stop: None,
            netdevs: Vec::new(),
            revoked: 0,
            allow_connect: Vec::new(),
            allow_write: Vec::new(),
            adopted,
            throttle: Default::default(),
            history: Vec::new(),
        };
        self.enforcer.maps.set(t.cgroup_id, t.state(t.level))?;
        // Attach the level-3 hooks now, so that isolating later is only a
        // map update.
        if let Err(e) = self.enforcer.isolate.attach_target(t.cgroup_id, &t.cgroup) {
            let _ = self.enforcer.maps.remove(t.cgroup_id);
            let _ = self.enforcer.isolate.detach_target(t.cgroup_id);
            return Err(e);
        }
        self.registry.targets.insert(name.to_owned(), t.clone());
        self.registry.save()?;
        Ok(t)
    }

    fn ensure_new(&self, name: &str) -> Result<()> {
        if self.registry.targets.contains_key(name) {
            return Err(Error::TargetExists(name.to_owned()));
        }
        Ok(())
    }

    fn create(&mut self, name: &str, move_pid: Option<i32>) -> Result<Done> {
        self.ensure_new(name)?;
        let cg = Cgroup::new(self.config.cgroup_parent.join(name));
        if cg.exists() && !cg.procs_recursive().is_empty() {
            return Err(Error::InvalidRequest(format!("cgroup {} already exists and holds tasks; use adopt --cgroup", cg.path().display())));
        }
        cg.create()?;
        let t = self.insert_target(name, &cg, true, false)?;
        if let Some(pid) = move_pid {
            cg.move_pid(pid)?;
        }
        Ok(Done { result: json!({"target": t}), to_level: Some(level::NORMAL), time_to_effect_us: None })
    }

    fn adopt(&mut self, name: &str, cgroup_path: Option<&str>, pid: Option<i32>) -> Result<Done> {
        self.ensure_new(name)?;
        match (cgroup_path, pid) {
            (Some(path), None) => {
                let p = PathBuf::from(path);
                let spelled = if p.starts_with(&self.cgroup_mount) { p } else { self.cgroup_mount.join(path.trim_start_matches('/')) };
                // Resolve `..` and symlinks before any check: the root and
                // "contains the agent" checks and the depth the guard keys
                // on must see the real directory.
                let abs =
                    std::fs::canonicalize(&spelled).map_err(|e| Error::InvalidRequest(format!("{} is not a cgroup2 directory: {e}", spelled.display())))?;
                if !abs.starts_with(&self.cgroup_mount) {
                    return Err(Error::InvalidRequest(format!("{} is not below the cgroup2 mount {}", abs.display(), self.cgroup_mount.display())));
                }
                let cg = Cgroup::new(&abs);
                if !cg.exists() {
                    return Err(Error::InvalidRequest(format!("{} is not a cgroup2 directory", abs.display())));
                }
                if abs == self.cgroup_mount {
                    return Err(Error::InvalidRequest("refusing to adopt the root cgroup".into()));
                }
                let own = self.cgroup_mount.join(cgroup::cgroup_of(std::process::id() as i32)?.trim_start_matches('/'));
                if own.starts_with(&abs) {
                    return Err(Error::InvalidRequest(format!("refusing to adopt {}: it contains the agent itself", abs.display())));
                }
                let t = self.insert_target(name, &cg, false, true)?;
                Ok(Done { result: json!({"target": t}), to_level: Some(level::NORMAL), time_to_effect_us: None })
            }
            (None, Some(pid)) => {
                tree::check_adoptable(pid)?;
                let cg = Cgroup::new(self.config.cgroup_parent.join(name));
                cg.create()?;
                let t = self.insert_target(name, &cg, true, true)?;
                let moved = match tree::move_tree(pid, &cg) {
                    Ok(m) => m,
                    Err(e) => {
                        // Leave nothing half-made: forget the target, and
                        // remove its cgroup if nothing got in.
                        let _ = self.enforcer.maps.remove(t.cgroup_id);
                        self.registry.targets.remove(name);
                        self.registry.save()?;
                        let _ = cg.remove();
                        return Err(e);
                    }
                };
                Ok(Done { result: json!({"target": t, "moved_pids": moved}), to_level: Some(level::NORMAL), time_to_effect_us: None })
            }
            _ => Err(Error::InvalidRequest("adopt needs exactly one of --cgroup PATH or --pid PID".into())),
        }
    }

    pub(super) fn stop(&mut self, name: &str, received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        // Arm the kernel guard first: from here on any task of the target
        // that makes a syscall, forks or is switched out gets SIGKILL.
        self.enforcer.maps.set(t.cgroup_id, t.state(level::STOPPED))?;
        let guard_armed_us = received.elapsed().as_micros() as u64;
        let kills_before = self.enforcer.maps.guard_kills();
        let report = stop::hard_stop(&Cgroup::new(&t.cgroup), received, stop::EMPTY_TIMEOUT)?;
        let guard_kills = self.enforcer.maps.guard_kills().saturating_sub(kills_before);
        let tt = self.registry.get_mut(name)?;
        tt.level = level::STOPPED;
        tt.since_unix_us = now_us();
        tt.last_stop = Some(report.clone());
        self.registry.save()?;
        Ok(Done {
            result: json!({
                "target": name,
                "level": "stopped",
                "survivors": report.survivors,
                "tasks_at_start": report.tasks_at_start,
                "time_to_halt_us": report.time_to_halt_us,
                "time_to_empty_us": report.time_to_empty_us,
                "guard_armed_us": guard_armed_us,
                "guard_kills": guard_kills,
                "used_cgroup_kill": report.used_cgroup_kill,
                "used_freeze": report.used_freeze,
            }),
            to_level: Some(level::STOPPED),
            time_to_effect_us: Some(report.time_to_empty_us),
        })
    }

    fn release(&mut self, name: &str) -> Result<Done> {
        self.unthrottle(name)?;
        let t = self.registry.get(name)?.clone();
        self.enforcer.maps.remove(t.cgroup_id)?;
        self.enforcer.isolate.detach_target(t.cgroup_id)?;
        // Nothing of the target stays in the kernel maps.
        self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
        self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
        self.enforcer.maps.clear_denials(t.cgroup_id);
        for d in &t.netdevs {
            self.enforcer.isolate.tc.detach(d)?;
        }
        let cg = Cgroup::new(&t.cgroup);
        let mut removed = false;
        if cg.exists() {
            if cg.has_freeze() {
                cg.freeze(false)?;
            }
            if t.created && cg.procs_recursive().is_empty() {
                cg.remove()?;
                removed = true;
            }
        }
        self.registry.targets.remove(name);
        self.registry.save()?;
        Ok(Done {
            result: json!({"target": name, "cgroup_removed": removed, "tasks_left": if cg.exists() { cg.procs_recursive().len() } else { 0 }}),
            to_level: Some(level::NORMAL),
            time_to_effect_us: None,
        })
    }

    fn status(&self, name: Option<&str>) -> Result<Value> {
        let list: Vec<&Target> = match name {
            Some(n) => vec![self.registry.get(n)?],
            None => self.registry.targets.values().collect(),
        };
        let rows: Vec<Value> = list
            .into_iter()
            .map(|t| {
                let cg = Cgroup::new(&t.cgroup);
                let kernel = self.enforcer.maps.get(t.cgroup_id);
                let open: Vec<String> = if t.level >= level::ISOLATE {
                    crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted).into_iter().filter(|c| !c.enforced).map(|c| c.channel).collect()
                } else {
                    Vec::new()
                };
                let denials: serde_json::Map<String, Value> = self
                    .enforcer
                    .maps
                    .denials(t.cgroup_id)
                    .into_iter()
                    .map(|(i, n)| {
                        (
                            crate::degrade::name_of_index(i).to_owned(),
                            json!({"total": n, "last_minute": n.saturating_sub(self.denials_minute_ago(t.cgroup_id, i))}),
                        )
                    })
                    .collect();
                json!({
                    "history": t.history,
                    "throttle": self.throttle_status(t),
                    "revoked": crate::degrade::names(t.revoked),
                    "allow_connect": t.allow_connect,
                    "allow_write": t.allow_write,
                    "denials": denials,
                    "netdevs": t.netdevs,
                    "open_channels": open,
                    "isolation_hooks_attached": self.enforcer.isolate.attached(t.cgroup_id),
                    "name": t.name,
                    "cgroup": t.cgroup,
                    "cgroup_id": t.cgroup_id,
                    "level": level_name(t.level),
                    "kernel_level": kernel.map(|k| level_name(k.level)),
                    "tasks": cg.procs_recursive().len(),
                    "populated": cg.populated().unwrap_or(false),
                    "cgroup_exists": cg.exists(),
                    "since_unix_us": t.since_unix_us,
                    "last_stop": t.last_stop,
                })
            })
            .collect();
        let m = &self.enforcer.maps;
        Ok(json!({
            "targets": rows,
            "guard_kills": m.guard_kills(),
            "isolation": {
                "packets_dropped": m.counter(counter::ISOLATE_SKB_DROPS),
                "tc_packets_dropped": m.counter(counter::ISOLATE_TC_DROPS),
                "connects_refused": m.counter(counter::ISOLATE_ADDR_DENIALS),
                "raw_sockets_refused": m.counter(counter::ISOLATE_SOCK_DENIALS),
                "lsm_denials": m.counter(counter::ISOLATE_LSM_DENIALS),
                "lsm": self.enforcer.lsm_error.clone().map_or("attached".to_owned(), |e| format!("unavailable: {e}")),
            },
        }))
    }
}

impl State {
    /// Level 3: one map update; the hooks are already attached.
    pub(super) fn isolate(&mut self, name: &str, verify_after: bool, netdevs: &[String], received: Instant) -> Result<Done> {
        let setup_start = Instant::now();
        let t = self.registry.get(name)?.clone();
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "a stopped target has nothing left to isolate; restore it first" });
        }
        let cg = Cgroup::new(&t.cgroup);
        if !cg.exists() {
            return Err(Error::InvalidRequest(format!("cgroup {} of target {name} no longer exists", t.cgroup.display())));
        }
        if !self.enforcer.isolate.attached(t.cgroup_id) {
            self.enforcer.isolate.attach_target(t.cgroup_id, &t.cgroup)?;
        }
        let tc = self.bind_netdevs(name, t.cgroup_id, netdevs)?;
        // An established connection has to exist before the cut to show
        // that the cut stops it.
        let probes = if verify_after {
            let l = verify::Listeners::open(&self.config.state_dir)?;
            // Already isolated: no connection can be opened before the cut
            // any more; that channel is reported skipped, not failed.
            // Likewise when the target may not connect (net.connect revoked).
            let held = if t.level >= level::ISOLATE { None } else { verify::hold(&t.cgroup, &l).ok() };
            Some((l, held))
        } else {
            None
        };
        // With --verify, the clock starts after the probe set-up: the
        // effect is timed, not the preparation for checking it.
        let verify_setup_us = probes.as_ref().map(|_| setup_start.elapsed().as_micros() as u64);
        let before = Instant::now();
        self.enforcer.maps.set(t.cgroup_id, t.state(level::ISOLATE))?;
        let map_update_us = before.elapsed().as_micros() as u64;
        let time_to_effect_us = received.elapsed().as_micros() as u64 - verify_setup_us.unwrap_or(0);
        let tt = self.registry.get_mut(name)?;
        tt.level = level::ISOLATE;
        tt.since_unix_us = now_us();
        self.registry.save()?;
        let channels = crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted);
        let verified = match probes {
            Some((l, held)) => Some(verify::run(&t.cgroup, &l, held, &channels)?),
            None => None,
        };
        let open: Vec<&str> = channels.iter().filter(|c| !c.enforced).map(|c| c.channel.as_str()).collect();
        Ok(Done {
            result: json!({
                "target": name,
                "level": "isolate",
                "time_to_effect_us": time_to_effect_us,
                "map_update_us": map_update_us,
                "verify_setup_us": verify_setup_us,
                "channels": channels,
                "open_channels": open,
                "netdevs": tc,
                "verify": verified,
            }),
            to_level: Some(level::ISOLATE),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Binds host-side devices to a target and attaches the TC program to
    /// each (idempotent); one `{"netdev", "mechanism"}` row per device.
    pub(super) fn bind_netdevs(&mut self, name: &str, cgroup_id: u64, netdevs: &[String]) -> Result<Vec<Value>> {
        let mut tc = Vec::new();
        for d in netdevs {
            tc.push(json!({"netdev": d, "mechanism": self.enforcer.isolate.tc.attach(d, cgroup_id)?}));
            let tt = self.registry.get_mut(name)?;
            if !tt.netdevs.contains(d) {
                tt.netdevs.push(d.clone());
            }
        }
        Ok(tc)
    }

    /// Steps a target down to `to` (a map update; a stopped target's cgroup
    /// is thawed; below throttle the ceilings are lifted).
    pub(super) fn restore(&mut self, name: &str, to: u32, received: Instant) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        if to >= t.level {
            return Err(Error::InvalidRequest(format!("restore goes down: {name} is at {}, cannot restore to {}", level_name(t.level), level_name(to))));
        }
        // Below throttle, every ceiling is lifted.
        if to < level::THROTTLE {
            self.unthrottle(name)?;
        }
        // Below degrade, every capability comes back.
        let mut t = t;
        if to < level::DEGRADE {
            t.revoked = 0;
            t.allow_connect.clear();
            t.allow_write.clear();
            self.enforcer.maps.clear_allow_connect(t.cgroup_id)?;
            self.enforcer.maps.clear_allow_write(t.cgroup_id)?;
        }
        self.enforcer.maps.set(t.cgroup_id, t.state(to))?;
        let time_to_effect_us = received.elapsed().as_micros() as u64;
        let cg = Cgroup::new(&t.cgroup);
        if t.level >= level::STOPPED && cg.exists() && cg.has_freeze() {
            cg.freeze(false)?;
        }
        let from = self.registry.get(name)?.level;
        let tt = self.registry.get_mut(name)?;
        tt.level = to;
        tt.revoked = t.revoked;
        tt.allow_connect = t.allow_connect.clone();
        tt.allow_write = t.allow_write.clone();
        tt.since_unix_us = now_us();
        self.registry.save()?;
        Ok(Done {
            result: json!({"target": name, "level": level_name(to), "from": level_name(from), "time_to_effect_us": time_to_effect_us}),
            to_level: Some(to),
            time_to_effect_us: Some(time_to_effect_us),
        })
    }

    /// Probes every channel from inside the target.
    fn verify(&mut self, name: &str) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "probes would be killed by the stop guard" });
        }
        let l = verify::Listeners::open(&self.config.state_dir)?;
        let results = verify::run(&t.cgroup, &l, None, &crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted))?;
        Ok(Done { result: json!({"target": name, "level": level_name(t.level), "verify": results}), to_level: None, time_to_effect_us: None })
    }
}
