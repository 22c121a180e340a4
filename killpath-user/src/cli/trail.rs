//! `killpath trail NAME`: the clap definition, the request it makes, and
//! the human rendering of a listing, a summary or a verification.
use clap::Args;
use serde_json::Value;

use crate::{client::protocol::Command, trail::Request};

/// What a recording target did outside itself, recorded by the kernel.
#[derive(Debug, Args)]
pub struct TrailArgs {
    /// Target name.
    pub name: String,
    /// Only records since TIME: unix seconds, an RFC 3339 UTC time, or an age (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events recorded while the target was at LEVEL (normal, throttle, degrade, isolate, stop).
    #[arg(long)]
    pub level: Option<String>,
    /// Only this kind: net, exec, file, signal or escape.
    #[arg(long)]
    pub kind: Option<String>,
    /// Grouped for a rollback planner: destinations with bytes, programs run, files by operation,
    /// signals, and what happened at each level.
    #[arg(long, conflicts_with_all = ["verify", "on", "off", "since", "level", "kind"])]
    pub summary: bool,
    /// Check the trail file's hash chain (like `journal --verify`) and its newest anchor in the
    /// main journal (a rewrite with a recomputed chain, a cut); exit 1 on a problem.
    #[arg(long, conflicts_with_all = ["on", "off"])]
    pub verify: bool,
    /// Start recording NAME.
    #[arg(long, conflicts_with = "off")]
    pub on: bool,
    /// Stop recording NAME (its trail stays).
    #[arg(long)]
    pub off: bool,
}

impl TrailArgs {
    /// The socket request.
    pub fn request(&self) -> Command {
        Command::Trail(Request {
            name: self.name.clone(),
            since: self.since.clone(),
            level: self.level.clone(),
            kind: self.kind.clone(),
            summary: self.summary,
            verify: self.verify,
            on: self.on,
            off: self.off,
        })
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// One listed record, one line.
fn line(r: &Value) -> String {
    let action = r["action"].as_str().unwrap_or("?");
    let head = format!("{:>6} {} {:<13} {:<8}", s(&r["seq"]), s(&r["written"]), action, r["level"].as_str().unwrap_or(""));
    let who = format!("pid {} ({}) uid {}", s(&r["pid"]), s(&r["comm"]), s(&r["uid"]));
    let what = match action {
        "exec" => {
            let argv: Vec<String> = r["argv"].as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default();
            format!("{who}: {} [{}]{}", s(&r["path"]), argv.join(" "), if r["truncated"] == true { " (truncated)" } else { "" })
        }
        "signal" => format!("{who}: signal {} to pid {}", s(&r["signal"]), s(&r["to_pid"])),
        "connect" | "listen" | "accept" => {
            format!("{who}: {} {}:{}{}", s(&r["proto"]), s(&r["addr"]), s(&r["port"]), if r["refused"] == true { " REFUSED" } else { "" })
        }
        "escape" => format!("{who}: escape attempt by pid {}{}", s(&r["escaping_pid"]), if r["refused"] == true { " (killed)" } else { "" }),
        "flows" => {
            let fl: Vec<String> = r["flows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    format!(
                        "{} {}:{} {} out {} B/{} pkts in {} B",
                        s(&f["proto"]),
                        s(&f["addr"]),
                        s(&f["port"]),
                        s(&f["direction"]),
                        s(&f["bytes_out"]),
                        s(&f["packets_out"]),
                        s(&f["bytes_in"])
                    )
                })
                .collect();
            fl.join("; ")
        }
        "file-writes" => format!("{} file(s) written", r["files"].as_array().map_or(0, Vec::len)),
        "level" => format!("level {} -> {} ({})", s(&r["from"]), s(&r["to"]), s(&r["by"])),
        "lost" => format!(
            "LOST: kernel ring full {} ; trail file full {} ; not written (file error) {}{}",
            r["kernel_ring_full"],
            r["trail_file_full"],
            r["write_failed"],
            host_wide(r)
        ),
        a if a.starts_with("file-") => {
            let to = if r["to"].is_string() { format!(" -> {}", s(&r["to"])) } else { String::new() };
            format!("{who}: {}{to}", s(&r["path"]))
        }
        _ => String::new(),
    };
    format!("{head} {what}")
}

/// Prints the answer; returns whether a verification found the chain intact.
pub fn print(args: &TrailArgs, r: &Value, json: bool) -> bool {
    let ok = r.get("ok").and_then(Value::as_bool).unwrap_or(true);
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return ok;
    }
    if args.on || args.off {
        println!("{}: recording {}; trail {}; files {}", s(&r["target"]), if r["recording"] == true { "on" } else { "off" }, s(&r["trail"]), s(&r["files"]));
    } else if args.verify {
        println!("{}: {} record(s), {}", s(&r["path"]), s(&r["records"]), if ok { "chain intact" } else { "CHAIN BROKEN" });
        for p in r["problems"].as_array().into_iter().flatten() {
            println!("  line {}: {}", s(&p["line"]), s(&p["message"]));
        }
        println!("  {}", anchor_line(r));
    } else if args.summary {
        print_summary(r);
    } else {
        for rec in r["records"].as_array().into_iter().flatten() {
            println!("{}", line(rec));
        }
    }
    ok
}

/// What `--verify` says of the trail's anchor in the main journal.
fn anchor_line(r: &Value) -> String {
    let by = &r["anchored_by"];
    if by.is_null() {
        return "anchor: none in the main journal yet (chain checked only)".into();
    }
    let state = if r["anchor"]["ok"] == true { "matches" } else { "DOES NOT match" };
    format!("anchor {} (main journal seq {}): {state}", s(&by["anchor"]), s(&by["journal_seq"]))
}

fn print_summary(r: &Value) {
    println!("trail of {} ({} records, recording {})", s(&r["target"]), s(&r["records"]), if r["recording"] == true { "on" } else { "off" });
    let t = &r["total"];
    println!("destinations:");
    for d in r["destinations"].as_array().into_iter().flatten() {
        println!(
            "  {} {}:{} {}: {} B out ({} pkts), {} B in, {} refused",
            s(&d["proto"]),
            s(&d["addr"]),
            s(&d["port"]),
            s(&d["direction"]),
            s(&d["bytes_out"]),
            s(&d["packets_out"]),
            s(&d["bytes_in"]),
            s(&d["refused"])
        );
    }
    for c in t["connects"].as_array().into_iter().flatten() {
        println!("  connect {}: {} time(s), {} refused", s(&c["destination"]), s(&c["connects"]), s(&c["refused"]));
    }
    println!("programs run:");
    for (p, n) in t["programs"].as_object().into_iter().flatten() {
        println!("  {p} x{n}");
    }
    println!("files:");
    for (op, paths) in t["files"].as_object().into_iter().flatten() {
        for (p, n) in paths.as_object().into_iter().flatten() {
            println!("  {op} {p} x{n}");
        }
    }
    println!("signals outside:");
    for (k, n) in t["signals"].as_object().into_iter().flatten() {
        println!("  {k} x{n}");
    }
    println!("escape attempts: {}", s(&t["escapes"]));
    println!("by level:");
    for l in r["by_level"].as_array().into_iter().flatten() {
        println!("  {}", s(l));
    }
    if !r["lost"].is_null() {
        println!(
            "LOST (not recorded): kernel ring full {} ; trail file full {} ; not written (file error) {}{}",
            r["lost"]["kernel_ring_full"],
            r["lost"]["trail_file_full"],
            r["lost"]["write_failed"],
            host_wide(&r["lost"])
        );
    }
}

/// Kernel loss no target could be charged with (the per-target loss map
/// was full), when there is any: labelled as host-wide.
fn host_wide(lost: &Value) -> String {
    if lost["kernel_host_wide"].is_null() {
        return String::new();
    }
    format!(" ; HOST-WIDE, not attributed (per-target loss map full): {}", lost["kernel_host_wide"])
}
