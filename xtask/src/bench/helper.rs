//! `cargo xtask bench-helper`: the child processes the benchmarks run (a
//! re-run of this binary): a subreaper for the fork bombs, a getppid() loop.
use std::{
    io::Write as _,
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};

/// Helpers the harness runs as child processes (a re-run of this binary).
#[derive(clap::Args)]
pub struct HelperArgs {
    #[command(subcommand)]
    op: Helper,
}

#[derive(clap::Subcommand)]
enum Helper {
    /// Become a child subreaper, run COMMAND, print its pid, reap every
    /// descendant, and exit once none is left.
    Reap {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Call getppid() N times; print the nanoseconds per call.
    Syscalls { n: u64 },
    /// pwrite() one byte at offset 0 of FILE N times (created, then
    /// removed); print the nanoseconds per call like `syscalls`.
    Writes { n: u64, file: std::path::PathBuf },
    /// Send to ADDR as fast as possible, forever: `tcp` (writes of 64 KiB
    /// on one connection) or `udp` (datagrams of UDP_PAYLOAD bytes). A
    /// refused send is retried, as a workload fighting a cut would.
    Blast { proto: String, addr: String },
    /// Inside the VM: the agent KP in a sandbox, the overhead states
    /// visited REPS times with CALLS getppid() calls a sample, the samples
    /// written to OUT as JSON (the `overhead_vm` benchmark).
    VmOverhead {
        #[arg(long)]
        kp: std::path::PathBuf,
        #[arg(long)]
        reps: usize,
        #[arg(long)]
        calls: u64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Payload of each datagram `blast udp` sends, and its size as the
/// kernel's cgroup skb egress hook counts it (IPv4 and UDP headers).
pub(super) const UDP_PAYLOAD: usize = 1400;
pub(super) const UDP_WIRE: usize = UDP_PAYLOAD + 28;

pub fn helper(args: &HelperArgs) -> Result<ExitCode> {
    match &args.op {
        Helper::Reap { command } => reap(command),
        Helper::Blast { proto, addr } => blast(proto, addr),
        Helper::Writes { n, file } => super::trail_cost::write_loop(*n, file),
        Helper::VmOverhead { kp, reps, calls, out } => {
            super::overhead_vm::guest(kp, *reps, *calls, out).map(|()| ExitCode::SUCCESS)
        }
        Helper::Syscalls { n } => {
            let cpu0 = thread_cpu_ns()?;
            let t0 = Instant::now();
            for _ in 0..*n {
                // SAFETY: getppid(2) has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
            let wall = t0.elapsed().as_nanos() as f64;
            let cpu = thread_cpu_ns()? - cpu0;
            let calls = (*n).max(1) as f64;
            println!("{:.3} {:.3}", wall / calls, cpu / calls);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// CPU time of the calling thread, in ns.
pub(super) fn thread_cpu_ns() -> Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) with a valid timespec pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        bail!(
            "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64)
}

fn reap(command: &[String]) -> Result<ExitCode> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    // Outlive a Ctrl-C of the harness: its handler kills the bomb with
    // cgroup.kill, and only then must this process reap it and exit
    // (dying first would hand the dead bomb's tasks to PID 1, which may
    // never reap them).
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN has no memory-safety preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("reap: no command"))?;
    let child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", child.id())?;
    out.flush()?;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: every descendant is gone.
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn blast(proto: &str, addr: &str) -> Result<ExitCode> {
    match proto {
        "udp" => {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("binding the sender")?;
            let mut buf = [0x5au8; UDP_PAYLOAD];
            // Each datagram carries its number: the receiver can tell
            // how many got out even when its buffer drops some.
            let mut seq = 0u64;
            loop {
                buf[..8].copy_from_slice(&seq.to_le_bytes());
                // Refused (EPERM once isolated): try again, forever.
                if sock.send_to(&buf, addr).is_ok() {
                    seq += 1;
                }
            }
        }
        "tcp" => {
            let mut conn = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connecting to {addr}"))?;
            let buf = vec![0x5au8; 1 << 16];
            loop {
                if conn.write_all(&buf).is_err() {
                    // The connection is dead (reset): nothing left to send on.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
        other => bail!("blast: unknown protocol {other:?} (tcp or udp)"),
    }
}
