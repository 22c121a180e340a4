//! Human rendering of audit mode: it always says AUDIT, so a dry run is
//! never mistaken for enforcement.
use serde_json::Value;

use super::{s, Output};

fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn what(a: &Value) -> String {
    let mut parts = Vec::new();
    if a["isolate"] == Value::Bool(true) {
        parts.push("isolation".to_owned());
    }
    if a["capabilities"].as_array().is_some_and(|c| !c.is_empty()) {
        parts.push(format!("capabilities {}", list(&a["capabilities"])));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" and ")
    }
}

fn counts(v: &Value) -> String {
    let m: Vec<String> = v.as_object().into_iter().flatten().map(|(k, n)| format!("{k}: {}", s(n))).collect();
    if m.is_empty() {
        "none yet".into()
    } else {
        m.join(", ")
    }
}

impl Output {
    /// `degrade --audit` / `isolate --audit`.
    pub fn audit_started(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!(
            "AUDIT {}: {} audited in {} µs; NOTHING IS ENFORCED (level stays {})",
            s(&r["target"]),
            what(&r["audit"]),
            s(&r["time_to_effect_us"]),
            s(&r["level"])
        );
        if r["already_revoked"].as_array().is_some_and(|a| !a.is_empty()) {
            println!("  already revoked (enforced, counted as real denials): {}", list(&r["already_revoked"]));
        }
        if r["not_audited_channels"].as_array().is_some_and(|a| !a.is_empty()) {
            println!("  OPEN under isolation on this kernel, so not audited either: {}", list(&r["not_audited_channels"]));
        }
        println!("  would-be refusals: `killpath status` (would_have_refused), `killpath events` (AUDIT lines); end with `restore --audit-off`");
    }

    /// `restore --audit-off`.
    pub fn audit_ended(&self, r: &Value) {
        if self.raw(r) {
            return;
        }
        println!("AUDIT ended on {} ({}); it would have refused: {}", s(&r["target"]), what(&r["audit_ended"]), counts(&r["would_have_refused"]));
    }

    /// A drill step run in audit mode: what it would have refused.
    pub(super) fn audit_step(&self, st: &crate::drill::Step) {
        if st.params["audit"] == Value::Bool(true) {
            println!("      AUDIT (nothing enforced): would have refused {}", counts(&st.params["would_have_refused"]));
        }
    }

    /// One status line per audited target.
    pub(super) fn audit_row(&self, t: &Value) {
        let a = &t["audit"];
        if a["active"] != Value::Bool(true) {
            return;
        }
        println!("{:<20} AUDIT (not enforced): {}; would have refused: {}", "", what(a), counts(&t["would_have_refused"]));
        let sup = &a["superseded_by_enforcement"];
        if sup["isolate"] == Value::Bool(true) || sup["capabilities"].as_array().is_some_and(|c| !c.is_empty()) {
            println!("{:<20} audit superseded by real enforcement: {}", "", what(sup));
        }
    }
}
