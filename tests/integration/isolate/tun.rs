//! Devices and families that leave a target without an inet socket: TUN/TAP
//! (a new device, and an fd opened before the isolation), netlink, vsock
//! and AF_XDP sockets.
//!
//! Judged from outside: a UDP listener on the host picks up the datagrams a
//! root workload inside the target writes into its TUN device (the device's
//! rx_packets in /sys counts them too); a new /dev/net/tun open is refused
//! with EPERM as seen by a real python client inside; the report must say
//! exactly which of these stays OPEN on this kernel.
use std::{
    net::UdpSocket,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::{expected_open, in_target, json_any, report::row};
use crate::{
    harness::{wait_until, Agent},
    support::{
        process::{py, run_bg, show, text},
        status::{lsm_attached, need_lsm},
    },
};

/// Inside the target: creates TUN device argv[1] on /dev/net/tun and, every
/// 50 ms, writes one IPv4/UDP datagram argv[2] -> argv[3]:argv[4] into it
/// (the host receives it as if from the wire); errors are ignored, so it
/// keeps trying through the isolation. It also opens two spare
/// /dev/net/tun fds at once; when file argv[5].go appears, it tries
/// TUNSETIFF on them (a new device argv[6], then an attach to argv[7])
/// and appends "create ok|err N" and "attach ok|err N" to argv[5].
const TUN_WRITER_PY: &str = r#"
import fcntl, os, socket, struct, sys, time
name, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log, newname, attach = sys.argv[5], sys.argv[6], sys.argv[7]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", name.encode(), 0x0001 | 0x1000))
spare = [os.open("/dev/net/tun", os.O_RDWR), os.open("/dev/net/tun", os.O_RDWR)]
tried = False
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
n = 0
while True:
    payload = b"kp-tun %d" % n
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xffff, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    try:
        os.write(fd, ip + udp)
    except OSError:
        pass
    if not tried and os.path.exists(log + ".go"):
        tried = True
        out = []
        for what, f, dev in (("create", spare[0], newname), ("attach", spare[1], attach)):
            try:
                fcntl.ioctl(f, 0x400454ca, struct.pack("16sH22x", dev.encode(), 0x0001 | 0x1000))
                out.append(what + " ok")
            except OSError as e:
                out.append("%s err %d" % (what, e.errno))
        with open(log, "a") as l:
            l.write("\n".join(out) + "\n")
    n += 1
    time.sleep(0.05)
"#;

/// Inside the target: open /dev/net/tun and create a device (TUNSETIFF).
const TUN_CREATE_PY: &str = r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", sys.argv[1].encode(), 0x0001 | 0x1000))
print("created")
"#;

/// Inside the target: a private device node for /dev/net/tun (mknod c 10 200).
const TUN_MKNOD_PY: &str = r#"
import os, stat, sys
os.mknod(sys.argv[1], 0o600 | stat.S_IFCHR, os.makedev(10, 200))
os.open(sys.argv[1], os.O_RDWR)
print("opened")
"#;

fn rx_packets(dev: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/rx_packets")).ok()?.trim().parse().ok()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", show(&out));
}

/// Datagrams the host-side listener received within `window`.
fn received(l: &UdpSocket, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut n = 0;
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        if matches!(l.recv_from(&mut buf), Ok((k, _)) if buf[..k].starts_with(b"kp-tun")) {
            n += 1;
        }
    }
    n
}

/// A root workload in a target holding a TUN device whose writes reach a
/// UDP listener on the host, and two spare tun fds (see [`TUN_WRITER_PY`]).
struct TunWriter {
    dev: String,
    listener: UdpSocket,
    log: std::path::PathBuf,
    /// The device the spare fd attaches to (persistent, made outside).
    persist: String,
    _dir: tempfile::TempDir,
    _w: crate::support::process::Reaped,
}

impl TunWriter {
    /// Makes the workload try TUNSETIFF on its spare fds: ("create ...", "attach ...").
    fn spare_fds(&self) -> (String, String) {
        std::fs::write(format!("{}.go", self.log.display()), "").expect("trigger");
        let read = || std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<String>>();
        wait_until(Duration::from_secs(5), || read().len() >= 2).unwrap_or_else(|| panic!("the workload never tried its spare tun fds"));
        let lines = read();
        (lines[0].clone(), lines[1].clone())
    }
}

impl Drop for TunWriter {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["tuntap", "del", "dev", &self.persist, "mode", "tun"]).output();
    }
}

fn tun_writer(agent: &Agent, target: &str) -> TunWriter {
    let pid = std::process::id();
    let dev = format!("kptf{}", pid % 100_000);
    let persist = format!("kptp{}", pid % 100_000);
    let fresh = format!("kptc{}", pid % 100_000);
    ip(&["tuntap", "add", "dev", &persist, "mode", "tun"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("spare.log");
    let net = format!("10.213.{}", pid % 200 + 20);
    let (host, peer, port) = (format!("{net}.1"), format!("{net}.2"), 40_000 + (pid % 20_000) as u16);
    let w = run_bg(agent, target, &[py(), "-c", TUN_WRITER_PY, &dev, &peer, &host, &port.to_string(), log.to_str().unwrap(), &fresh, &persist], 1);
    assert!(wait_until(Duration::from_secs(10), || Path::new(&format!("/sys/class/net/{dev}")).exists()).is_some(), "the workload never created {dev}");
    ip(&["addr", "add", &format!("{host}/24"), "dev", &dev]);
    ip(&["link", "set", "dev", &dev, "up"]);
    let l = UdpSocket::bind((host.as_str(), port)).unwrap_or_else(|e| panic!("binding {host}:{port}: {e}"));
    l.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    assert!(received(&l, Duration::from_secs(3)) > 0, "before the isolation, datagrams written into {dev} reach the host listener");
    TunWriter { dev, listener: l, log, persist, _dir: dir, _w: w }
}

/// New TUN devices from inside the target: (create via /dev/net/tun, mknod
/// of a private 10:200 node) outputs.
fn new_tun(agent: &Agent, target: &str, ctx: &str) -> (bool, String) {
    let dev = format!("kptn{}", std::process::id() % 100_000);
    let out = in_target(agent, target, &[py(), "-c", TUN_CREATE_PY, &dev]);
    let node = agent.dir.path().join(format!("tun-node-{}", std::process::id()));
    let _ = std::fs::remove_file(&node);
    let mk = in_target(agent, target, &[py(), "-c", TUN_MKNOD_PY, node.to_str().unwrap()]);
    let _ = std::fs::remove_file(&node);
    eprintln!("{ctx}: create: {}\n{ctx}: mknod: {}", show(&out), show(&mk));
    assert_eq!(out.status.success(), mk.status.success(), "{ctx}: /dev/net/tun and a private 10:200 node get the same verdict");
    (out.status.success(), text(&out.stderr) + &text(&mk.stderr))
}

/// Without BPF LSM (the host): the cgroup device hook refuses a new TUN
/// device to the isolated root workload (open of /dev/net/tun and of a
/// private mknod'ed 10:200 node, EPERM), while a bystander target and the
/// restored target still get one. A TUN fd opened before the isolation keeps
/// injecting packets — the host listener keeps receiving them — and every
/// report says so: `tun-fd` OPEN in the catalog, the verify table, status.
/// With BPF LSM the same test demands that fd be cut.
#[test]
fn isolate_tun_refuses_new_devices_and_reports_the_preopened_fd() {
    let Some(agent) = Agent::start() else { return };
    let lsm = lsm_attached(&agent);
    let tw = tun_writer(&agent, "tunbox");
    let (dev, listener) = (&tw.dev, &tw.listener);
    let (ok, _) = new_tun(&agent, "tunbox", "before isolate");
    assert!(ok, "before the isolation a root workload creates TUN devices");

    let (out, r) = json_any(&agent, &["isolate", "tunbox", "--verify"]);
    eprintln!("isolate --verify: {r}");
    let open = expected_open(&agent);
    assert_eq!(out.status.success(), open.is_empty(), "{}", show(&out));
    let cat = |ch: &str| r["channels"].as_array().unwrap().iter().find(|c| c["channel"] == ch).cloned().unwrap_or_else(|| panic!("no {ch} in {r}"));
    assert_eq!(cat("tun")["enforced"], true, "{r}");
    assert!(cat("tun")["by"].as_str().unwrap_or("").contains("cgroup device"), "{r}");
    assert_eq!(cat("tun-fd")["enforced"], lsm, "tun-fd is cut only with BPF LSM: {r}");
    assert_eq!(row(&r["verify"], "tun")["result"], "cut", "{r}");
    assert!(row(&r["verify"], "tun")["detail"].as_str().unwrap_or("").contains("Operation not permitted"), "{r}");
    let tun_fd = row(&r["verify"], "tun-fd");
    assert_eq!(tun_fd["result"], if lsm { "cut" } else { "OPEN" }, "the verify probe's own pre-opened tun fd: {tun_fd}");

    let (ok, err) = new_tun(&agent, "tunbox", "isolated");
    assert!(!ok && err.contains("[Errno 1] Operation not permitted"), "an isolated root workload must get no new TUN device: {err}");
    let _by = run_bg(&agent, "bystander", &["sleep", "1000"], 1);
    assert!(new_tun(&agent, "bystander", "bystander").0, "only the isolated target is refused");
    let st = agent.json(&["status"]);
    assert!(st["isolation"]["devices_refused"].as_u64().unwrap_or(0) >= 1, "the device refusals are counted: {}", st["isolation"]);

    // The fd opened before the isolation, judged by the host listener.
    let _ = received(listener, Duration::from_millis(300));
    let rx0 = rx_packets(dev).unwrap_or(0);
    let got = received(listener, Duration::from_millis(1500));
    let rx1 = rx_packets(dev).unwrap_or(0);
    let (create, attach) = tw.spare_fds();
    eprintln!("pre-opened tun fd after the isolation: {got} datagrams at the host listener, rx_packets {rx0} -> {rx1}; spare fds: {create}, {attach} (BPF LSM: {lsm})");
    if lsm {
        assert_eq!((got, rx1), (0, rx0), "with BPF LSM writes on a pre-opened tun fd are refused");
        assert_eq!((create.as_str(), attach.as_str()), ("create err 1", "attach err 1"), "tun_dev_create / tun_dev_open refuse on pre-opened fds");
    } else {
        assert!(got > 0 && rx1 > rx0, "without BPF LSM the pre-opened fd still injects packets: the report must (and did) say OPEN");
        assert_eq!((create.as_str(), attach.as_str()), ("create ok", "attach ok"), "without BPF LSM a pre-opened fd still makes devices: part of tun-fd's OPEN");
        let t = agent.json(&["status", "tunbox"]);
        assert!(t["targets"][0]["open_channels"].as_array().unwrap().iter().any(|c| c == "tun-fd"), "status names tun-fd open: {t}");
        let human = text(&agent.kp(&["status"]).stdout);
        assert!(human.contains("tun-fd"), "{human}");
    }

    agent.json(&["restore", "tunbox", "--to", "normal"]);
    assert!(new_tun(&agent, "tunbox", "restored").0, "after restore TUN devices work again");
    assert!(received(listener, Duration::from_secs(2)) > 0, "after restore the tun fd carries packets again");
}

/// Without BPF LSM: netlink and vsock sockets have no cgroup hook, so
/// `isolate --verify` lists them OPEN (and says BPF LSM is what is
/// missing) — the probe did get a netlink answer and a vsock socket; new
/// AF_XDP sockets get no UMEM (cgroup setsockopt) and are reported cut.
/// A real python client inside sees the same.
#[test]
fn isolate_verify_lists_netlink_vsock_xdp_per_kernel() {
    let Some(agent) = Agent::start() else { return };
    let lsm = lsm_attached(&agent);
    let _run = run_bg(&agent, "fams", &["sleep", "1000"], 1);
    let (_, r) = json_any(&agent, &["isolate", "fams", "--verify"]);
    eprintln!("isolate --verify: {r}");
    for ch in ["netlink", "vsock", "xdp"] {
        let v = row(&r["verify"], ch);
        let c = r["channels"].as_array().unwrap().iter().find(|c| c["channel"] == ch).cloned().unwrap();
        let want_open = !lsm && ch != "xdp";
        if v["result"] == "skipped" {
            assert!(v["detail"].as_str().unwrap_or("").contains("no address family"), "skipped only when the kernel lacks the family: {v}");
            continue;
        }
        assert_eq!(v["result"], if want_open { "OPEN" } else { "cut" }, "{ch}: {v}");
        assert_eq!(c["enforced"], !want_open, "{ch}: {c}");
        if want_open {
            assert!(v["detail"].as_str().unwrap_or("").contains("BPF LSM"), "{ch}: says what it lacks: {v}");
        }
    }
    // A real client inside, outside of killpath's probe: XSK UMEM registration.
    let code = "import mmap, socket, struct\ns = socket.socket(44, socket.SOCK_RAW, 0)\nm = mmap.mmap(-1, 65536)\nimport ctypes\naddr = ctypes.addressof(ctypes.c_char.from_buffer(m))\ns.setsockopt(283, 4, struct.pack('QQIIII', addr, 65536, 4096, 0, 0, 0))\nprint('umem')\n";
    let out = in_target(&agent, "fams", &[py(), "-c", code]);
    eprintln!("xdp client: {}", show(&out));
    assert!(!out.status.success() && text(&out.stderr).contains("[Errno 1] Operation not permitted"), "AF_XDP set-up refused: {}", show(&out));
    if !lsm {
        let st = agent.json(&["status"]);
        assert!(st["isolation"]["xdp_setups_refused"].as_u64().unwrap_or(0) >= 1, "the SOL_XDP refusals are counted: {}", st["isolation"]);
    }
    agent.json(&["restore", "fams", "--to", "normal"]);
    let out = in_target(&agent, "fams", &[py(), "-c", code]);
    assert!(out.status.success(), "after restore an XSK gets its UMEM: {}", show(&out));
}

/// With BPF LSM (in the VM): no TUN device is created or attached (a
/// persistent device made before the isolation cannot be re-attached), a
/// pre-opened and configured tun fd writes nothing (rx_packets of the device
/// does not grow, the host listener gets nothing), and netlink, vsock and
/// AF_XDP sockets are refused at creation; `isolate --verify` says cut for
/// every one of them.
#[test]
fn lsm_isolate_cuts_tun_netlink_vsock_xdp() {
    let Some(agent) = Agent::start() else { return };
    if !need_lsm(&agent) {
        return;
    }
    // tun and vsock are modules in Debian's kernel: load them (outside).
    for m in ["tun", "vsock"] {
        let _ = Command::new("modprobe").arg(m).output();
    }
    let tw = tun_writer(&agent, "lsmtun");
    let (out, r) = json_any(&agent, &["isolate", "lsmtun", "--verify"]);
    eprintln!("isolate --verify: {r}");
    assert!(out.status.success(), "with BPF LSM nothing is open: {}", show(&out));
    for ch in ["tun", "tun-fd", "netlink", "xdp", "vsock"] {
        let v = row(&r["verify"], ch);
        assert_eq!(v["result"], "cut", "{ch}: {v}");
    }
    let _ = received(&tw.listener, Duration::from_millis(300));
    let rx0 = rx_packets(&tw.dev).unwrap_or(0);
    let got = received(&tw.listener, Duration::from_millis(1500));
    let rx1 = rx_packets(&tw.dev).unwrap_or(0);
    eprintln!("pre-opened tun fd: {got} datagrams, rx_packets {rx0} -> {rx1}");
    assert_eq!((got, rx1), (0, rx0), "writes on the pre-opened tun fd are refused");
    // TUNSETIFF on fds opened before the isolation: only the LSM hooks
    // (tun_dev_create; tun_dev_open for the persistent device) see these.
    let (create, attach) = tw.spare_fds();
    assert_eq!((create.as_str(), attach.as_str()), ("create err 1", "attach err 1"), "tun_dev_create / tun_dev_open refuse");
    let (ok, err) = new_tun(&agent, "lsmtun", "isolated");
    assert!(!ok && err.contains("Operation not permitted"), "{err}");
    // One python for the three families (each start costs seconds under emulation).
    let code = "import socket\nfor fam, ty in ((socket.AF_NETLINK, socket.SOCK_RAW), (40, socket.SOCK_STREAM), (44, socket.SOCK_RAW)):\n    try:\n        socket.socket(fam, ty, 0)\n        print(int(fam), 'created')\n    except OSError as e:\n        print(int(fam), 'errno', e.errno)\n";
    let out = in_target(&agent, "lsmtun", &[py(), "-c", code]);
    assert_eq!(text(&out.stdout), "16 errno 1\n40 errno 1\n44 errno 1\n", "netlink, vsock and AF_XDP sockets refused with EPERM: {}", show(&out));
    agent.json(&["restore", "lsmtun", "--to", "normal"]);
    thread::sleep(Duration::from_millis(200));
    assert!(received(&tw.listener, Duration::from_secs(2)) > 0, "after restore the tun fd carries packets again");
}
