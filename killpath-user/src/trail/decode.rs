//! A kernel event (`TrailEvent`) into what the trail file holds: the kind's
//! name and its fields as JSON. Text fields are decoded lossily (a path or
//! an argument is bytes, not UTF-8).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use killpath_common::trail::{kind, FileKey, FileValue, FlowKey, FlowValue, TrailEvent, TEXT_BYTES};
use serde_json::{json, Value};

use crate::target::level_name;

/// CLOCK_MONOTONIC ns (what the kernel stamps events with) into unix µs,
/// through the offset between the two clocks now.
pub struct Clock {
    offset_us: i128,
}

impl Clock {
    /// The offset between the clocks at this moment.
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1000);
        let real = crate::agent::now_us() as i128;
        Clock { offset_us: real - mono }
    }

    /// Unix µs of a kernel timestamp.
    pub fn unix_us(&self, ns: u64) -> u64 {
        u64::try_from(ns as i128 / 1000 + self.offset_us).unwrap_or(0)
    }
}

/// An address as the kernel holds it (IPv4 in the first word, network order).
pub fn addr(family: u16, a: &[u32; 4]) -> Option<IpAddr> {
    match family {
        2 => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a[0])))),
        10 => {
            let mut b = [0u8; 16];
            for (i, w) in a.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn proto(p: u16) -> Value {
    match p {
        6 => json!("tcp"),
        17 => json!("udp"),
        0 => Value::Null,
        n => json!(n),
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `text` split at NULs (trailing empty parts dropped).
fn parts(ev: &TrailEvent) -> Vec<String> {
    let len = (ev.text_len as usize).min(TEXT_BYTES);
    let mut v: Vec<String> = ev.text[..len].split(|c| *c == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    while v.last().is_some_and(String::is_empty) {
        v.pop();
    }
    v
}

/// The record action (kind name) and fields of one event.
pub fn event(ev: &TrailEvent, clock: &Clock) -> (&'static str, Value) {
    let name = super::kind_name(ev.kind);
    let mut v = json!({
        "kind": name,
        "time_unix_us": clock.unix_us(ev.time_ns),
        "level": level_name(ev.level),
        "pid": ev.pid,
        "tid": ev.tid,
        "uid": ev.uid,
        "comm": cstr(&ev.comm),
    });
    let m = v.as_object_mut();
    let Some(m) = m else { return (name, v) };
    if ev.truncated != 0 {
        m.insert("truncated".into(), json!(true));
    }
    match ev.kind {
        kind::EXEC => {
            let mut p = parts(ev);
            let path = if p.is_empty() { String::new() } else { p.remove(0) };
            m.insert("path".into(), json!(path));
            m.insert("argc".into(), json!(p.len()));
            m.insert("argv".into(), json!(p));
            if ev.value != 0 {
                // The kernel's internal dev_t: 12 bits of major above 20 of minor.
                m.insert("dev".into(), json!(format!("{}:{}", ev.peer >> 20, ev.peer & 0xf_ffff)));
                m.insert("ino".into(), json!(ev.value));
            }
        }
        kind::SIGNAL => {
            m.insert("signal".into(), json!(ev.arg & 0xffff));
            m.insert("kernel_generated".into(), json!(ev.arg >> 16 & 1 == 1));
            m.insert("to_pid".into(), json!(ev.peer));
            m.insert("result".into(), json!(ev.value));
        }
        kind::CONNECT | kind::LISTEN | kind::ACCEPT => {
            m.insert("proto".into(), proto(ev.proto));
            m.insert("addr".into(), json!(addr(ev.family, &ev.addr).map(|a| a.to_string())));
            m.insert("port".into(), json!(ev.port));
            if ev.kind == kind::CONNECT {
                m.insert("refused".into(), json!(ev.arg == 1));
            }
        }
        kind::FILE_RENAME => {
            let p = parts(ev);
            m.insert("path".into(), json!(p.first()));
            m.insert("to".into(), json!(p.get(1)));
        }
        kind::FILE_CREATE | kind::FILE_WRITE | kind::FILE_TRUNCATE | kind::FILE_UNLINK => {
            m.insert("path".into(), json!(parts(ev).into_iter().next().unwrap_or_default()));
        }
        kind::ESCAPE => {
            m.insert("refused".into(), json!(ev.arg == 1));
            m.insert("escaping_pid".into(), json!(ev.peer));
        }
        _ => {
            m.insert("raw_kind".into(), json!(ev.kind));
        }
    }
    (name, v)
}

/// One flow's cumulative counters.
pub fn flow(k: &FlowKey, v: &FlowValue, clock: &Clock) -> Value {
    json!({
        "proto": proto(u16::from(k.proto)),
        "addr": addr(k.family, &k.addr).map(|a| a.to_string()),
        "port": k.port,
        "direction": if k.direction == 0 { "out" } else { "in" },
        "bytes_out": v.bytes,
        "packets_out": v.packets,
        "bytes_in": v.bytes_in,
        "packets_in": v.packets_in,
        "refused": v.refused,
        "first_unix_us": clock.unix_us(v.first_ns),
        "last_unix_us": clock.unix_us(v.last_ns),
        "first_level": level_name(v.first_level),
        "max_level": level_name(v.max_level),
    })
}

/// One file's cumulative write counters.
pub fn file(k: &FileKey, v: &FileValue, clock: &Clock) -> Value {
    json!({
        "dev": k.dev,
        "ino": k.ino,
        "writes": v.writes,
        "bytes": v.bytes,
        "first_unix_us": clock.unix_us(v.first_ns),
        "last_unix_us": clock.unix_us(v.last_ns),
    })
}

/// The absolute path of the program an exec event ran, from
/// `/proc/PID/exe`, when that process still runs the file the kernel
/// recorded (same device and inode: not a later exec, not a recycled pid).
/// `path` is the name the workload gave the exec (relative, `/dev/fd/N`,
/// a symlink); this is where the file is (or `/memfd:NAME (deleted)`).
pub fn exe_path(pid: u32, dev: &str, ino: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let link = format!("/proc/{pid}/exe");
    let before = std::fs::metadata(&link).ok()?;
    let path = std::fs::read_link(&link).ok()?;
    // Checked on both sides of the read: an exec in between changes it.
    let after = std::fs::metadata(&link).ok()?;
    let same = |m: &std::fs::Metadata| {
        let d = m.dev();
        m.ino() == ino && format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d)) == dev
    };
    (same(&before) && same(&after)).then(|| path.display().to_string())
}
