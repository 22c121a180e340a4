//! Level 3 at the agent: one map update (the hooks are already attached),
//! `--netdev` binding, and `verify`.
use std::time::Instant;

use killpath_common::level;
use serde_json::{json, Value};

use super::{now_us, Done, State};
use crate::{
    error::{Error, Result},
    isolate::verify,
    kernel::cgroup::Cgroup,
    target::level_name,
};

impl State {
    /// Level 3: one map update; the hooks are already attached.
    pub(super) fn isolate(&mut self, name: &str, verify_after: bool, netdevs: &[String], received: Instant) -> Result<Done> {
        let setup_start = Instant::now();
        let t = self.registry.get(name)?.clone();
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "a stopped target has nothing left to isolate; restore it first" });
        }
        // By id (the real directory); a cgroup gone by id falls back to the
        // path, which then does not exist either.
        let cg = self.target_cgroup(name).map_or_else(|_| Cgroup::new(&t.cgroup), |(c, _)| c);
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

    /// Probes every channel from inside the target.
    pub(super) fn verify(&mut self, name: &str) -> Result<Done> {
        let t = self.registry.get(name)?.clone();
        if t.level >= level::STOPPED {
            return Err(Error::WrongLevel { name: name.into(), level: "stopped", why: "probes would be killed by the stop guard" });
        }
        let l = verify::Listeners::open(&self.config.state_dir)?;
        let results = verify::run(&t.cgroup, &l, None, &crate::isolate::catalog(self.enforcer.lsm_error.as_deref(), t.adopted))?;
        Ok(Done { result: json!({"target": name, "level": level_name(t.level), "verify": results}), to_level: None, time_to_effect_us: None })
    }
}
