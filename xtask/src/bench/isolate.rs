//! Benchmark: isolate (level 3), command to effect, next to an nftables
//! drop rule and the process spawn floor.
use std::{
    fmt::Write as _,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{
    common::{check_interrupted, micros, num, rotate, spawn_in_cgroup, wait_comm},
    sandbox::Sandbox,
    section::{fmt_us, Section, Unit},
    Params,
};
use crate::proc;

/// nft's table for the isolation alternative.
pub(super) const NFT_TABLE: &str = "kpbench";

#[derive(Clone, Copy)]
enum IsoVariant {
    Killpath,
    Nft,
    Spawn,
}

pub(super) fn isolate(sb: &mut Sandbox, p: &Params, s: &mut Section) -> Result<()> {
    s.title = "Isolate: command to effect".into();
    s.description = format!(
        "A target running `sleep 1000`, {} repetitions, the order of the variants rotating. **killpath**: \
         `isolate` over the socket (client wall time, and the agent's `time_to_effect_us` — receipt, intent \
         journaled and fsynced, to the map update — and `map_update_us`), then `restore --to normal` (timed \
         too, not part of the ratio). **nftables**: the administrator's alternative, `nft add rule inet \
         {NFT_TABLE} out socket cgroupv2 level L \"PATH\" drop` on an output chain created once, timed as the \
         wall time of the `nft` command (it is a CLI: its process start is in the number), the rule flushed \
         after each repetition. **Process spawn floor**: the wall time of running `true`, for scale. \
         killpath's client wall time contains its journal: the intent is fsynced before the map update and \
         the result before the answer, so it follows the disk's fsync latency (other work on the machine \
         moves it a lot); `time_to_effect_us` ends at the map update. nftables cuts network traffic only; \
         killpath's isolate also refuses connects and sends with EPERM and, with BPF LSM, unix and packet \
         sockets.",
        p.effect_reps
    );
    let name = "iso";
    sb.call("create", json!({"name": name}))?;
    let cg = sb.parent().join(name);
    let mut target = spawn_in_cgroup(&cg, &["sleep", "1000"])?;
    let result = isolate_inner(sb, p, s, name, &cg, &target);
    proc::terminate(&mut target, Duration::from_secs(1));
    let released = sb.call("release", json!({"name": name}));
    result?;
    released?;
    s.ratio(
        "isolate_wall_over_nft",
        "killpath isolate client wall / nft add rule wall (p50)",
        "kp_wall",
        "nft_add",
        0.5,
        None,
    );
    s.ratio(
        "isolate_wall_over_nft_p99",
        "killpath isolate client wall / nft add rule wall (p99)",
        "kp_wall",
        "nft_add",
        0.99,
        None,
    );
    s.ratio(
        "isolate_effect_over_nft",
        "killpath isolate time_to_effect (agent) / nft add rule wall (p50)",
        "kp_effect",
        "nft_add",
        0.5,
        None,
    );
    Ok(())
}

fn isolate_inner(
    sb: &mut Sandbox,
    p: &Params,
    s: &mut Section,
    name: &str,
    cg: &Path,
    target: &Child,
) -> Result<()> {
    wait_comm(target.id(), "sleep")?;
    let mut nft = match Nft::setup(sb, cg) {
        Ok(n) => Some(n),
        Err(e) => {
            s.notes
                .push(format!("nftables alternative not measured: {e:#}"));
            s.series_error(
                "nft_add",
                "nft add rule (socket cgroupv2 … drop): wall",
                Unit::Micros,
                format!("{e:#}"),
            );
            None
        }
    };
    if let Some(n) = &nft {
        s.notes.push(n.note.clone());
    }
    let variants = [IsoVariant::Killpath, IsoVariant::Nft, IsoVariant::Spawn];
    for rep in 0..p.effect_reps {
        for v in rotate(&variants, rep) {
            check_interrupted()?;
            match v {
                IsoVariant::Killpath => {
                    let (wall, r) = sb.call("isolate", json!({"name": name, "reason": "bench"}))?;
                    s.push(
                        "kp_wall",
                        "killpath isolate: client wall time",
                        Unit::Micros,
                        micros(wall),
                    );
                    s.push(
                        "kp_effect",
                        "killpath isolate: time_to_effect_us (agent)",
                        Unit::Micros,
                        num(&r, "time_to_effect_us")?,
                    );
                    s.push(
                        "kp_map",
                        "killpath isolate: map_update_us (agent)",
                        Unit::Micros,
                        num(&r, "map_update_us")?,
                    );
                    let (wall, r) = sb.call(
                        "restore",
                        json!({"name": name, "to": "normal", "reason": "bench"}),
                    )?;
                    s.push(
                        "kp_restore_wall",
                        "killpath restore --to normal: client wall time",
                        Unit::Micros,
                        micros(wall),
                    );
                    s.push(
                        "kp_restore_effect",
                        "killpath restore --to normal: time_to_effect_us (agent)",
                        Unit::Micros,
                        num(&r, "time_to_effect_us")?,
                    );
                }
                IsoVariant::Nft => {
                    if let Some(n) = &nft {
                        match n.add_rule_timed() {
                            Ok(dt) => s.push(
                                "nft_add",
                                "nft add rule (socket cgroupv2 … drop): wall",
                                Unit::Micros,
                                micros(dt),
                            ),
                            Err(e) => {
                                s.notes.push(format!("nft add rule failed at repetition {rep}, nftables samples stop there: {e:#}"));
                                nft = None;
                            }
                        }
                        if let Some(n) = &nft {
                            n.flush()?;
                        }
                    }
                }
                IsoVariant::Spawn => {
                    let t0 = Instant::now();
                    let status = Command::new("true").status().context("running `true`")?;
                    let dt = t0.elapsed();
                    if !status.success() {
                        bail!("`true` exited with {status}");
                    }
                    s.push(
                        "spawn_true",
                        "process spawn floor: `true` wall",
                        Unit::Micros,
                        micros(dt),
                    );
                }
            }
        }
    }
    // Effect checks: a TCP connect from inside the target to a listener
    // outside, with killpath's isolate, with the nft rule, and with neither.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a local listener")?;
    let port = listener.local_addr()?.port();
    let open = connect_probe(cg, port)?;
    sb.call(
        "isolate",
        json!({"name": name, "reason": "bench effect check"}),
    )?;
    let under_kp = connect_probe(cg, port);
    sb.call(
        "restore",
        json!({"name": name, "to": "normal", "reason": "bench"}),
    )?;
    let under_kp = under_kp?;
    let mut check = format!(
        "Effect check, a TCP connect from inside the target to 127.0.0.1:{port}: with nothing applied, {}; under killpath isolate, {}",
        open.describe(),
        under_kp.describe()
    );
    if let (Some(p50), Some(p99)) = (s.stat("kp_effect", 0.5), s.stat("kp_effect", 0.99)) {
        s.notes.push(format!(
            "Design goal: time to effect under 1 ms at the agent, p50 and p99. Measured time_to_effect_us: p50 {}, p99 {}.",
            fmt_us(p50),
            fmt_us(p99)
        ));
    }
    if let Some(n) = &nft {
        n.add_rule_timed()?;
        let under_nft = connect_probe(cg, port);
        n.flush()?;
        let _ = write!(check, "; under the nft rule, {}", under_nft?.describe());
    }
    check.push('.');
    s.notes.push(check);
    Ok(())
}

/// The outcome of one connect attempt from inside a cgroup.
struct Probe {
    code: Option<i32>,
    took: Duration,
}

impl Probe {
    fn describe(&self) -> String {
        let took = fmt_us(micros(self.took));
        match self.code {
            Some(0) => format!("it connected ({took})"),
            Some(124) => "it hung until the 2 s timeout (packets dropped)".into(),
            Some(c) => format!("it failed at once (exit {c}, {took})"),
            None => format!("the probe was killed by a signal ({took})"),
        }
    }
}

/// Runs `bash -c 'exec 3<>/dev/tcp/127.0.0.1/PORT'` inside `cg` (2 s timeout).
fn connect_probe(cg: &Path, port: u16) -> Result<Probe> {
    let t0 = Instant::now();
    let status = Command::new("sh")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null"#])
        .arg(cg)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .status()
        .context("running the connect probe")?;
    Ok(Probe {
        code: status.code(),
        took: t0.elapsed(),
    })
}

/// The nftables table and output chain of the isolation alternative.
struct Nft {
    rule: Vec<String>,
    note: String,
}

impl Nft {
    fn setup(sb: &mut Sandbox, cg: &Path) -> Result<Self> {
        which::which("nft").context("`nft` is not installed (package nftables)")?;
        sb.nft_table = true;
        nft(&["add", "table", "inet", NFT_TABLE])?;
        nft(&[
            "add", "chain", "inet", NFT_TABLE, "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ])?;
        nft(&["flush", "chain", "inet", NFT_TABLE, "out"])?;
        let rel = cg
            .strip_prefix(sb.mount())
            .context("the target's cgroup is not below the cgroup2 mount")?;
        let level = rel.components().count().to_string();
        let rule = |path: &str| -> Vec<String> {
            [
                "add",
                "rule",
                "inet",
                NFT_TABLE,
                "out",
                "socket",
                "cgroupv2",
                "level",
                &level,
                &format!("\"{path}\""),
                "drop",
            ]
            .iter()
            .map(|w| (*w).to_owned())
            .collect()
        };
        // nft resolves the path below /sys/fs/cgroup whatever the cgroup2
        // mount is; on a hybrid host (cgroup2 at /sys/fs/cgroup/unified)
        // the path relative to the mount is not found, so try both.
        let mut spellings = vec![rel.to_string_lossy().into_owned()];
        if let Ok(alt) = cg.strip_prefix("/sys/fs/cgroup") {
            let alt = alt.to_string_lossy().into_owned();
            if !spellings.contains(&alt) {
                spellings.push(alt);
            }
        }
        let mut errors = Vec::new();
        for path in &spellings {
            let words = rule(path);
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            match nft(&args) {
                Ok(()) => {
                    nft(&["flush", "chain", "inet", NFT_TABLE, "out"])?;
                    let mut note = format!(
                        "nft rule: `nft {}` (nftables {}).",
                        words.join(" "),
                        nft_version()
                    );
                    if let Some(first) = errors.first() {
                        let _ = write!(
                            note,
                            " nft looks cgroupv2 paths up below /sys/fs/cgroup whatever the cgroup2 mount is; with cgroup2 at {} the path relative to the mount is refused ({first}), so the rule names the same cgroup by its path below /sys/fs/cgroup, and `level` is its depth in the cgroup2 tree.",
                            sb.mount().display()
                        );
                    }
                    return Ok(Self { rule: words, note });
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("nft refused the rule: {}", errors.join("; "))
    }

    fn add_rule_timed(&self) -> Result<Duration> {
        let args: Vec<&str> = self.rule.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        nft(&args)?;
        Ok(t0.elapsed())
    }

    fn flush(&self) -> Result<()> {
        nft(&["flush", "chain", "inet", NFT_TABLE, "out"])
    }
}

pub(super) fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running nft")?;
    if !out.status.success() {
        bail!(
            "`nft {}` failed ({}): {}",
            args.join(" "),
            out.status,
            // nft's first line is the message; the next ones repeat the command.
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(())
}

fn nft_version() -> String {
    proc::output_ok(Command::new("nft").arg("--version"))
        .map(|v| v.trim().trim_start_matches("nftables ").to_owned())
        .unwrap_or_else(|| "version unknown".into())
}
