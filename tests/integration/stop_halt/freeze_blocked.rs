//! A freeze that cannot complete: a task of the target sleeps in the kernel
//! where the freezer cannot reach it (a FUSE request on a mount whose
//! server never answers: `fuse_get_req` waits killable, D state, and the
//! cgroup v2 freezer only stops tasks at their return to user space). The
//! stop must not hang on `frozen 1`: it waits a bounded time, kills, and
//! reports that the kill write, not a freeze, ended the halt.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    fcntl::{open, OFlag},
    mount::{mount, umount2, MntFlags, MsFlags},
    sys::stat::Mode,
};

use super::{assert_bomb_gone, living_in, rel_of};
use crate::{
    harness::{wait_until, Agent},
    support::{
        process::{pids, run_bg},
        status::stop_in_order,
    },
};

/// A FUSE mount whose server (this test) never answers, not even INIT:
/// any lookup below it blocks. Unmounted (lazily) and closed on drop,
/// which fails the blocked requests.
struct DeadFuse {
    dir: PathBuf,
    _fd: OwnedFd,
}

impl DeadFuse {
    fn mount(dir: &Path) -> Option<Self> {
        let fd = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
        let data = format!("fd={},rootmode=40000,user_id=0,group_id=0", fd.as_raw_fd());
        mount(Some("kp-dead-fuse"), dir, Some("fuse"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str())).ok()?;
        Some(Self { dir: dir.to_owned(), _fd: fd })
    }
}

impl Drop for DeadFuse {
    fn drop(&mut self) {
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
    }
}

/// The state letter of `pid` in /proc/PID/stat.
fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn stop_halt_freeze_blocked_by_d_state_task() {
    let Some(agent) = Agent::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let Some(fuse) = DeadFuse::mount(&mnt) else {
        crate::harness::skip("cannot mount a FUSE filesystem (/dev/fuse)");
        return;
    };
    // Large enough to take the freeze path, plus one task stuck in the
    // FUSE lookup.
    let n = killpath::stop::SMALL_TARGET + 6;
    let script = format!("for i in $(seq {n}); do sleep 1000 & done; stat {}/x & wait", mnt.display());
    let _run = run_bg(&agent, "stuck", &["sh", "-c", &script], n + 2);
    let cg = agent.target_cgroup("stuck");
    // The `stat` itself, asleep in FUSE (wchan names the FUSE wait), not
    // a task passing through D for a moment: on a cold page cache (a fresh
    // CI machine) `stat` sleeps in D reading its own binary first, and a
    // freeze then catches it at its return to user space, before it ever
    // reaches the FUSE lookup (that made this check pass and the freeze
    // complete).
    let blocked = |p: &i32| {
        state(*p) == Some('D')
            && std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "stat")
            && std::fs::read_to_string(format!("/proc/{p}/wchan")).is_ok_and(|w| w.contains("fuse"))
    };
    let stuck = wait_until(Duration::from_secs(10), || pids(&cg).iter().any(blocked))
        .and_then(|()| pids(&cg).into_iter().find(blocked))
        .expect("the target's `stat` never blocked in the FUSE lookup");
    // From outside: with that task, the cgroup cannot freeze (otherwise
    // this test proves nothing).
    let freeze = cg.path().join("cgroup.freeze");
    std::fs::write(&freeze, "1").expect("freeze");
    std::thread::sleep(Duration::from_millis(300));
    let events = std::fs::read_to_string(cg.path().join("cgroup.events")).unwrap_or_default();
    std::fs::write(&freeze, "0").expect("thaw");
    let wchan = std::fs::read_to_string(format!("/proc/{stuck}/wchan")).unwrap_or_default();
    eprintln!("the target's `stat` {stuck} sleeps in {wchan}");
    assert!(events.contains("frozen 0"), "the D-state task {stuck} (in {wchan}) should keep the cgroup from freezing: {events}");

    let before = pids(&cg);
    // The freeze order (the agent's own when its stop thread is not
    // real-time; a real-time one kills at once and never waits on a freeze).
    let r = stop_in_order(&agent, "stuck", "freeze-wait-kill");
    eprintln!("stop with a task that cannot freeze: {r}");
    assert_eq!(r["freeze_timed_out"], true, "the freeze cannot complete: {r}");
    assert_eq!(r["halt"], "kill-written", "the kill, not a freeze, ended the halt: {r}");
    assert!(r["time_to_halt_us"].as_u64().unwrap_or(0) >= killpath::stop::FREEZE_WAIT.as_micros() as u64, "halt after the bounded wait: {r}");
    assert_bomb_gone(&agent, "stuck", &r, &before);
    assert!(living_in(&rel_of(&agent, "stuck")).is_empty());
    drop(fuse);
}
