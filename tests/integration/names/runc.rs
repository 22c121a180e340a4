//! A real runc container (busybox rootfs built here, no registry) adopted
//! by its id, then throttled, isolated and stopped, each judged from
//! outside: the bytes its stream delivers to a listener in the test, the
//! pids, and runc's own view of its container.
use std::{
    io::Read as _,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{layouts::container_id, tree::remove_tree};
use crate::{
    harness::{skip, wait_until, Agent},
    support::{
        process::show,
        status::{assert_stopped, stop},
    },
};

/// A container started with `runc run -d`; killed and deleted on drop.
struct Container {
    id: String,
    bundle: tempfile::TempDir,
    /// Every hierarchy's cgroup runc made (cgroup2 and, on a hybrid host, v1).
    paths: Vec<PathBuf>,
}

/// An agent, when runc is installed (else a skip, which fails in strict
/// mode).
fn agent_with_runc() -> Option<Agent> {
    let agent = Agent::start()?;
    if Command::new("runc").arg("--version").output().is_err() {
        skip("runc is not installed (cargo xtask setup installs it)");
        return None;
    }
    Some(agent)
}

fn runc(args: &[&str]) -> std::process::Output {
    Command::new("runc").args(args).stdin(Stdio::null()).output().expect("run runc")
}

impl Container {
    /// A bundle whose rootfs is busybox-static (its applets as symlinks),
    /// sharing the host's network namespace (so that the listener on the
    /// host's loopback is "outside"), running `sh -c SCRIPT`; in runc's
    /// default cgroup (`/ID`) or in `cgroups_path`.
    fn start(script: &str, cgroups_path: Option<&str>) -> Container {
        let bundle = tempfile::tempdir().expect("bundle dir");
        let bin = bundle.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("rootfs/bin");
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox (package busybox-static)");
        for applet in ["sh", "sleep", "yes", "nc"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
        let out = Command::new("runc").arg("spec").current_dir(bundle.path()).output().expect("runc spec");
        assert!(out.status.success(), "runc spec: {}", show(&out));
        let path = bundle.path().join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("config.json is JSON");
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
        let ns = spec["linux"]["namespaces"].as_array_mut().expect("namespaces");
        ns.retain(|n| n["type"] != "network");
        if let Some(p) = cgroups_path {
            spec["linux"]["cgroupsPath"] = p.into();
        }
        std::fs::write(&path, serde_json::to_vec(&spec).expect("config")).expect("write config.json");
        let id = container_id();
        // Detached, the container inherits runc's stdio: a pipe here would
        // never close while it runs, so its output goes to a file.
        let log = bundle.path().join("runc.log");
        let status = Command::new("runc")
            .args(["run", "-d", &id])
            .current_dir(bundle.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("runc log"))
            .status()
            .expect("runc run");
        assert!(status.success(), "runc run -d: {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        let state: Value = serde_json::from_slice(&std::fs::read(format!("/run/runc/{id}/state.json")).expect("runc state.json")).expect("JSON");
        let paths = state["cgroup_paths"].as_object().into_iter().flatten().filter_map(|(_, p)| p.as_str()).map(PathBuf::from).collect();
        Container { id, bundle, paths }
    }

    /// `runc state ID`.
    fn state(&self) -> Value {
        let out = runc(&["state", &self.id]);
        assert!(out.status.success(), "runc state: {}", show(&out));
        serde_json::from_slice(&out.stdout).expect("runc state is JSON")
    }

    /// The container's cgroup2 directory, as runc recorded it.
    fn cgroup(&self) -> PathBuf {
        let state: Value = serde_json::from_slice(&std::fs::read(format!("/run/runc/{}/state.json", self.id)).expect("runc state.json")).expect("JSON");
        PathBuf::from(state["cgroup_paths"][""].as_str().expect("runc made a cgroup2 directory"))
    }
}

impl Drop for Container {
    /// Kills and deletes the container, then removes what runc leaves:
    /// its cgroups if still there, and the test's own parent directory of
    /// a `cgroupsPath` in every hierarchy.
    fn drop(&mut self) {
        let _ = runc(&["kill", &self.id, "KILL"]);
        let _ = runc(&["delete", "-f", &self.id]);
        for p in &self.paths {
            remove_tree(p);
            if let Some(parent) = p.parent().filter(|d| d.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("kptest-names-"))) {
                remove_tree(parent);
            }
        }
        let _ = &self.bundle;
    }
}

/// A TCP listener outside every target counting the bytes it reads.
fn counter() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    t.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (port, total)
}

/// Bytes per second the counter received over `window`.
fn rate(total: &AtomicU64, window: Duration) -> f64 {
    let (a, t) = (total.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    (total.load(Ordering::Relaxed) - a) as f64 / t.elapsed().as_secs_f64()
}

/// The end-to-end check: a runc container adopted by a 12-digit
/// prefix of its id (its cgroup found in runc's default layout), held to
/// an egress ceiling as the listener measures it, cut off by isolate (the
/// listener receives nothing more), stopped with 0 survivors, and runc
/// sees its container stopped.
#[test]
fn adopt_container_runc_throttle_isolate_stop() {
    let Some(agent) = agent_with_runc() else { return };
    let (port, total) = counter();
    let ctr = Container::start(&format!("sleep 300 & sleep 300 & yes 0123456789abcdef | nc 127.0.0.1 {port}; sleep 300"), None);
    wait_until(Duration::from_secs(20), || total.load(Ordering::Relaxed) > 100_000).expect("the container's stream reaches the listener");
    assert_eq!(ctr.state()["status"], "running");

    let r = agent.json(&["adopt", "ctr", "--container", &ctr.id[..12]]);
    let cg = killpath::kernel::cgroup::Cgroup::new(ctr.cgroup());
    assert_eq!(r["target"]["cgroup"], cg.path().display().to_string(), "the cgroup runc made: {r}");
    assert_eq!(r["resolved"]["canonical"], ctr.id, "{r}");
    let before = crate::support::process::pids(&cg);
    assert!(before.len() >= 4, "sh, two sleeps, yes and nc: {before:?}");
    assert!(before.contains(&(ctr.state()["pid"].as_i64().expect("init pid") as i32)), "runc's init pid is in the target");

    let free = rate(&total, Duration::from_secs(1));
    const CEILING: f64 = 200_000.0;
    agent.json(&["throttle", "ctr", "--egress-bytes", &(CEILING as u64).to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    let held = rate(&total, Duration::from_secs(2));
    eprintln!("container stream: {free:.0} B/s free, {held:.0} B/s under a {CEILING} B/s ceiling");
    assert!(free > 5.0 * CEILING, "the free stream must be well above the ceiling for the check to mean anything: {free:.0} B/s");
    assert!(held <= 1.3 * CEILING, "held {held:.0} B/s under a {CEILING} B/s ceiling");

    agent.json(&["isolate", "ctr"]);
    // In-flight segments (sent before the map update) may still land.
    std::thread::sleep(Duration::from_millis(300));
    let cut = rate(&total, Duration::from_secs(2));
    assert_eq!(cut, 0.0, "the listener still received {cut:.0} B/s from the isolated container");

    let report = stop(&agent, "ctr");
    assert_stopped(&agent, "ctr", &cg, &report, &before);
    assert_eq!(ctr.state()["status"], "stopped", "runc sees its container stopped");
    let out = runc(&["list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let row = list.as_array().and_then(|l| l.iter().find(|c| c["id"] == ctr.id.as_str()).cloned()).unwrap_or(Value::Null);
    assert_eq!(row["status"], "stopped", "runc list: {list}");
    assert_eq!(agent.json(&["journal", "--verify"])["ok"], true);
}

/// A container whose cgroup does not carry its id (a `cgroupsPath` of the
/// caller's choosing) is found through runc's state: its init pid, checked
/// by start time. Its cgroup is adopted when it holds only the container;
/// when a stranger shares it, the init's tree moves into a new target and
/// the stranger is untouched. Each is stopped with 0 survivors and runc
/// sees it stopped.
#[test]
fn adopt_container_by_runc_state_when_no_cgroup_names_it() {
    let Some(agent) = agent_with_runc() else { return };
    let top = format!("/kptest-names-{}-state", std::process::id());
    let ctr = Container::start("sleep 300 & sleep 300 & sleep 300", Some(&format!("{top}/box")));
    let cg = killpath::kernel::cgroup::Cgroup::new(ctr.cgroup());
    assert!(cg.path().ends_with(format!("{}/box", top.trim_start_matches('/'))), "{}", cg.path().display());
    wait_until(Duration::from_secs(20), || cg.procs().len() >= 3).expect("the container's processes");
    let r = agent.json(&["adopt", "boxed", "--container", &ctr.id]);
    assert_eq!(r["target"]["cgroup"], cg.path().display().to_string(), "{r}");
    let via = r["resolved"]["via"].as_str().unwrap_or_default();
    assert!(via.contains("init pid") && via.contains(&format!("/run/runc/{}/state.json", ctr.id)), "{r}");
    let before = crate::support::process::pids(&cg);
    let report = stop(&agent, "boxed");
    assert_stopped(&agent, "boxed", &cg, &report, &before);
    assert_eq!(ctr.state()["status"], "stopped", "runc sees its container stopped");

    // A container whose cgroup also holds a stranger: adopting that cgroup
    // would take the stranger, so the init's process tree moves instead.
    let shared = Container::start("sleep 300 & sleep 300 & sleep 300", Some(&format!("{top}/shared")));
    let cg = killpath::kernel::cgroup::Cgroup::new(shared.cgroup());
    wait_until(Duration::from_secs(20), || cg.procs().len() >= 3).expect("the container's processes");
    let mut tree = super::tree::Tree::new("stranger");
    let stranger = tree.sleepers(&cg, 1)[0];
    let r = agent.json(&["adopt", "shared", "--container", &shared.id]);
    let init = shared.state()["pid"].as_i64().expect("init pid") as i32;
    assert_eq!(r["resolved"]["found"]["pid"], init, "{r}");
    assert!(r["target"]["cgroup"].as_str().is_some_and(|p| p.starts_with(&agent.cgroup_parent.display().to_string())), "a new cgroup: {r}");
    let target = agent.target_cgroup("shared");
    let before = crate::support::process::pids(&target);
    assert!(before.len() >= 3 && before.contains(&init) && !before.contains(&stranger), "init and its children moved, not the stranger: {before:?}");
    let report = stop(&agent, "shared");
    assert_stopped(&agent, "shared", &target, &report, &before);
    assert!(crate::harness::alive(stranger), "the stranger in the container's old cgroup must survive");
    assert_eq!(shared.state()["status"], "stopped", "runc sees its container stopped");
}

/// A process started with `runc exec` is a child of the runtime, not of
/// the container's init, but in the container's pid namespace. When a
/// stranger shares the container's cgroup (so the cgroup cannot be taken
/// whole), moving only the init's tree would leave the exec'd process
/// outside the target while the report said "container adopted": the
/// adopt is refused naming that pid, nothing is adopted, and the exec'd
/// process and the stranger are untouched.
#[test]
fn adopt_container_refuses_when_an_exec_process_would_be_left_out() {
    let Some(agent) = agent_with_runc() else { return };
    let top = format!("/kptest-names-{}-exec", std::process::id());
    let ctr = Container::start("sleep 300", Some(&format!("{top}/shared")));
    let cg = killpath::kernel::cgroup::Cgroup::new(ctr.cgroup());
    wait_until(Duration::from_secs(20), || !cg.procs().is_empty()).expect("the container's init");
    let before: Vec<i32> = cg.procs();
    // Detached, the exec'd process inherits runc's stdio: not pipes (they
    // would never close while it runs).
    let status = Command::new("runc").args(["exec", "-d", &ctr.id, "sleep", "301"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("runc exec");
    assert!(status.success(), "runc exec: {status}");
    let exec_pid = wait_until(Duration::from_secs(20), || cg.procs().iter().any(|p| !before.contains(p)))
        .and_then(|()| cg.procs().into_iter().find(|p| !before.contains(p)))
        .expect("the exec'd process in the container's cgroup");
    let mut tree = super::tree::Tree::new("stranger-exec");
    let stranger = tree.sleepers(&cg, 1)[0];
    let out = agent.kp(&["adopt", "exec-box", "--container", &ctr.id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "adopt took the container leaving its exec'd process {exec_pid} out: {}", show(&out));
    assert!(err.contains(&exec_pid.to_string()) && err.contains("exec") && err.contains("--cgroup"), "the refusal names the pid and the way out: {err}");
    assert_eq!(agent.json(&["status"])["targets"], serde_json::json!([]), "nothing adopted");
    for p in [exec_pid, stranger] {
        assert!(crate::harness::alive(p) && cg.procs().contains(&p), "pid {p} was touched");
    }
}

/// A decoy: root makes an empty cgroup named exactly like a running
/// container's id while the container itself lives in a cgroup that does
/// not carry its id. Adopting the decoy would leave the container at
/// normal; runc's state names the init, whose cgroup is not below the
/// decoy: the adopt is refused, nothing is adopted, the container runs on.
#[test]
fn adopt_container_refuses_a_decoy_cgroup_named_like_it() {
    let Some(agent) = agent_with_runc() else { return };
    let top = format!("/kptest-names-{}-decoy", std::process::id());
    let ctr = Container::start("sleep 300", Some(&format!("{top}/box")));
    let cg = killpath::kernel::cgroup::Cgroup::new(ctr.cgroup());
    wait_until(Duration::from_secs(20), || !cg.procs().is_empty()).expect("the container's init");
    let mount = killpath::kernel::cgroup::cgroup2_mount().expect("cgroup2 mount");
    let decoy = mount.join(top.trim_start_matches('/')).join(&ctr.id);
    std::fs::create_dir(&decoy).expect("decoy cgroup");
    let out = agent.kp(&["adopt", "decoyed", "--container", &ctr.id]);
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir(&decoy);
    assert!(!out.status.success(), "the decoy {} was adopted: {}", decoy.display(), show(&out));
    assert!(err.contains("does not hold its init") && err.contains(&decoy.display().to_string()), "{err}");
    assert_eq!(agent.json(&["status"])["targets"], serde_json::json!([]), "nothing adopted");
    assert_eq!(ctr.state()["status"], "running", "the container runs on");
}
