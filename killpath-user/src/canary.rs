//! The built-in canary workload: a small process tree that behaves like an
//! autonomous job — it keeps doing work and writes progress records — so
//! that every level has something real to act on.
use std::{
    fs::{self, OpenOptions},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::Duration,
};

use crate::error::{Error, Result};

/// Runs the canary parent: spawns `workers` worker processes (this binary,
/// `canary --worker N`) and waits for them. It never exits on its own.
pub fn run(dir: &Path, workers: u32, service: Option<SocketAddr>) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    fs::write(dir.join("canary.pid"), std::process::id().to_string()).map_err(Error::io("writing canary.pid"))?;
    let exe = std::env::current_exe().map_err(Error::io("finding own executable"))?;
    let mut children: Vec<Child> = Vec::new();
    for n in 0..workers {
        let mut cmd = Command::new(&exe);
        cmd.args(["canary", "--worker", &n.to_string(), "--dir"]).arg(dir);
        if let Some(s) = service {
            cmd.arg("--service").arg(s.to_string());
        }
        let child = cmd
            .spawn()
            .map_err(Error::io("spawning a canary worker"))?;
        children.push(child);
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok(())
}

fn progress_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("progress-{worker}"))
}

/// One HTTP GET to the local service; the status line on success.
fn call_service(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: canary\r\n\r\n")?;
    // Read the whole response: closing with unread data makes the
    // server see a reset.
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned())
}

/// One worker: appends a numbered record every 10 ms and rewrites its
/// progress file (temp + rename) so a reader never sees a torn value.
/// With a service, it also calls it every 10th record and keeps
/// `net-N` up to date: `ok=.. err=.. last=..`.
pub fn worker(dir: &Path, worker: u32, service: Option<SocketAddr>) -> Result<()> {
    let log = dir.join(format!("records-{worker}.log"));
    let mut out = OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io(format!("opening {}", log.display())))?;
    let progress = progress_path(dir, worker);
    let tmp = progress.with_extension("tmp");
    let net = dir.join(format!("net-{worker}"));
    let (mut ok, mut err) = (0u64, 0u64);
    for n in 1u64.. {
        writeln!(out, "{worker} {n}").map_err(Error::io("writing a record"))?;
        if let (Some(addr), 0) = (service, n % 10) {
            let last = match call_service(addr) {
                Ok(status) => {
                    ok += 1;
                    status
                }
                Err(e) => {
                    err += 1;
                    e.to_string()
                }
            };
            fs::write(&net, format!("ok={ok} err={err} last={last}\n")).map_err(Error::io("writing net status"))?;
        }
        fs::write(&tmp, n.to_string()).map_err(Error::io("writing progress"))?;
        fs::rename(&tmp, &progress).map_err(Error::io("renaming progress"))?;
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Records written so far by `worker`, from its progress file.
pub fn progress(dir: &Path, worker: u32) -> Option<u64> {
    fs::read_to_string(progress_path(dir, worker)).ok()?.trim().parse().ok()
}
