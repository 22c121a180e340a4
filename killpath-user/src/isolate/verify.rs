//! `isolate --verify` / `verify NAME`: prove from inside the target that
//! every channel is cut. The agent opens listeners outside the target
//! (TCP v4/v6 and UDP on loopback, a DNS responder, a unix socket), starts
//! `killpath verify-probe` inside the target's cgroup, and reports each
//! channel as `cut` or `OPEN` with the error the probe saw.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::channel::{Channel, ChannelStatus, Check};
use crate::error::{Error, Result};

/// One channel's verdict.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelResult {
    pub channel: String,
    /// "cut", "OPEN" or "skipped".
    pub result: String,
    pub detail: String,
}

impl ChannelResult {
    fn new(channel: &str, open: bool, detail: impl Into<String>) -> Self {
        Self { channel: channel.into(), result: if open { "OPEN" } else { "cut" }.into(), detail: detail.into() }
    }
}

/// Listeners outside the target that the probes try to reach.
pub struct Listeners {
    tcp4: TcpListener,
    tcp6: Option<TcpListener>,
    udp: UdpSocket,
    dns_addr: SocketAddr,
    dns_stop: Arc<AtomicBool>,
    unix: UnixListener,
    unix_path: PathBuf,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.dns_stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.unix_path);
    }
}

impl Listeners {
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |what: &str| Error::io(format!("verify: {what}"));
        let tcp4 = TcpListener::bind("127.0.0.1:0").map_err(io("tcp4 listener"))?;
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(io("udp listener"))?;
        udp.set_nonblocking(true).map_err(io("udp listener"))?;
        let dns = UdpSocket::bind("127.0.0.1:0").map_err(io("dns responder"))?;
        dns.set_read_timeout(Some(Duration::from_millis(100))).map_err(io("dns responder"))?;
        let dns_addr = dns.local_addr().map_err(io("dns responder"))?;
        let dns_stop = Arc::new(AtomicBool::new(false));
        let stop = dns_stop.clone();
        // Answers every query with an empty NOERROR response.
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = dns.recv_from(&mut buf) {
                    if n >= 12 {
                        buf[2] |= 0x80;
                        buf[3] = 0;
                        let _ = dns.send_to(&buf[..n], from);
                    }
                }
            }
        });
        let unix_path = dir.join(format!("verify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&unix_path);
        let unix = UnixListener::bind(&unix_path).map_err(io("unix listener"))?;
        for l in [Some(&tcp4), tcp6.as_ref()].into_iter().flatten() {
            l.set_nonblocking(true).map_err(io("listener"))?;
        }
        unix.set_nonblocking(true).map_err(io("unix listener"))?;
        Ok(Self { tcp4, tcp6, udp, dns_addr, dns_stop, unix, unix_path })
    }

    fn addr4(&self) -> Result<SocketAddr> {
        self.tcp4.local_addr().map_err(Error::io("verify: tcp4 address"))
    }

    /// Whether the UDP listener got the probe's datagram.
    fn udp_received(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 64];
        loop {
            if matches!(self.udp.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"kp-udp") {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Drains pending connections so a later probe is judged on its own.
    fn drain(&self) {
        while self.tcp4.accept().is_ok() {}
        if let Some(l) = &self.tcp6 {
            while l.accept().is_ok() {}
        }
        while self.unix.accept().is_ok() {}
        let mut buf = [0u8; 64];
        while self.udp.recv_from(&mut buf).is_ok() {}
    }
}

/// Starts `killpath verify-probe ARGS` inside `cgroup`: the probe moves
/// itself into the cgroup (`--join`) right after its exec and before any
/// probe, so a target with `exec` revoked (degrade, then isolate) can
/// still be probed: moving in before the exec would get the exec refused.
fn spawn_probe(cgroup: &Path, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().map_err(Error::io("finding own executable"))?;
    let mut cmd = Command::new(exe);
    crate::kernel::priority::default_for_child(&mut cmd);
    cmd.arg("verify-probe").arg("--join").arg(cgroup).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    cmd.spawn().map_err(Error::io("starting verify-probe inside the target"))
}

/// Reads the probe's JSON lines until it exits or `deadline` passes.
fn read_results(child: &mut Child, deadline: Duration) -> Vec<Value> {
    let Some(out) = child.stdout.take() else {
        return Vec::new();
    };
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    // Watchdog: a probe that hangs is killed, never waited on forever.
    thread::spawn(move || {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if d.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    });
    let lines: Vec<Value> = BufReader::new(out).lines().map_while(|l| l.ok()).filter_map(|l| serde_json::from_str(&l).ok()).collect();
    done.store(true, Ordering::SeqCst);
    let _ = child.wait();
    lines
}

/// A TCP connection opened from inside the target before isolation, and
/// the TUN device the same probe created and brought up before it.
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    stream: TcpStream,
    /// The TUN device's name.
    tun: String,
}

/// rx_packets of network device `name` (in the agent's network namespace,
/// which the probe shares): what a write on a tun fd injects.
fn rx_packets(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_packets")).ok()?.trim().parse().ok()
}

/// Opens the "established connection" probe (before isolating).
pub fn hold(cgroup: &Path, l: &Listeners) -> Result<Held> {
    let addr = l.addr4()?;
    let tun = format!("kpvh{}", std::process::id() % 1_000_000);
    let mut child = spawn_probe(cgroup, &["--hold".into(), addr.to_string(), "--hold-tun".into(), tun.clone()])?;
    let stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match l.tcp4.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(Error::io("verify: held stream"))?;
                return Ok(Held { child, stdin, stream, tun });
            }
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Io { what: "verify: the established-connection probe never connected".into(), source: e });
            }
        }
    }
}

/// The verdicts of the channels opened before the cut: established-tcp
/// (did data cross the held connection) and tun-fd (did the packet the
/// probe wrote into its TUN device show up in the device's rx_packets).
fn held_result(mut h: Held) -> [ChannelResult; 2] {
    let rx_before = rx_packets(&h.tun);
    // Tell the probe to use its connection; we answer if anything arrives.
    if let Some(stdin) = h.stdin.as_mut() {
        let _ = stdin.write_all(b"go\n");
    }
    let _ = h.stream.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut buf = [0u8; 64];
    let got = matches!(h.stream.read(&mut buf), Ok(n) if n > 0);
    if got {
        let _ = h.stream.write_all(b"ack\n");
    }
    // The probe writes its tun packet right after the connection's verdict
    // and keeps the device until its stdin closes: wait for the counter.
    let rx_after = rx_before.and_then(|before| {
        let deadline = Instant::now() + Duration::from_millis(1500);
        loop {
            match rx_packets(&h.tun) {
                Some(n) if n > before => return Some(n),
                _ if Instant::now() >= deadline => return rx_packets(&h.tun),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    drop(h.stdin.take());
    let inner = read_results(&mut h.child, Duration::from_secs(5));
    let line = |ch: &str| inner.iter().find(|v| v["channel"] == ch);
    let probe = line(Channel::EstablishedTcp.name());
    let detail = probe.and_then(|v| v["error"].as_str()).unwrap_or(if got { "data reached the outside" } else { "no data reached the outside" });
    let tcp = ChannelResult::new(
        Channel::EstablishedTcp.name(),
        got,
        if got { "data crossed the boundary".to_owned() } else { format!("no data crossed ({detail})") },
    );
    let tun_ch = Channel::TunFd.name();
    let write = line(tun_ch).map(|v| v["error"].as_str().unwrap_or("write returned").to_owned()).unwrap_or_else(|| "no write reported".into());
    let tun = match (rx_before, rx_after) {
        (Some(b), Some(a)) if a > b => {
            ChannelResult::new(tun_ch, true, format!("a packet written on a tun fd opened before the cut reached the host (rx_packets {b} -> {a})"))
        }
        (Some(b), Some(a)) => ChannelResult::new(tun_ch, false, format!("no packet reached the host (rx_packets {b} -> {a}; write: {write})")),
        (Some(b), None) => ChannelResult::new(tun_ch, true, format!("the device vanished (rx_packets was {b}): cannot claim a cut ({write})")),
        (None, _) => {
            let why = line("hold-tun").and_then(|v| v["error"].as_str()).unwrap_or("the probe could not create a TUN device before the cut");
            ChannelResult { channel: tun_ch.into(), result: "skipped".into(), detail: format!("needs a TUN device opened before the cut: {why}") }
        }
    };
    [tcp, tun]
}

/// Probes every channel from inside `cgroup`. `held` is an established
/// connection opened before isolation, if the caller made one.
pub fn run(cgroup: &Path, l: &Listeners, held: Option<Held>, catalog: &[ChannelStatus]) -> Result<Vec<ChannelResult>> {
    l.drain();
    let mut args: Vec<String> = Vec::new();
    for ch in Channel::ALL {
        match ch {
            Channel::Tcp4 => args.extend(["--tcp4".into(), l.addr4()?.to_string()]),
            Channel::Tcp6 => {
                if let Some(t6) = &l.tcp6 {
                    args.extend(["--tcp6".into(), t6.local_addr().map_err(Error::io("verify: tcp6 address"))?.to_string()]);
                }
            }
            Channel::Udp => args.extend(["--udp".into(), l.udp.local_addr().map_err(Error::io("verify: udp address"))?.to_string()]),
            Channel::Dns => args.extend(["--dns".into(), l.dns_addr.to_string()]),
            Channel::Icmp => args.push("--icmp".into()),
            Channel::Unix => args.extend(["--unix".into(), l.unix_path.display().to_string()]),
            Channel::Packet => args.push("--packet".into()),
            Channel::Netlink => args.push("--netlink".into()),
            Channel::Vsock => args.push("--vsock".into()),
            Channel::Xdp => args.push("--xdp".into()),
            Channel::Tun => args.push("--tun".into()),
            // Opened before the cut by `hold`; loopback is what every probe talks to.
            Channel::EstablishedTcp | Channel::TunFd | Channel::Loopback => {}
        }
    }
    let mut child = spawn_probe(cgroup, &args)?;
    let lines = read_results(&mut child, Duration::from_secs(10));
    let find = |ch: &str| lines.iter().find(|v| v["channel"] == ch);
    let mut out = Vec::new();
    for channel in Channel::ALL {
        let ch = channel.name();
        match channel.check() {
            Check::Probe => out.push(match find(ch) {
                Some(v) if v["ok"] == true => ChannelResult::new(ch, true, "went through from inside the target"),
                Some(v) if v["skipped"] == true => {
                    ChannelResult { channel: ch.into(), result: "skipped".into(), detail: v["error"].as_str().unwrap_or("not available here").to_owned() }
                }
                Some(v) => ChannelResult::new(ch, false, v["error"].as_str().unwrap_or("failed")),
                None if channel == Channel::Tcp6 && l.tcp6.is_none() => {
                    ChannelResult { channel: ch.into(), result: "skipped".into(), detail: "no IPv6 loopback on this host".into() }
                }
                None => ChannelResult::new(ch, true, "probe gave no result (crashed?): cannot claim a cut"),
            }),
            Check::Received => {
                let sent = find(ch).is_some_and(|v| v["ok"] == true);
                let got = l.udp_received(Duration::from_millis(500));
                let detail = match (got, find(ch).and_then(|v| v["error"].as_str())) {
                    (true, _) => "datagram reached the outside".to_owned(),
                    (false, Some(e)) => e.to_owned(),
                    (false, None) if sent => "send returned, but nothing arrived outside (dropped)".to_owned(),
                    (false, None) => "failed".to_owned(),
                };
                out.push(ChannelResult::new(ch, got, detail));
            }
            // After the others: the held connection is used last.
            Check::Held | Check::Covered => {}
        }
    }
    match held {
        Some(h) => out.extend(held_result(h)),
        None => {
            out.push(ChannelResult {
                channel: Channel::EstablishedTcp.name().into(),
                result: "skipped".into(),
                detail: "needs a connection opened from inside before the cut: none could be (target already isolated, or net.connect revoked); `isolate --verify` on an open target tests it".into(),
            });
            out.push(ChannelResult {
                channel: Channel::TunFd.name().into(),
                result: "skipped".into(),
                detail: "needs a TUN fd opened from inside before the cut: `isolate --verify` on an open target tests it".into(),
            });
        }
    }
    // Annotate OPEN channels the kernel cannot cut here.
    for r in &mut out {
        if let Some(c) = catalog.iter().find(|c| c.channel == r.channel && !c.enforced) {
            if r.result == "OPEN" {
                r.detail = format!("{}: {}", r.detail, c.by);
            }
        }
    }
    Ok(out)
}
