//! Rendering of `propose`, `pending`, `approve` and `deny`.
use serde_json::Value;

use super::{s, Output};

impl Output {
    pub fn proposed(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("pending action {}: {} {} awaits approval", s(&r["id"]), s(&r["level"]), s(&r["target"]));
        if let Some(m) = r["meanwhile"].as_object() {
            println!("  meanwhile {}: {}", s(&m["level"]), s(&m["outcome"]));
        }
        println!("  on timeout ({} ms): {}", s(&r["timeout_ms"]), s(&r["on_timeout"]));
        println!("  {}", s(&r["how"]));
    }

    pub fn pending(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        let list = r["pending"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("no pending actions");
            return;
        }
        println!("{:<5} {:<16} {:<8} {:>9} {:>10} {:<6} {:<9} {:<24} reason", "id", "target", "level", "age_s", "timeout_s", "policy", "meanwhile", "origin");
        for p in &list {
            let secs = |v: &Value| v.as_u64().map_or("-".to_owned(), |ms| format!("{:.1}", ms as f64 / 1000.0));
            let meanwhile = match (&p["meanwhile"], &p["meanwhile_outcome"]) {
                (Value::Null, _) => "-".to_owned(),
                (m, Value::String(o)) if o == "ok" => s(m),
                (m, o) => format!("{} ({})", s(m), s(o)),
            };
            println!(
                "{:<5} {:<16} {:<8} {:>9} {:>10} {:<6} {:<9} {:<24} {}",
                s(&p["id"]),
                s(&p["target"]),
                s(&p["level"]),
                secs(&p["age_ms"]),
                secs(&p["timeout_ms"]),
                s(&p["on_timeout"]),
                meanwhile,
                p["origin"].to_string(),
                s(&p["reason"])
            );
            if !p["evidence"].is_null() {
                println!("      evidence: {}", p["evidence"]);
            }
        }
    }

    pub fn approved(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        let applied = &r["applied"];
        let how = match applied["already"].as_str() {
            Some(l) => format!("already at {l}"),
            None => format!("now {} (in {} µs)", s(&applied["level"]), s(&applied["time_to_effect_us"])),
        };
        println!("approved pending action {}: {} {}: {how}", s(&r["id"]), s(&r["level"]), s(&r["target"]));
    }

    pub fn denied(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("denied pending action {}: {} {} dropped ({})", s(&r["id"]), s(&r["level"]), s(&r["target"]), s(&r["reason"]));
    }
}
