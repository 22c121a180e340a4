//! The run's results: `bench/RESULTS.md`, `bench/results.json` and the
//! summary printed at the end.
use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use serde_json::{json, Value};

use super::{
    common::read_trimmed,
    section::{Ratio, Section},
};
use crate::proc;

pub(super) fn killpath_survivors(sections: &[Section]) -> u64 {
    let total = sections
        .iter()
        .flat_map(|s| s.series.iter())
        .filter(|s| s.id == "kp_survivors" || s.id.starts_with("kp_survivors_"))
        .flat_map(|s| s.samples.iter())
        .map(|v| *v as u64)
        .sum();
    total
}

pub(super) struct RunInfo {
    pub(super) date: String,
    pub(super) command: String,
    pub(super) quick: bool,
    pub(super) commit: String,
    pub(super) dirty: bool,
    pub(super) kernel: String,
    pub(super) nproc: usize,
    pub(super) cpu: String,
    pub(super) mem_kib: u64,
    pub(super) load_start: String,
    pub(super) load_end: String,
    pub(super) duration: Duration,
}

impl RunInfo {
    pub(super) fn collect(
        root: &Path,
        command: String,
        load_start: String,
        duration: Duration,
        quick: bool,
    ) -> Self {
        let git = |args: &[&str]| {
            proc::output_ok(Command::new("git").args(args).current_dir(root))
                .map(|s| s.trim().to_owned())
        };
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned());
        let mem_kib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            date: proc::output_ok(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
                .map_or_else(|| "unknown".into(), |d| d.trim().to_owned()),
            command,
            quick,
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            kernel: proc::output_ok(Command::new("uname").arg("-r"))
                .map_or_else(|| "unknown".into(), |k| k.trim().to_owned()),
            nproc: thread::available_parallelism().map_or(0, std::num::NonZero::get),
            cpu,
            mem_kib,
            load_start,
            load_end: read_trimmed("/proc/loadavg"),
            duration,
        }
    }

    pub(super) fn memory(&self) -> String {
        let gib = self.mem_kib as f64 / (1024.0 * 1024.0);
        format!("{gib:.1} GiB")
    }
}

pub(super) struct Results {
    pub(super) info: RunInfo,
    pub(super) sections: Vec<Section>,
    pub(super) survivors: u64,
}

pub(super) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl Results {
    pub(super) fn to_json(&self) -> Value {
        let i = &self.info;
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|s| {
                let series: Vec<Value> = s
                    .series
                    .iter()
                    .map(|x| {
                        let summary = x.summary().map(|m| json!({"n": m.n, "p50": round1(m.p50), "p99": round1(m.p99), "min": round1(m.min), "max": round1(m.max)}));
                        json!({
                            "id": x.id, "label": x.label, "unit": x.unit.name(), "summary": summary,
                            "samples": x.samples.iter().map(|v| round1(*v)).collect::<Vec<f64>>(),
                            "error": x.error,
                        })
                    })
                    .collect();
                json!({
                    "id": s.id, "title": s.title, "description": s.description, "error": s.error,
                    "notes": s.notes, "series": series, "ratios": s.ratios.iter().map(ratio_json).collect::<Vec<Value>>(),
                })
            })
            .collect();
        json!({
            "date": i.date,
            "command": i.command,
            "quick": i.quick,
            "git_commit": i.commit,
            "git_uncommitted_changes": i.dirty,
            "kernel": i.kernel,
            "machine": {"nproc": i.nproc, "cpu_model": i.cpu, "memory_total_kib": i.mem_kib, "memory": i.memory()},
            "load_average": {"start": i.load_start, "end": i.load_end},
            "duration_s": i.duration.as_secs(),
            "killpath_stop_survivors": self.survivors,
            "ok": self.survivors == 0 && self.sections.iter().all(|s| s.error.is_none()),
            "sections": sections,
        })
    }

    pub(super) fn markdown(&self) -> String {
        let i = &self.info;
        let mut md = String::new();
        let _ = writeln!(md, "# killpath benchmark results\n");
        let _ = writeln!(
            md,
            "## How to reproduce\n\nOn a Debian 12 machine, as root, from the repository root:\n\n```sh\n\
             cargo xtask bench          # 5 fork-bomb runs per variant, 100 command-to-effect repetitions, 5 overhead repetitions\n\
             cargo xtask bench --quick  # 2, 30 and 3\n```\n\n\
             It runs `cargo xtask setup`, builds `killpath` in release, starts an agent in a sandbox of its own \
             (socket, state dir, bpffs pin dir `/sys/fs/bpf/killpath-bench-<pid>`, cgroup parent \
             `<cgroup2 mount>/killpath-bench-<pid>`, all removed at the end), runs every benchmark below side by \
             side in one run — variants alternate their order across repetitions, so that noise from a busy \
             machine weighs on all of them and the ratios stay meaningful — and rewrites this file and \
             [`results.json`](results.json) (every raw sample). It talks to the agent over its socket, so the \
             killpath numbers contain no CLI process start. The harness is `xtask/src/bench/`. Every number \
             here comes from the run described below; percentiles are nearest-rank, so with few samples p99 is \
             the maximum.\n"
        );
        let _ = writeln!(md, "## This run\n");
        let _ = writeln!(md, "| | |\n| --- | --- |");
        let _ = writeln!(md, "| date | {} |", i.date);
        let _ = writeln!(md, "| command | `{}` |", i.command);
        let _ = writeln!(
            md,
            "| git commit | `{}`{} |",
            i.commit,
            if i.dirty {
                " (with uncommitted changes in the working tree)"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "| kernel | {} |", i.kernel);
        let _ = writeln!(
            md,
            "| machine | {} CPUs, {}, {} RAM |",
            i.nproc,
            i.cpu,
            i.memory()
        );
        let _ = writeln!(
            md,
            "| load average (start → end) | {} → {} |",
            i.load_start, i.load_end
        );
        let _ = writeln!(
            md,
            "| duration | {} s (after the build) |",
            i.duration.as_secs()
        );
        let _ = writeln!(
            md,
            "| killpath stop survivors, all runs | {} |\n",
            self.survivors
        );
        let _ = writeln!(md, "## Ratios\n\nMeasured side by side in this run.\n");
        let _ = writeln!(md, "| ratio | value | design goal |\n| --- | --- | --- |");
        for s in &self.sections {
            for r in &s.ratios {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    r.label,
                    ratio_text(r),
                    r.goal.unwrap_or("–")
                );
            }
        }
        let _ = writeln!(md);
        for s in &self.sections {
            let _ = writeln!(md, "## {}\n", s.title);
            if !s.description.is_empty() {
                let _ = writeln!(md, "{}\n", s.description);
            }
            if let Some(e) = &s.error {
                let _ = writeln!(md, "**This benchmark failed:** {e}\n");
            }
            if !s.series.is_empty() {
                let _ = writeln!(
                    md,
                    "| series | n | p50 | p99 | min | max |\n| --- | --- | --- | --- | --- | --- |"
                );
                for x in &s.series {
                    match (x.summary(), &x.error) {
                        (Some(m), _) => {
                            let u = x.unit;
                            let _ = writeln!(
                                md,
                                "| {} | {} | {} | {} | {} | {} |",
                                x.label,
                                m.n,
                                u.fmt(m.p50),
                                u.fmt(m.p99),
                                u.fmt(m.min),
                                u.fmt(m.max)
                            );
                        }
                        (None, Some(e)) => {
                            let _ = writeln!(
                                md,
                                "| {} | 0 | not measured: {} | | | |",
                                x.label,
                                e.replace('|', "\\|").replace('\n', " ")
                            );
                        }
                        (None, None) => {
                            let _ = writeln!(md, "| {} | 0 | | | | |", x.label);
                        }
                    }
                }
                let _ = writeln!(md);
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {}", n.replace('\n', " "));
            }
            if !s.notes.is_empty() {
                let _ = writeln!(md);
            }
        }
        md
    }

    /// The table printed at the end of the run.
    pub(super) fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<72} {:>5} {:>12} {:>12} {:>12} {:>12}",
            "series", "n", "p50", "p99", "min", "max"
        );
        for s in &self.sections {
            let _ = writeln!(
                out,
                "-- {}{}",
                s.title,
                if s.error.is_some() { " (FAILED)" } else { "" }
            );
            for x in &s.series {
                if let Some(m) = x.summary() {
                    let u = x.unit;
                    let _ = writeln!(
                        out,
                        "{:<72} {:>5} {:>12} {:>12} {:>12} {:>12}",
                        x.label,
                        m.n,
                        u.fmt(m.p50),
                        u.fmt(m.p99),
                        u.fmt(m.min),
                        u.fmt(m.max)
                    );
                } else if let Some(e) = &x.error {
                    let _ = writeln!(
                        out,
                        "{:<72} not measured: {}",
                        x.label,
                        e.lines().next().unwrap_or_default()
                    );
                }
            }
        }
        let _ = writeln!(out, "\n{:<72} {:>10} {:>8}", "ratio", "value", "goal");
        for s in &self.sections {
            for r in &s.ratios {
                let _ = writeln!(
                    out,
                    "{:<72} {:>10} {:>8}",
                    r.label,
                    ratio_text(r),
                    r.goal.unwrap_or("-")
                );
            }
        }
        let _ = writeln!(
            out,
            "\nkillpath stop survivors, all runs: {}",
            self.survivors
        );
        out
    }
}

pub(super) fn ratio_text(r: &Ratio) -> String {
    match (r.value, &r.why_missing) {
        (Some(v), _) => format!("{v:.2}×"),
        (None, Some(why)) => format!(
            "not measured ({})",
            why.lines().next().unwrap_or_default().replace('|', "\\|")
        ),
        (None, None) => "not measured".into(),
    }
}

pub(super) fn ratio_json(r: &Ratio) -> Value {
    json!({"id": r.id, "label": r.label, "value": r.value.map(|v| (v * 1000.0).round() / 1000.0), "design_goal": r.goal, "not_measured": r.why_missing})
}
