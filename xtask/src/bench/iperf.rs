//! Loopback TCP throughput with iperf3, the client optionally inside a
//! cgroup (a target): received bits per second, and the same per
//! CPU-second of sender and receiver together (iperf3's own
//! `cpu_utilization_percent`, the less noisy of the two on a shared
//! machine).
use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use super::common::listening;
use crate::proc;

/// Runs `iperf3 -c 127.0.0.1 -t SECS -J` against `iperf3 -s -1`, the
/// client inside `cgroup` when given: (bits/s, bits per CPU-second).
pub(super) fn iperf(secs: u32, cgroup: Option<&Path>) -> Result<(f64, f64)> {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port")?.port().to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let result = (|| -> Result<(f64, f64)> {
        let start = Instant::now();
        while !listening(&port) {
            if let Some(status) = server.try_wait()? {
                bail!("iperf3 -s exited ({status}) before listening");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("iperf3 -s did not listen on port {port} within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let secs = secs.to_string();
        let client = ["iperf3", "-c", "127.0.0.1", "-p", &port, "-t", &secs, "-J"];
        let mut cmd = match cgroup {
            // The client joins the cgroup before it execs.
            Some(cg) => {
                let mut c = Command::new("sh");
                c.args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#]).arg(cg).args(client);
                c
            }
            None => {
                let mut c = Command::new(client[0]);
                c.args(&client[1..]);
                c
            }
        };
        let out = cmd.stdin(Stdio::null()).output().context("running iperf3 -c")?;
        let report: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J printed no JSON")?;
        if let Some(e) = report["error"].as_str() {
            bail!("iperf3: {e}");
        }
        if !out.status.success() {
            bail!("iperf3 -c failed ({})", out.status);
        }
        let end = &report["end"];
        let bps = end["sum_received"]["bits_per_second"].as_f64().ok_or_else(|| anyhow!("iperf3's report has no end.sum_received.bits_per_second"))?;
        let cpu = &end["cpu_utilization_percent"];
        let busy = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
            (Some(a), Some(b)) if a + b > 0.0 => (a + b) / 100.0,
            _ => {
                bail!("iperf3's report has no end.cpu_utilization_percent host_total/remote_total")
            }
        };
        Ok((bps, bps / busy))
    })();
    proc::terminate(&mut server, Duration::from_secs(5));
    result
}
