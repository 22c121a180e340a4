//! `killpath tripwire add|list|remove|rearm`: the clap definitions, the
//! request each makes, and the human rendering.
use clap::Subcommand;
use serde_json::Value;

use crate::{client::protocol::Command, tripwire::RuleSpec};

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process, never moved around")]
pub enum TripwireCmd {
    /// Arm a rule: when METRIC of a target goes above N within WINDOW, act.
    /// Critical degrade/isolate/stop rules on a kernel-counted metric act in
    /// the kernel, on the crossing event itself.
    Add {
        /// Rule name.
        rule: String,
        /// A target name, or '*' for every target (also targets adopted later).
        #[arg(long)]
        target: String,
        /// egress-bytes, egress-packets, connects, destinations (distinct ip:port),
        /// denials, denials:CAP, forks, execs, tasks (live processes, agent-evaluated).
        #[arg(long)]
        metric: String,
        /// Threshold: fires when the window's count goes above it (K/M/G, KB/MB/GB).
        #[arg(long)]
        above: String,
        /// Window: 500ms, 1s, 2m (fixed windows).
        #[arg(long)]
        window: String,
        /// throttle, degrade, isolate or stop (with the configured escalation defaults).
        #[arg(long)]
        action: String,
        /// Act at once without a human (degrade, isolate, stop); in the kernel where it counts the metric.
        #[arg(long)]
        critical: bool,
        /// auto, alert, confirm or audit [default: throttle auto, degrade alert,
        /// isolate/stop confirm, or auto when --critical].
        #[arg(long)]
        mode: Option<String>,
        /// Approval: how long to wait for a human (e.g. 5m).
        #[arg(long)]
        timeout: Option<String>,
        /// Approval: what then: hold, apply or drop.
        #[arg(long)]
        on_timeout: Option<String>,
        /// Approval: the group an approver must be in.
        #[arg(long)]
        approver_group: Option<String>,
        /// While approval is pending, apply this lower level at once (e.g. throttle).
        #[arg(long)]
        meanwhile: Option<String>,
        /// kernel (default for kernel-counted metrics) or agent (polls the kernel counters every 10 ms).
        #[arg(long)]
        eval: Option<String>,
    },
    /// Every rule: where it is evaluated, each target's window value now, firings.
    List,
    /// Disarm and forget a rule.
    Remove { rule: String },
    /// Let a fired rule fire again (a rule fires once per target until re-armed or re-added).
    Rearm {
        rule: String,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

impl TripwireCmd {
    /// The request this subcommand makes.
    pub fn request(&self) -> Command {
        match self {
            TripwireCmd::Add { rule, target, metric, above, window, action, critical, mode, timeout, on_timeout, approver_group, meanwhile, eval } => {
                Command::TripwireAdd(RuleSpec {
                    name: rule.clone(),
                    target: target.clone(),
                    metric: metric.clone(),
                    above: above.clone(),
                    window: window.clone(),
                    action: action.clone(),
                    critical: *critical,
                    mode: mode.clone(),
                    eval: eval.clone(),
                    timeout: timeout.clone(),
                    on_timeout: on_timeout.clone(),
                    approver_group: approver_group.clone(),
                    meanwhile: meanwhile.clone(),
                })
            }
            TripwireCmd::List => Command::TripwireList {},
            TripwireCmd::Remove { rule } => Command::TripwireRemove { name: rule.clone() },
            TripwireCmd::Rearm { rule, target } => Command::TripwireRearm { name: rule.clone(), target: target.clone() },
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// Human rendering (`--json` prints the result raw).
pub fn print(cmd: &TripwireCmd, r: &Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    match cmd {
        TripwireCmd::List => {
            let rules = r["rules"].as_array().cloned().unwrap_or_default();
            if rules.is_empty() {
                println!("no tripwires");
            }
            for x in rules {
                println!(
                    "{} target={} {} above {} per {} -> {}{} mode={} [{}]",
                    s(&x["name"]),
                    s(&x["target"]),
                    s(&x["metric"]),
                    s(&x["above"]),
                    s(&x["window"]),
                    s(&x["action"]),
                    if x["critical"].as_bool() == Some(true) { " (critical)" } else { "" },
                    s(&x["mode"]),
                    s(&x["evaluated"])
                );
                if x["metric"].as_str().is_some_and(|m| m.starts_with("syscalls")) {
                    println!("  note: counting syscalls taxes every syscall on the host while armed");
                }
                for t in x["targets"].as_array().cloned().unwrap_or_default() {
                    let fired = &t["fired"];
                    let f = if fired.is_null() {
                        "not fired".to_owned()
                    } else {
                        format!("FIRED value={} outcome={} window={} µs", s(&fired["value"]), s(&fired["outcome"]), s(&fired["exposure_window_us"]))
                    };
                    println!("  {}: window now {} ({f})", s(&t["target"]), s(&t["window_value"]));
                }
            }
        }
        _ => println!("{r}"),
    }
}
