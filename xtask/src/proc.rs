//! Running child processes: quietly into a log file, streamed and captured at
//! once, or under a timeout that kills the whole process group.

use std::{
    fs::{self, File},
    io::{self, Read, Write},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
/// SIGTERM to a child, then SIGKILL after a grace period (shared with the
/// agent sandbox).
pub use killpath_sandbox::terminate;

/// The command line of `cmd`, shell-quoted, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![shell_quote(&cmd.get_program().to_string_lossy())];
    words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

/// Quotes `word` for a POSIX shell (unchanged when it needs no quoting).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` and returns its stdout when it exits 0; `None` when it cannot be
/// started or fails. For presence checks.
pub fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with stdout and stderr appended to `log`; on failure the error
/// carries the log's last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(file, "\n$ {}", describe(cmd))?;
    let err_file = file.try_clone()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); last lines of {}:\n{}",
            describe(cmd),
            log.display(),
            tail(log, 25)
        );
    }
    Ok(())
}

/// The last `n` lines of a text file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd`, streaming its stdout and stderr to ours while capturing both;
/// returns the exit status and everything it printed (stdout then stderr).
/// Its stdin is whatever the caller set (inherited by default). Going through
/// pipes also protects our own stdout: qemu reopens /dev/stdout, which
/// truncates it when it is a file.
pub fn run_tee(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    let out = child
        .stdout
        .take()
        .map(|s| thread::spawn(move || pump(s, io::stdout())));
    let err = child
        .stderr
        .take()
        .map(|s| thread::spawn(move || pump(s, io::stderr())));
    let status = child.wait()?;
    let mut text = String::new();
    for handle in [out, err].into_iter().flatten() {
        let bytes = handle
            .join()
            .map_err(|_| anyhow::anyhow!("output reader thread panicked"))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok((status, text))
}

/// Copies `src` to `dst` as it arrives and returns a copy of everything read.
fn pump(mut src: impl Read, mut dst: impl Write) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or_default();
                all.extend_from_slice(chunk);
                // A closed terminal must not stop the capture.
                let _ = dst.write_all(chunk).and_then(|()| dst.flush());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    all
}

/// Spawns `cmd` in a process group of its own with stdin closed and its
/// output appended to `log`, and waits at most `timeout`; on timeout the whole
/// group (e.g. vng and the qemu it started) is killed and `Ok(None)` returned.
/// So it is once `progress` (a file, and how long it may stay unchanged)
/// has not changed in size for that long: a guest that froze writes nothing
/// more, and waiting for the whole timeout then only delays the report.
pub fn run_until_stalled(
    cmd: &mut Command,
    log: &Path,
    timeout: Duration,
    progress: Option<(&Path, Duration)>,
) -> Result<Option<ExitStatus>> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err_file = file.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    wait_or_kill_group(&mut child, timeout, progress)
}

fn wait_or_kill_group(
    child: &mut Child,
    timeout: Duration,
    progress: Option<(&Path, Duration)>,
) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut last = progress.map(|(p, _)| (size(p), Instant::now()));
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let stalled = match (progress, last.as_mut()) {
            (Some((p, stall)), Some((seen, since))) => {
                let now = size(p);
                if now != *seen {
                    (*seen, *since) = (now, Instant::now());
                }
                since.elapsed() >= stall
            }
            _ => false,
        };
        if stalled || start.elapsed() >= timeout {
            kill_group(child);
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGKILL to the process group led by `child` (spawned with
/// `process_group(0)`, so its pid is the group id).
fn kill_group(child: &Child) {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // names the process group we created for this child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Seconds since `start`, formatted for progress lines ("0.4s", "83s").
pub fn elapsed(start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format!("{secs:.0}s")
    }
}
