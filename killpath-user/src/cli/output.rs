//! Human-readable rendering of agent results (`--json` prints them raw).
use serde_json::Value;

mod audit;
mod named;
mod pending;

pub struct Output {
    pub json: bool,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

impl Output {
    fn raw(&self, v: &Value) -> bool {
        if self.json {
            println!("{v}");
        }
        self.json
    }

    pub fn probe(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("kernel          {}", s(&r["kernel"]));
        println!("cgroup2         {}", s(&r["cgroup2_mount"]));
        println!("cgroup.kill     {}", yes(&r["cgroup_kill"]));
        println!("cgroup.freeze   {}", yes(&r["cgroup_freeze"]));
        println!("BTF             {}", yes(&r["btf"]));
        println!("active LSMs     {}", s(&r["active_lsms"]));
        println!("BPF LSM         {}", if r["lsm_available"] == Value::Bool(true) { "available" } else { "UNAVAILABLE" });
        println!();
        println!("{:<18} {:<12} DETAIL", "PROGRAM TYPE", "STATUS");
        for p in r["program_types"].as_array().into_iter().flatten() {
            let st = if p["available"] == Value::Bool(true) { "available" } else { "UNAVAILABLE" };
            println!("{:<18} {:<12} {}", s(&p["program_type"]), st, s(&p["detail"]));
        }
        println!();
        println!("{:<10} {:<16} DETAIL", "LEVEL", "ENFORCEABLE");
        for l in r["levels"].as_array().into_iter().flatten() {
            println!("{:<10} {:<16} {}", s(&l["level"]), yes(&l["enforceable"]), s(&l["detail"]));
        }
        println!();
        self.capability_table(&r["capabilities"]);
        println!();
        println!("{:<18} {:<4} DETAIL", "PROTECTION", "ON");
        for p in r["protections"].as_array().into_iter().flatten() {
            println!("{:<18} {:<4} {}", s(&p["name"]), yes(&p["on"]), s(&p["detail"]));
        }
        let f = &r["trail_files"];
        if !f.is_null() {
            println!();
            println!("TRAIL FILES        {:<4} {}", yes(&f["recorded"]), s(&f["detail"]));
        }
    }

    pub fn status(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("{:<20} {:<9} {:>6}  {:<14} CGROUP", "TARGET", "LEVEL", "TASKS", "LAST STOP");
        for t in r["targets"].as_array().into_iter().flatten() {
            let last = &t["last_stop"];
            let stop = if last.is_null() { "-".to_owned() } else { format!("{} surv, {}µs", s(&last["survivors"]), s(&last["time_to_empty_us"])) };
            println!("{:<20} {:<9} {:>6}  {:<14} {}", s(&t["name"]), s(&t["level"]), s(&t["tasks"]), stop, s(&t["cgroup"]));
            let p = &t["privileges"];
            if !p.is_null() {
                let verdict = if p["escape"] == "possible" { "ESCAPE POSSIBLE" } else { "escape prevented" };
                println!("{:<20} {verdict}: {}", "", s(&p["why"]));
            }
            if let Some(rev) = t["revoked"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<String> = rev.iter().map(s).collect();
                let denials: Vec<String> = t["denials"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}: {} ({} last minute)", s(&v["total"]), s(&v["last_minute"])))
                    .collect();
                println!("{:<20} DEGRADED: revoked {}; denials {}", "", names.join(", "), if denials.is_empty() { "none".into() } else { denials.join(", ") });
            }
            if let Some(ids) = t["pending"]["ids"].as_array().filter(|a| !a.is_empty()) {
                println!("{:<20} PENDING approval: {} (see `killpath pending`)", "", ids.iter().map(s).collect::<Vec<_>>().join(", "));
            }
            self.audit_row(t);
            if t["trail"]["recording"] == true {
                println!("{:<20} TRAIL recording ({}; `killpath trail {}`)", "", s(&t["trail"]["files"]), s(&t["name"]));
            }
            if let Some(p) = t["protections_refused"].as_object().filter(|p| !p.is_empty()) {
                let list: Vec<String> = p.iter().map(|(k, v)| format!("{k}: {}", s(v))).collect();
                println!("{:<20} SELF-PROTECTION refused: {}", "", list.join(", "));
            }
            let th = &t["throttle"];
            if !th.is_null() {
                println!("{:<20} THROTTLED: {}", "", ceilings(&th["ceilings"]));
                for b in th["buckets"].as_array().into_iter().flatten() {
                    println!(
                        "{:<22}{:<15} ceiling {:>10}/s  measured {:>10}/s  passed {}  paced {}  denied {}",
                        "",
                        s(&b["class"]),
                        s(&b["ceiling_per_s"]),
                        s(&b["measured_per_s"]),
                        s(&b["passed"]),
                        s(&b["paced"]),
                        s(&b["denied"])
                    );
                }
                if let Some(tk) = th["tasks"].as_object() {
                    println!(
                        "{:<22}tasks: {} of {} live, {} forks refused ({})",
                        "",
                        s(&tk["current"]),
                        s(&tk["limit"]),
                        s(&tk["forks_refused"]),
                        s(&tk["mechanism"])
                    );
                }
                if th["frozen_for_debt"] == Value::Bool(true) || th["freezes"].as_u64().is_some_and(|n| n > 0) {
                    println!(
                        "{:<22}pacing: {} for its debt now; {} freezes, {} process(es) stopped now, thawed behind the pacer {} time(s)",
                        "",
                        if th["frozen_for_debt"] == Value::Bool(true) { "frozen" } else { "not frozen" },
                        s(&th["freezes"]),
                        s(&th["tasks_paused_now"]),
                        s(&th["thaws_undone"])
                    );
                }
                for h in th["class_hooks"].as_array().into_iter().flatten() {
                    println!("{:<22}{} charged at {}; host cost: {}", "", s(&h["class"]), s(&h["hook"]), s(&h["host_cost"]));
                }
                if !th["io_uring"].is_null() {
                    println!("{:<22}io_uring: {}", "", s(&th["io_uring"]["how"]));
                    println!("{:<22}SQPOLL: {}", "", s(&th["io_uring"]["sqpoll"]));
                }
                if !th["needs_agent"].is_null() {
                    println!("{:<22}needs the agent: {}", "", s(&th["needs_agent"]));
                }
            }
            let l = &t["lease"];
            if !l.is_null() {
                let when = if l["expired"] == true { "EXPIRED".to_owned() } else { format!("{} ms left", s(&l["time_left_ms"])) };
                println!(
                    "{:<20} LEASE: {} at deadline (ktime {} ns), {when}; ttl {} ms, {} renewals",
                    "",
                    s(&l["on_expiry"]),
                    s(&l["deadline_ktime_ns"]),
                    s(&l["ttl_ms"]),
                    s(&l["renewals"])
                );
            }
            if let Some(n) = t["escape_attempts"].as_u64().filter(|n| *n > 0) {
                println!("{:<20} ESCAPE ATTEMPTS: {n} (tasks that left the target's cgroup; see the journal)", "");
            }
            if let Some(open) = t["open_channels"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<String> = open.iter().map(s).collect();
                println!("{:<20} isolated, but OPEN on this kernel: {}", "", names.join(", "));
            }
        }
        println!("guard kills (all targets): {}", s(&r["guard_kills"]));
        println!("membership tracking: {}", s(&r["membership"]["tracking"]));
        let i = &r["isolation"];
        if !i.is_null() {
            println!(
                "isolation: {} packets dropped ({} at TC), {} connects/sends refused, {} raw sockets refused, {} TUN/vhost opens refused, {} AF_XDP setups refused, {} LSM denials; BPF LSM hooks {}",
                s(&i["packets_dropped"]),
                s(&i["tc_packets_dropped"]),
                s(&i["connects_refused"]),
                s(&i["raw_sockets_refused"]),
                s(&i["devices_refused"]),
                s(&i["xdp_setups_refused"]),
                s(&i["lsm_denials"]),
                s(&i["lsm"])
            );
        }
    }

    pub fn adopted(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        let t = &r["target"];
        let moved = r["moved_pids"].as_array().map(|a| format!(", moved {} processes", a.len())).unwrap_or_default();
        println!("adopted {} (cgroup {}{moved})", s(&t["name"]), s(&t["cgroup"]));
        if let Some(line) = named::resolved(&r["resolved"]) {
            println!("{line}");
        }
        println!("escape {}: {}", s(&r["privileges"]["escape"]), s(&r["privileges"]["why"]));
    }

    pub fn stopped(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        if r["fallback"] == Value::Bool(true) {
            println!("agent bypassed ({}): stopped directly; guard {}; journaled to {}", s(&r["agent_error"]), s(&r["guard"]), s(&r["journal"]));
            if let Some(e) = r["journal_error"].as_str() {
                println!("NOT JOURNALED: {e}");
            }
        }
        println!(
            "stopped {}: {} survivors of {} tasks; halted in {} µs ({}), empty in {} µs ({}{})",
            s(&r["target"]),
            s(&r["survivors"]),
            s(&r["tasks_at_start"]),
            s(&r["time_to_halt_us"]),
            s(&r["halt"]),
            s(&r["time_to_empty_us"]),
            if r["used_freeze"] == Value::Bool(true) { "cgroup.freeze + " } else { "" },
            if r["used_cgroup_kill"] == Value::Bool(true) { "cgroup.kill" } else { "per-pid SIGKILL" },
        );
        if let Some(cmd) = r["trail"]["summary"].as_str() {
            println!("what it did before the stop: `{cmd}`");
        }
        if r["membership"] == Value::Bool(true) {
            println!(
                "members outside the cgroup at stop: {}, killed by pidfd: {}; escape attempts: {}",
                s(&r["marked_outside"]),
                s(&r["marked_killed"]),
                s(&r["escape_attempts"])
            );
            if let Some(n) = r["marks_lost"].as_u64().filter(|n| *n > 0) {
                println!("WARNING: the kernel could not store {n} membership marks (map full): a task left unmarked may have left a target unseen, and is not counted");
            }
        } else {
            println!("membership marks unavailable: only the cgroup was stopped");
        }
    }

    pub fn isolated(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("isolated {} in {} µs (map update {} µs)", s(&r["target"]), s(&r["time_to_effect_us"]), s(&r["map_update_us"]));
        for d in r["netdevs"].as_array().into_iter().flatten() {
            println!("  netdev {:<9} cut at TC ({})", s(&d["netdev"]), s(&d["mechanism"]));
        }
        for c in r["channels"].as_array().into_iter().flatten() {
            println!("  {:<16} {:<4} {}", s(&c["channel"]), if c["enforced"] == Value::Bool(true) { "cut" } else { "OPEN" }, s(&c["by"]));
        }
        self.verify_table(&r["verify"]);
    }

    pub fn verified(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("verify {} (level {}):", s(&r["target"]), s(&r["level"]));
        self.verify_table(&r["verify"]);
    }

    fn verify_table(&self, v: &Value) {
        let Some(rows) = v.as_array() else { return };
        println!("{:<18} {:<8} DETAIL", "CHANNEL", "RESULT");
        for c in rows {
            println!("{:<18} {:<8} {}", s(&c["channel"]), s(&c["result"]), s(&c["detail"]));
        }
        let open: Vec<String> = rows.iter().filter(|c| c["result"] == "OPEN").map(|c| s(&c["channel"])).collect();
        if !open.is_empty() {
            println!("OPEN channels: {}", open.join(", "));
        }
    }

    pub fn restored(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("restored {} from {} to {} in {} µs", s(&r["target"]), s(&r["from"]), s(&r["level"]), s(&r["time_to_effect_us"]));
    }

    pub fn degraded(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        let list = |v: &Value| v.as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        println!(
            "degraded {} ({} -> {}) in {} µs: revoked {}",
            s(&r["target"]),
            s(&r["from"]),
            s(&r["level"]),
            s(&r["time_to_effect_us"]),
            list(&r["revoked"])
        );
        if r["allow_connect"].as_array().is_some_and(|a| !a.is_empty()) {
            println!("  still allowed to connect to: {}", list(&r["allow_connect"]));
        }
        if r["allow_write"].as_array().is_some_and(|a| !a.is_empty()) {
            println!("  still allowed to write below: {}", list(&r["allow_write"]));
        }
        println!("  alert raised (journal, `killpath events`, alert hook)");
    }

    pub fn throttled(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("throttled {} ({} -> {}) in {} µs: {}", s(&r["target"]), s(&r["from"]), s(&r["level"]), s(&r["time_to_effect_us"]), ceilings(&r["ceilings"]));
        if let Some(t) = r["tasks"].as_object() {
            println!("  tasks limited by {}", s(&t["mechanism"]));
        }
        for h in r["class_hooks"].as_array().into_iter().flatten() {
            println!("  {} charged at {}; host cost: {}", s(&h["class"]), s(&h["hook"]), s(&h["host_cost"]));
        }
        if !r["io_uring"].is_null() {
            println!("  io_uring: {}", s(&r["io_uring"]["how"]));
        }
        println!("  alert raised (journal, `killpath events`, alert hook)");
    }

    pub fn canary_check(&self, r: &crate::drill::canary::CheckReport) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
            return;
        }
        for w in &r.workers {
            let state = if w.problems.is_empty() { "ok" } else { "CORRUPT" };
            println!(
                "worker {}: {state}: {} committed records, {} after the checkpoint{}",
                w.worker,
                w.committed,
                w.tail_records,
                if w.torn_tail { " (last line torn, uncommitted)" } else { "" }
            );
            for p in &w.problems {
                println!("  {p}");
            }
        }
        println!("canary data check: {}", if r.ok { "passed" } else { "FAILED" });
    }

    pub fn escalated(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        let skipped = r["skipped"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| format!(" (skipped {})", a.iter().map(s).collect::<Vec<_>>().join(", ")))
            .unwrap_or_default();
        let took = if r["time_to_effect_us"].is_null() { &r["time_to_empty_us"] } else { &r["time_to_effect_us"] };
        println!("escalated {} {} -> {}{skipped} in {} µs", s(&r["target"]), s(&r["escalated_from"]), s(&r["level"]), s(took));
    }

    pub fn drill_report(&self, r: &crate::drill::Report) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
            return;
        }
        println!("drill {} on {}{} — scenario: {}", r.drill, r.target, if r.canary { " (canary)" } else { "" }, r.scenario);
        for st in &r.steps {
            let took = st.time_to_effect_us.map_or("-".into(), |t| format!("{t} µs"));
            println!("  {:<9} {}  time to effect {took}", st.level, if st.passed { "PASS" } else { "FAIL" });
            for c in &st.checks {
                println!("      [{}] {}: {}", if c.passed { "ok" } else { "FAILED" }, c.name, c.detail);
            }
            self.audit_step(st);
        }
        if !r.left_out.is_empty() {
            println!("  left out:");
            for l in &r.left_out {
                println!("      {}: {}", l.what, l.why);
            }
        }
        if r.interrupted {
            println!("  INTERRUPTED: the target was put back");
        }
        match r.restored.as_array() {
            _ if !r.conflict.is_null() => {
                println!("  CONFLICT: someone else changed the target during the drill ({}); left as they set it, nothing restored", s(&r.conflict["summary"]))
            }
            Some(a) if !a.is_empty() => println!("  target put back: {}", a.iter().map(s).collect::<Vec<_>>().join(", ")),
            _ => println!("  target left as the drill found it"),
        }
        if let Some(cmd) = r.trail["summary"].as_str() {
            println!("  what the target did during the drill: `{cmd}`");
        }
        println!("drill {}: {} in {} ms", r.drill, if r.passed { "PASSED" } else { "FAILED" }, r.duration_ms);
    }

    pub fn drill_history(&self, r: &Value) {
        let rows: Vec<&Value> =
            r["records"].as_array().into_iter().flatten().filter(|rec| rec["action"] == "drill-end" || rec["action"] == "drill-abandoned").collect();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            return;
        }
        println!("{:<28} {:<18} {:<26} {:<10} FAILED CHECKS", "TIME", "DRILL", "TARGET", "OUTCOME");
        for rec in rows {
            let p = &rec["params"];
            let outcome = match (rec["action"].as_str(), p["passed"].as_bool()) {
                (Some("drill-abandoned"), _) => "abandoned",
                (_, Some(true)) => "passed",
                _ => "FAILED",
            };
            let failed = p["failed_checks"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join("; ")).unwrap_or_default();
            println!(
                "{:<28} {:<18} {:<26} {:<10} {}",
                s(&rec["time"]),
                s(&p["drill"]),
                s(&rec["target"]),
                outcome,
                if failed.is_empty() { s(&p["why"]) } else { failed }
            );
        }
    }

    pub fn capabilities(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        self.capability_table(&r["capabilities"]);
    }

    fn capability_table(&self, caps: &Value) {
        println!("{:<12} {:<16} DETAIL", "CAPABILITY", "ENFORCEABLE");
        for c in caps.as_array().into_iter().flatten() {
            // Enforceable with a gap on this kernel: the detail says what is OPEN.
            let enforceable = if c["open"].is_string() && c["enforceable"] == Value::Bool(true) { "yes, partly" } else { yes(&c["enforceable"]) };
            println!("{:<12} {:<16} {}", s(&c["name"]), enforceable, s(&c["detail"]));
        }
    }

    pub fn event(&self, ev: &Value) {
        if self.json {
            println!("{ev}");
        } else if ev["type"] == "alert" {
            println!("ALERT {} {} (journal head {}:{})", s(&ev["target"]), s(&ev["message"]), s(&ev["head"]["seq"]), s(&ev["head"]["hash"]));
        } else if ev["type"] == "journal" {
            println!(
                "journal seq {} {} {} {} head {}:{}",
                s(&ev["seq"]),
                s(&ev["phase"]),
                s(&ev["action"]),
                s(&ev["target"]),
                s(&ev["head"]["seq"]),
                s(&ev["head"]["hash"])
            );
        } else if ev["type"] == "lagged" {
            println!("lagged: {} event(s) missed", s(&ev["missed"]));
        } else {
            println!(
                "{} {} {} pid={} comm={}{}",
                if ev["audit"] == Value::Bool(true) { "AUDIT would deny" } else { "denied" },
                s(&ev["target"]),
                s(&ev["capability"]),
                s(&ev["pid"]),
                s(&ev["comm"]),
                ev["destination"].as_str().map(|d| format!(" dest={d}")).or_else(|| ev["what"].as_str().map(|w| format!(" what={w}"))).unwrap_or_default()
            );
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }

    pub fn lease(&self, name: &str, r: &Value) {
        if self.raw(r) {
            return;
        }
        match r.get("lease") {
            _ if r["cancelled"] == true => println!("lease on {name} cancelled after {} renewals", s(&r["renewals"])),
            Some(l) => println!(
                "lease on {name}: {} in {} ms unless renewed (ttl {} ms, {} renewals)",
                s(&l["on_expiry"]),
                s(&l["time_left_ms"]),
                s(&l["ttl_ms"]),
                s(&l["renewals"])
            ),
            None => println!("{r}"),
        }
    }

    pub fn released(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!(
            "released {}: enforcement lifted{}",
            s(&r["target"]),
            if r["cgroup_removed"] == Value::Bool(true) { ", cgroup removed".to_owned() } else { format!(", cgroup kept ({} tasks)", s(&r["tasks_left"])) }
        );
    }

    pub fn verify(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        if r["ok"] == Value::Bool(true) {
            println!("journal OK: {} records, hash chain intact ({})", s(&r["records"]), s(&r["path"]));
        } else {
            println!("journal FAILED verification ({}):", s(&r["path"]));
            for p in r["problems"].as_array().into_iter().flatten() {
                println!("  {}", s(&p["message"]));
            }
        }
        if let Some(a) = r["anchor"].as_object() {
            let state = if a.get("ok") == Some(&Value::Bool(true)) { "matches" } else { "DOES NOT match" };
            println!("  anchor seq {}: {state}", a.get("seq").map(s).unwrap_or_default());
        }
        if r["hmac"].is_string() {
            println!("  hmac: {}", s(&r["hmac"]));
        }
        if r["head"]["seq"].is_u64() {
            println!("  head: {}:{}", s(&r["head"]["seq"]), s(&r["head"]["hash"]));
        }
    }

    /// `journal --head`: the anchor to keep elsewhere.
    pub fn head(&self, h: &Value) {
        if self.raw(h) {
            return;
        }
        println!("{}:{}", s(&h["seq"]), s(&h["hash"]));
    }

    pub fn records(&self, records: &Value) {
        for rec in records.as_array().into_iter().flatten() {
            if self.json {
                println!("{rec}");
                continue;
            }
            let actor = if rec["actor"]["source"].is_string() {
                s(&rec["actor"]["source"])
            } else {
                format!("uid={} pid={}", s(&rec["actor"]["uid"]), s(&rec["actor"]["pid"]))
            };
            let tte = rec["time_to_effect_us"].as_u64().map(|t| format!(" {t}µs")).unwrap_or_default();
            println!(
                "{:>5} {} {:<7} {:<16} {:<12} {}{}{}",
                s(&rec["seq"]),
                s(&rec["time"]),
                s(&rec["phase"]),
                actor,
                s(&rec["action"]),
                rec["target"].as_str().unwrap_or("-"),
                rec["outcome"].as_str().map(|o| format!(" -> {o}")).unwrap_or_default(),
                tte
            );
        }
    }
}

fn yes(v: &Value) -> &'static str {
    if v == &Value::Bool(true) {
        "yes"
    } else {
        "no"
    }
}

/// One line for a set of ceilings.
fn ceilings(c: &Value) -> String {
    let mut parts = Vec::new();
    for (k, v) in c["syscalls"].as_object().into_iter().flatten() {
        parts.push(format!("syscalls[{k}] {}/s", s(v)));
    }
    if !c["egress_bytes"].is_null() {
        parts.push(format!("egress {} B/s", s(&c["egress_bytes"])));
    }
    if !c["egress_packets"].is_null() {
        parts.push(format!("egress {} packets/s", s(&c["egress_packets"])));
    }
    if !c["tasks"].is_null() {
        parts.push(format!("tasks {}", s(&c["tasks"])));
    }
    parts.push(format!("mode {}", s(&c["mode"])));
    parts.join(", ")
}
