//! The journal's head leaves the host with every record: each appended
//! record is published on the events stream with the new head, every event
//! and alert (and the alert hook's payload) carries `head: {seq, hash}`, and
//! `status` shows it. Whoever keeps a head can later check the file with
//! `journal --verify --anchor SEQ:HASH`. A rewrite of the file under the
//! running agent (caught by the journal before its next append) is alerted
//! here.
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};

use super::State;
use crate::journal::{Head, Observer, Record};

/// The head as last published, shared with the events subscribers.
pub type SharedHead = Arc<Mutex<Head>>;

/// Adds `head` to an event that does not carry one yet.
pub(super) fn with_head(mut ev: Value, head: &Head) -> Value {
    if let Value::Object(m) = &mut ev {
        m.entry("head").or_insert_with(|| json!(head));
    }
    ev
}

/// What the journal calls after each append: the record's event (with the
/// new head) for subscribers, and an alert when the file was rewritten.
pub(super) fn observer(events: tokio::sync::broadcast::Sender<Value>, shared: SharedHead, hook: Option<String>) -> Observer {
    Box::new(move |rec: &Record, head: &Head| {
        *shared.lock().unwrap_or_else(PoisonError::into_inner) = head.clone();
        let e = &rec.entry;
        let _ = events.send(json!({
            "type": "journal",
            "seq": rec.seq,
            "action": e.action,
            "phase": e.phase,
            "target": e.target,
            "high_priority": e.high_priority,
            "head": head,
        }));
        if e.action == "journal-rewritten" {
            let alert = json!({
                "type": "alert",
                "priority": "high",
                "action": "journal-rewritten",
                "message": e.outcome,
                "details": e.params,
                "time_unix_us": rec.time_unix_us,
                "head": head,
            });
            let _ = events.send(alert.clone());
            if let Some(hook) = hook.clone() {
                std::thread::spawn(move || super::degrade::run_hook(&hook, &alert));
            }
        }
    })
}

impl State {
    /// Sends an alert, with the journal head, to `events` subscribers and
    /// the operator's hook.
    pub(super) fn send_alert(&self, alert: Value) {
        let alert = with_head(alert, &self.journal.head());
        let _ = self.events.send(alert.clone());
        if let Some(hook) = self.config.alert_hook.clone() {
            std::thread::spawn(move || super::degrade::run_hook(&hook, &alert));
        }
    }

    /// The journal's head and signing, for `status` (and, later, metrics).
    pub(super) fn journal_status(&self) -> Value {
        let head = self.journal.head();
        json!({"head": head, "anchor": head.anchor(), "hmac": self.journal.has_key(), "path": self.journal.path()})
    }
}
