//! The built-in canary workload: a small process tree that behaves like an
//! autonomous job, so every level has something real to act on and a
//! drill can check that nothing was lost.
//!
//! - `workers` record writers: each appends numbered, checksummed records
//!   to `records-N.log`, calls the local service (`--service`) every 10th
//!   record, execs a helper (`true`) every 50th, and checkpoints every
//!   [`CHECKPOINT_EVERY`] records: fsync the log, then write
//!   `checkpoint-N.json` (temp file, fsync, rename, fsync the directory).
//! - one ticker: read(2) of 0 bytes from /dev/zero, [`TICK_BATCH`] per
//!   10 ms, so the target makes syscalls at a known rate (~2,000/s) that a
//!   throttle check can see drop.
//!
//! On restart each worker resumes from its checkpoint: the log is cut back
//! to the checkpointed length (records after it were never committed) and
//! numbering continues. `canary --check` verifies the data: the log prefix
//! the checkpoint covers is byte-identical (SHA-256), holds exactly records
//! 1..=n once each with valid checksums, and the tail continues the
//! sequence without duplicates.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Records between two checkpoints.
pub const CHECKPOINT_EVERY: u64 = 20;
/// Reads per 10 ms tick of the ticker.
pub const TICK_BATCH: u32 = 20;

/// Runs the canary parent: spawns the workers and the ticker (this binary,
/// `canary --worker N` / `--ticker`) and waits for them. A worker that
/// exits with an error (a corrupted checkpoint) makes the parent exit
/// with that error.
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
        children.push(cmd.spawn().map_err(Error::io("spawning a canary worker"))?);
    }
    let mut ticker = Command::new(&exe);
    ticker.args(["canary", "--ticker", "--dir"]).arg(dir);
    children.push(ticker.spawn().map_err(Error::io("spawning the canary ticker"))?);
    // A worker that fails (a corrupted checkpoint) ends the canary: the
    // others, the ticker included, are killed rather than left running.
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                if !st.success() {
                    for other in children.iter_mut() {
                        let _ = other.kill();
                        let _ = other.wait();
                    }
                    return Err(Error::InvalidRequest(format!("a canary worker failed ({st}); see its stderr")));
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The ticker: a known syscall rate, nothing else.
pub fn ticker() -> Result<()> {
    let mut zero = File::open("/dev/zero").map_err(Error::io("opening /dev/zero"))?;
    let mut buf = [0u8; 0];
    loop {
        for _ in 0..TICK_BATCH {
            let _ = zero.read(&mut buf);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A worker's checkpoint: how many records are committed and what the
/// log looked like at that point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub worker: u32,
    pub records: u64,
    pub log_bytes: u64,
    pub log_sha256: String,
}

fn log_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("records-{worker}.log"))
}

fn checkpoint_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("checkpoint-{worker}.json"))
}

fn progress_path(dir: &Path, worker: u32) -> PathBuf {
    dir.join(format!("progress-{worker}"))
}

/// The record line for (worker, n): `W N CRC`, CRC the first 8 hex digits
/// of SHA-256("W N"), so a flipped byte is caught.
fn record(worker: u32, n: u64) -> String {
    let body = format!("{worker} {n}");
    let crc = hex::encode(&Sha256::digest(body.as_bytes())[..4]);
    format!("{body} {crc}\n")
}

fn sha256_prefix(path: &Path, len: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads a checkpoint; a torn or edited one is an error naming the file.
pub fn read_checkpoint(dir: &Path, worker: u32) -> Result<Option<Checkpoint>> {
    let p = checkpoint_path(dir, worker);
    match fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::InvalidRequest(format!("{} is torn or corrupt: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()))(e)),
    }
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

/// One worker: resumes from its checkpoint, then writes a record every
/// 10 ms forever. Keeps `progress-N` (records written) and, with a
/// service, `net-N` (`ok=.. err=.. last=..`) and `exec-N` up to date.
pub fn worker(dir: &Path, worker: u32, service: Option<SocketAddr>) -> Result<()> {
    let log = log_path(dir, worker);
    let mut out = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&log).map_err(Error::io(format!("opening {}", log.display())))?;
    let start = match read_checkpoint(dir, worker)? {
        Some(cp) => {
            let have = out.metadata().map_err(Error::io("stat of the log"))?.len();
            if have < cp.log_bytes {
                return Err(Error::InvalidRequest(format!("{} is shorter than its checkpoint: committed records are lost", log.display())));
            }
            if sha256_prefix(&log, cp.log_bytes).map_err(Error::io("hashing the log"))? != cp.log_sha256 {
                return Err(Error::InvalidRequest(format!("{}: committed records changed since the checkpoint", log.display())));
            }
            // Records after the checkpoint were never committed: redo them.
            out.set_len(cp.log_bytes).map_err(Error::io("cutting the log back to its checkpoint"))?;
            cp.records + 1
        }
        None => {
            out.set_len(0).map_err(Error::io("truncating the log"))?;
            1
        }
    };
    out.seek(SeekFrom::End(0)).map_err(Error::io("seeking the log"))?;
    let progress = progress_path(dir, worker);
    let net = dir.join(format!("net-{worker}"));
    let (mut ok, mut err, mut execs, mut exec_err) = (0u64, 0u64, 0u64, 0u64);
    for n in start.. {
        out.write_all(record(worker, n).as_bytes()).map_err(Error::io("writing a record"))?;
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
            let _ = fs::write(&net, format!("ok={ok} err={err} last={last}\n"));
        }
        if n % 50 == 0 {
            match Command::new("true").stdin(Stdio::null()).status() {
                Ok(st) if st.success() => execs += 1,
                _ => exec_err += 1,
            }
            let _ = fs::write(dir.join(format!("exec-{worker}")), format!("ok={execs} err={exec_err}\n"));
        }
        if n % CHECKPOINT_EVERY == 0 {
            // A job that may not write new files any more (fs.write
            // revoked) keeps working and retries at the next checkpoint:
            // it degrades, it does not die. Its committed data stay valid.
            if let Err(e) = checkpoint(dir, worker, &log, &mut out, n) {
                tracing::warn!(worker, "checkpoint at record {n} failed, retrying at the next one: {e}");
            }
        }
        let _ = fs::write(&progress, n.to_string());
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// fsyncs the log, then replaces the checkpoint durably.
fn checkpoint(dir: &Path, worker: u32, log: &Path, out: &mut File, n: u64) -> Result<()> {
    out.sync_data().map_err(Error::io("fsync of the log"))?;
    let len = out.stream_position().map_err(Error::io("log position"))?;
    let cp = Checkpoint { worker, records: n, log_bytes: len, log_sha256: sha256_prefix(log, len).map_err(Error::io("hashing the log"))? };
    let bytes = serde_json::to_vec(&cp).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    crate::kernel::durable::write(&checkpoint_path(dir, worker), &bytes)
}

/// Records written so far by `worker`, from its progress file.
pub fn progress(dir: &Path, worker: u32) -> Option<u64> {
    fs::read_to_string(progress_path(dir, worker)).ok()?.trim().parse().ok()
}

/// Result of `canary --check` for one worker.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerCheck {
    pub worker: u32,
    /// Records the checkpoint commits.
    pub committed: u64,
    /// Records found after the checkpoint (uncommitted, redone on resume).
    pub tail_records: u64,
    /// The log ends in a partial line (allowed after the checkpoint).
    pub torn_tail: bool,
    pub problems: Vec<String>,
}

/// Result of `canary --check`.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub workers: Vec<WorkerCheck>,
}

/// Checks every worker's data in `dir`.
pub fn check(dir: &Path) -> Result<CheckReport> {
    let mut ids: Vec<u32> = fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("records-").and_then(|r| r.strip_suffix(".log")).and_then(|n| n.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(Error::InvalidRequest(format!("no canary records in {}", dir.display())));
    }
    let workers: Vec<WorkerCheck> = ids.into_iter().map(|w| check_worker(dir, w)).collect();
    Ok(CheckReport { ok: workers.iter().all(|w| w.problems.is_empty()), workers })
}

fn check_worker(dir: &Path, worker: u32) -> WorkerCheck {
    let mut c = WorkerCheck { worker, committed: 0, tail_records: 0, torn_tail: false, problems: Vec::new() };
    let cp = match read_checkpoint(dir, worker) {
        Ok(Some(cp)) => cp,
        Ok(None) => Checkpoint { worker, records: 0, log_bytes: 0, log_sha256: hex::encode(Sha256::digest(b"")) },
        Err(e) => {
            c.problems.push(e.to_string());
            return c;
        }
    };
    c.committed = cp.records;
    let log = log_path(dir, worker);
    let bytes = match fs::read(&log) {
        Ok(b) => b,
        Err(e) => {
            c.problems.push(format!("{}: {e}", log.display()));
            return c;
        }
    };
    if (bytes.len() as u64) < cp.log_bytes {
        c.problems.push(format!("log has {} bytes, the checkpoint committed {}: committed records lost", bytes.len(), cp.log_bytes));
        return c;
    }
    let (prefix, tail) = bytes.split_at(cp.log_bytes as usize);
    if hex::encode(Sha256::digest(prefix)) != cp.log_sha256 {
        c.problems.push("the committed part of the log changed since the checkpoint (SHA-256 differs)".into());
    }
    let mut expect = 1u64;
    for (i, line) in String::from_utf8_lossy(prefix).lines().enumerate() {
        match parse_record(worker, line) {
            Some(n) if n == expect => expect += 1,
            Some(n) if n < expect => c.problems.push(format!("line {}: record {n} duplicated", i + 1)),
            Some(n) => {
                c.problems.push(format!("line {}: records {expect}..{} missing", i + 1, n - 1));
                expect = n + 1;
            }
            None => c.problems.push(format!("line {}: torn or corrupt record {line:?}", i + 1)),
        }
    }
    if expect != cp.records + 1 {
        c.problems.push(format!("the checkpoint commits {} records, the log holds {}", cp.records, expect - 1));
    }
    let tail = String::from_utf8_lossy(tail);
    c.torn_tail = !tail.is_empty() && !tail.ends_with('\n');
    for line in tail.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        match parse_record(worker, line.trim_end()) {
            Some(n) if n == expect => {
                expect += 1;
                c.tail_records += 1;
            }
            Some(n) if n < expect => c.problems.push(format!("record {n} duplicated after the checkpoint")),
            _ => c.problems.push(format!("corrupt record after the checkpoint: {:?}", line.trim_end())),
        }
    }
    c
}

fn parse_record(worker: u32, line: &str) -> Option<u64> {
    let mut f = line.split(' ');
    let (w, n, crc) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || w.parse::<u32>().ok()? != worker {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    (record(worker, n).trim_end().rsplit(' ').next()? == crc).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(dir: &Path, w: u32, upto: u64, checkpoint_at: u64) {
        let mut s = String::new();
        let mut cp_len = 0;
        for n in 1..=upto {
            s.push_str(&record(w, n));
            if n == checkpoint_at {
                cp_len = s.len();
            }
        }
        fs::write(log_path(dir, w), &s).unwrap();
        let cp = Checkpoint { worker: w, records: checkpoint_at, log_bytes: cp_len as u64, log_sha256: hex::encode(Sha256::digest(&s.as_bytes()[..cp_len])) };
        fs::write(checkpoint_path(dir, w), serde_json::to_vec(&cp).unwrap()).unwrap();
    }

    #[test]
    fn a_clean_log_checks_ok() {
        let d = tempfile::tempdir().unwrap();
        write_log(d.path(), 0, 45, 40);
        let r = check(d.path()).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.workers[0].committed, r.workers[0].tail_records), (40, 5));
    }

    #[test]
    fn corruption_is_caught() {
        let d = tempfile::tempdir().unwrap();
        write_log(d.path(), 0, 45, 40);
        // A flipped digit in a committed record.
        let p = log_path(d.path(), 0);
        let s = fs::read_to_string(&p).unwrap().replacen("0 7 ", "0 8 ", 1);
        fs::write(&p, s).unwrap();
        let r = check(d.path()).unwrap();
        assert!(!r.ok);
        assert!(r.workers[0].problems.iter().any(|p| p.contains("SHA-256")), "{r:?}");
        // A torn checkpoint.
        fs::write(checkpoint_path(d.path(), 0), b"{\"worker\":0,\"rec").unwrap();
        let r = check(d.path()).unwrap();
        assert!(r.workers[0].problems.iter().any(|p| p.contains("torn or corrupt")), "{r:?}");
        // A duplicated record after the checkpoint.
        write_log(d.path(), 1, 42, 40);
        let mut f = OpenOptions::new().append(true).open(log_path(d.path(), 1)).unwrap();
        f.write_all(record(1, 41).as_bytes()).unwrap();
        let r = check(d.path()).unwrap();
        assert!(r.workers[1].problems.iter().any(|p| p.contains("duplicated")), "{r:?}");
    }

    #[test]
    fn a_torn_tail_is_allowed() {
        let d = tempfile::tempdir().unwrap();
        write_log(d.path(), 0, 41, 40);
        let mut f = OpenOptions::new().append(true).open(log_path(d.path(), 0)).unwrap();
        f.write_all(b"0 42 ab").unwrap();
        let r = check(d.path()).unwrap();
        assert!(r.ok, "{r:?}");
        assert!(r.workers[0].torn_tail);
    }
}
