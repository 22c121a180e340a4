//! Tests: no membership mark outlives its task. A mark left under an id the
//! kernel frees and reuses would make an unrelated process a target's: the
//! stop guard and the stop would kill it. Two ways a workload could leave
//! one: a thread's exec that fails after de_thread gave it the leader's pid
//! (no exec event moves its mark), and a zombie's pid written to a
//! cgroup.procs (the migration skips it, the tracepoint still fires).
//! Judged from outside: a process started with the freed pid (steered with
//! ns_last_pid) runs to its end, and the pinned membership map.
use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use crate::{
    harness::{wait_until, Agent},
    membership::{run_as_pid, Escapees},
    support::{process::run_bg, status::target_row},
};

/// An x86-64 ELF executable whose one PT_LOAD segment sits at a kernel
/// address: the exec passes the point of no return (begin_new_exec, which
/// de_threads), then mapping the segment fails and the task dies of
/// SIGSEGV, never reaching sched_process_exec.
fn bad_elf() -> Vec<u8> {
    let base: u64 = 0xffff_8000_0000_0000;
    let mut f = vec![0u8; 4096];
    let mut put = |at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
    put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &0x3eu16.to_le_bytes()); // EM_X86_64
    put(20, &1u32.to_le_bytes());
    put(24, &(base + 0x78).to_le_bytes()); // e_entry
    put(32, &64u64.to_le_bytes()); // e_phoff
    put(52, &64u16.to_le_bytes()); // e_ehsize
    put(54, &56u16.to_le_bytes()); // e_phentsize
    put(56, &1u16.to_le_bytes()); // e_phnum
    put(64, &1u32.to_le_bytes()); // PT_LOAD
    put(68, &5u32.to_le_bytes()); // R+X
    put(80, &base.to_le_bytes()); // p_vaddr
    put(88, &base.to_le_bytes()); // p_paddr
    put(96, &0x1000u64.to_le_bytes()); // p_filesz
    put(104, &0x1000u64.to_le_bytes()); // p_memsz
    put(112, &0x1000u64.to_le_bytes()); // p_align
    f
}

/// Waits for the first line of `path` and parses it as an id.
fn id_in(path: &std::path::Path) -> i32 {
    wait_until(Duration::from_secs(10), || std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')))
        .unwrap_or_else(|| panic!("nothing in {}", path.display()));
    std::fs::read_to_string(path).expect("id").trim().parse().expect("an id")
}

/// A thread of a target's process execs a binary that fails after the
/// point of no return: the process dies. Its thread's old id, freed, is
/// then taken by a process outside every target while the target is
/// stopped: that process must run to its end (the guard kills marked
/// tasks of a stopped target wherever they are).
#[test]
fn failed_exec_of_a_thread_leaves_no_mark_that_kills_the_next_user_of_its_id() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let (elf, tid_file) = (dir.join("bad-elf"), dir.join("tid"));
    std::fs::write(&elf, bad_elf()).expect("write the ELF");
    std::fs::set_permissions(&elf, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = format!(
        "import os, threading, time\n\
         def t():\n    time.sleep(0.3)\n    open('{tid}', 'w').write('%d\\n' % threading.get_native_id())\n    os.execv('{elf}', ['bad-elf'])\n\
         threading.Thread(target=t).start()\n\
         time.sleep(1000)\n",
        tid = tid_file.display(),
        elf = elf.display()
    );
    let run = run_bg(&agent, "bad-exec", &["/usr/bin/python3", "-c", &script], 1);
    let pid = run.pid();
    let _guard = Escapees(vec![pid]);
    let tid = id_in(&tid_file);
    assert_ne!(tid, pid);
    let mut run = run;
    let st = run.0.wait().expect("wait");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(11), "the exec failed past the point of no return: {st}");
    let r = agent.json(&["stop", "bad-exec"]);
    assert_eq!(r["survivors"], 0, "{r}");
    let st = run_as_pid(tid, "sleep 0.3");
    assert!(st.success(), "a process outside every target that got the dead thread's id {tid} was killed: {st}");
}

/// A target's process forks a child that exits, writes the zombie's pid to
/// its own cgroup's cgroup.procs (nothing moves; the tracepoint fires),
/// and reaps it. No mark may stay under that pid: with the target
/// isolated, a process outside every target that gets the pid runs to its
/// end (the guard kills an isolated target's marked tasks outside it).
#[test]
fn zombie_written_to_cgroup_procs_leaves_no_mark() {
    let Some(agent) = Agent::start() else { return };
    let dir = agent.dir.path();
    let zombie_file = dir.join("zombie");
    let procs = agent.target_cgroup("plant").path().join("cgroup.procs");
    let script = format!(
        "import os, time\n\
         p = os.fork()\n\
         if p == 0:\n    os._exit(0)\n\
         time.sleep(0.2)\n\
         open('{procs}', 'w').write(str(p))\n\
         os.waitpid(p, 0)\n\
         open('{out}', 'w').write('%d\\n' % p)\n\
         time.sleep(1000)\n",
        procs = procs.display(),
        out = zombie_file.display()
    );
    let run = run_bg(&agent, "plant", &["/usr/bin/python3", "-c", &script], 1);
    let _guard = Escapees(vec![run.pid()]);
    let zombie = id_in(&zombie_file);
    let id = target_row(&agent, "plant").expect("listed")["cgroup_id"].as_u64().expect("cgroup_id");
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_ref().expect("the membership maps are pinned");
    assert_eq!(members.get(zombie as u32), None, "no mark under the reaped zombie's pid {zombie}");
    assert_eq!(members.get(run.pid() as u32).map(|m| m.target), Some(id), "the planter itself is marked");
    agent.json(&["isolate", "plant"]);
    let st = run_as_pid(zombie, "sleep 0.3");
    assert!(st.success(), "a process outside every target that got the zombie's pid {zombie} was killed: {st}");
}

/// The agent's scan writes a mark for a task it read in cgroup.threads a
/// moment ago. A task that exited since (a zombie: /proc/TGID/task/TID is
/// still there) must not keep it, or the next process given that pid would
/// be the target's. Driven through the scan itself (`mark_tasks`, on the
/// pinned maps) with a zombie the test holds unreaped; judged from the map.
#[test]
fn scan_marks_no_task_that_already_exited() {
    let Some(agent) = Agent::start() else { return };
    let run = run_bg(&agent, "scan-zombie", &["sleep", "1000"], 1);
    let _guard = Escapees(vec![run.pid()]);
    let id = target_row(&agent, "scan-zombie").expect("listed")["cgroup_id"].as_u64().expect("cgroup_id");
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let zombie = child.id();
    let state = || std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default();
    wait_until(Duration::from_secs(5), || state().rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))).expect("a zombie");
    let gen = killpath::kernel::pins::generations(&agent.pin_dir).pop().expect("a pin generation");
    let mut maps = killpath::kernel::maps::Maps::open_pinned(&gen).expect("the pinned maps");
    let members = maps.members.as_mut().expect("the membership maps are pinned");
    let added = members.mark_tasks(&agent.target_cgroup("scan-zombie"), &[zombie], id, &[]);
    assert_eq!(added, 0, "no mark counted for a task that already exited");
    assert_eq!(members.get(zombie), None, "no mark left under the zombie's pid {zombie}");
    let _ = child.wait();
}

/// Detaches a bind mount, whatever happens.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A workload that can mount (root, below degrade's `mount` revocation)
/// bind-mounts a stat file reading "Z" (a zombie) over one of its tasks'
/// /proc/PID/task/TID/stat before the target is adopted. The agent reads
/// liveness from the real procfs (RESOLVE_NO_XDEV refuses the mount), so
/// that running task is still marked: its move out is an escape, and the
/// stop kills it. Judged from outside: /proc, after the stop.
#[test]
fn fake_proc_stat_does_not_make_a_running_task_gone() {
    let Some(agent) = Agent::start() else { return };
    let cg = crate::support::cgroup::make_cgroup(agent.cgroup_parent.join("faked"));
    let mut a = std::process::Command::new("sleep").arg("1000").spawn().expect("sleep a");
    let mut b = std::process::Command::new("sleep").arg("1000").spawn().expect("sleep b");
    let (pa, pb) = (a.id() as i32, b.id() as i32);
    let _guard = Escapees(vec![pa, pb]);
    for p in [pa, pb] {
        std::fs::write(cg.path().join("cgroup.procs"), p.to_string()).expect("into the cgroup");
    }
    let fake = agent.dir.path().join("fake-stat");
    std::fs::write(&fake, format!("{pa} (sleep) Z 1 {pa} {pa} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0\n")).expect("fake stat");
    let stat = std::path::PathBuf::from(format!("/proc/{pa}/task/{pa}/stat"));
    nix::mount::mount(Some(&fake), &stat, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).expect("bind-mount the fake stat");
    let _unmount = Unmount(stat.clone());
    assert!(std::fs::read_to_string(&stat).expect("stat").contains(" Z "), "the path now reads the fake");
    agent.json(&["adopt", "faked", "--cgroup", cg.path().to_str().expect("utf-8 path")]);
    let parent = agent.cgroup_parent.join("cgroup.procs");
    for p in [pa, pb] {
        std::fs::write(&parent, p.to_string()).expect("move out to the cgroup parent");
    }
    let r = agent.json(&["stop", "faked"]);
    for (p, child) in [(pa, &mut a), (pb, &mut b)] {
        let dead = wait_until(Duration::from_secs(3), || child.try_wait().ok().flatten().is_some()).is_some();
        assert!(dead, "{p} survived the stop: {r}");
    }
}

/// Python: names itself with bytes that are not UTF-8 (prctl
/// PR_SET_NAME), then sleeps.
const BYTE_NAMED: &str = "import ctypes, time\nctypes.CDLL(None).prctl(15, b'\\xff\\xfe', 0, 0, 0)\ntime.sleep(1000)\n";

/// A task that names itself with bytes that are not UTF-8 (its /proc
/// stat and status then are not UTF-8 either) is still read as alive and
/// as its process's: adopted with its cgroup, it is marked, its move out
/// is an escape, and with the agent dead the CLI's direct stop finds it
/// outside by its mark and kills it. Judged from outside: the journal and
/// /proc.
#[test]
fn task_named_with_non_utf8_bytes_stays_marked_and_dies_at_stop() {
    let Some(mut agent) = Agent::start() else { return };
    let cg = crate::support::cgroup::make_cgroup(agent.cgroup_parent.join("bytes"));
    let mut child = std::process::Command::new("/usr/bin/python3").args(["-c", BYTE_NAMED]).spawn().expect("python");
    let pid = child.id() as i32;
    let _guard = Escapees(vec![pid]);
    std::fs::write(cg.path().join("cgroup.procs"), pid.to_string()).expect("into the cgroup");
    let comm = || std::fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
    wait_until(Duration::from_secs(5), || comm().starts_with(b"\xff\xfe")).unwrap_or_else(|| panic!("comm {:?}", comm()));
    agent.json(&["adopt", "bytes", "--cgroup", cg.path().to_str().expect("utf-8 path")]);
    std::fs::write(crate::membership::root_procs(), pid.to_string()).expect("move out to the root");
    wait_until(Duration::from_secs(5), || !crate::membership::escape_records(&agent, pid).is_empty())
        .unwrap_or_else(|| panic!("no escape record for {pid}\nlog:\n{}", agent.log_text()));
    agent.kill9();
    std::fs::write(crate::membership::root_procs(), pid.to_string()).expect("move out again, nobody moves it back");
    let r = crate::membership::direct_stop(&agent, "bytes");
    let dead = wait_until(Duration::from_secs(3), || child.try_wait().ok().flatten().is_some()).is_some();
    assert!(dead, "{pid} survived the stop: {r}");
    assert_eq!(r["survivors"], 0, "{r}");
}
