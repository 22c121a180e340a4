//! `killpath run --no-privileges` and `--user USER[:GROUP]`: the CLI,
//! already moved into the target by the agent, gives up every privilege
//! before it execs the workload, and checks in /proc/self/status that it
//! did (fail closed: no exec if anything is left).
//!
//! Order matters: the bounding set and securebits need CAP_SETPCAP, so
//! they go before setuid (which clears the permitted set); groups and gid
//! before uid (after setuid, setgid is no longer allowed).
use std::io;

use crate::error::{Error, Result};

use super::Creds;

/// The uid and gid to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// uid of `nobody`, used when root asks for `--no-privileges` without
/// `--user`: uid 0 without capabilities still owns the root-owned
/// `cgroup.procs` files and may signal every root process.
pub const NOBODY: u32 = 65534;

/// Resolves `USER[:GROUP]`, by name or number. A user without a group
/// takes its passwd entry's primary group.
pub fn resolve(spec: &str) -> Result<Identity> {
    let bad = |why: String| Error::InvalidRequest(format!("--user {spec}: {why}"));
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(n) => nix::unistd::User::from_uid(n.into()).map_err(|e| bad(e.to_string()))?,
        Err(_) => Some(nix::unistd::User::from_name(user).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("no user {user:?}")))?),
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (Some(e), _) => e.uid.as_raw(),
        (None, Ok(n)) => n,
        (None, Err(_)) => return Err(bad(format!("no user {user:?}"))),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g).map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("no group {g:?}")))?.gid.as_raw(),
        },
        None => entry.map(|e| e.gid.as_raw()).ok_or_else(|| bad(format!("uid {uid} has no passwd entry; give --user {uid}:GID")))?,
    };
    Ok(Identity { uid, gid })
}

fn check(what: &str, r: libc::c_long) -> Result<()> {
    if r < 0 {
        return Err(Error::Io { what: what.to_owned(), source: io::Error::last_os_error() });
    }
    Ok(())
}

/// CAP_SETPCAP's number (libc does not export the capability numbers).
const CAP_SETPCAP: u32 = 8;

/// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}

/// Gives up every privilege: no_new_privs, empty bounding and ambient
/// sets, optionally another uid/gid (with only that group), then empty
/// effective/permitted/inheritable sets. Returns the credentials read back
/// from /proc/self/status, after checking nothing is left.
pub fn drop_all(to: Option<Identity>) -> Result<Creds> {
    // SAFETY (every prctl/syscall below): plain integer arguments, no
    // memory shared with the kernel except the capset structs, which live
    // for the call.
    // 1. No setuid-root program, file capability or LSM transition can
    //    give anything back across execve from now on (inherited by every
    //    descendant, cannot be unset).
    check("prctl(PR_SET_NO_NEW_PRIVS)", unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())?;
    let have_setpcap = {
        let me = std::fs::read_to_string("/proc/self/status").ok().and_then(|t| Creds::parse(0, &t));
        me.is_some_and(|c| c.cap_eff & (1 << CAP_SETPCAP) != 0)
    };
    // 2. The bounding set: what execve could ever put back into the
    //    permitted set (uid 0's exec gets all of it). Needs CAP_SETPCAP; a
    //    caller without it holds no capabilities to lose, and no_new_privs
    //    already keeps execve from adding any.
    if have_setpcap {
        // Lock root's special casing too: execve by uid 0 no longer
        // grants capabilities, and that cannot be undone.
        let bits = libc::SECBIT_NOROOT | libc::SECBIT_NOROOT_LOCKED | libc::SECBIT_KEEP_CAPS_LOCKED | libc::SECBIT_NO_SETUID_FIXUP_LOCKED;
        check("prctl(PR_SET_SECUREBITS)", unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) }.into())?;
        for cap in 0..=last_cap() {
            check("prctl(PR_CAPBSET_DROP)", unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }.into())?;
        }
    }
    // 3. Ambient capabilities survive execve for non-root programs.
    //    EINVAL: a kernel before 4.3, which has no ambient set.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        check("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", r.into())?;
    }
    // 4. Another identity: only its one group, then gid, then uid (real,
    //    effective and saved alike, so nothing can switch back).
    if let Some(id) = to {
        let groups = [id.gid];
        check("setgroups", unsafe { libc::setgroups(1, groups.as_ptr()) }.into())?;
        check("setresgid", unsafe { libc::setresgid(id.gid, id.gid, id.gid) }.into())?;
        check("setresuid", unsafe { libc::setresuid(id.uid, id.uid, id.uid) }.into())?;
    }
    // 5. Effective, permitted and inheritable sets emptied (setuid from 0
    //    already cleared them; a root identity or SECBIT_KEEP_CAPS would
    //    not have). Dropping is always allowed.
    let mut hdr = CapHeader { version: CAP_V3, pid: 0 };
    let data = [CapData::default(); 2];
    check("capset", unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) })?;
    // 6. Read back what the kernel says this process now holds.
    let text = std::fs::read_to_string("/proc/self/status").map_err(Error::io("reading /proc/self/status"))?;
    let c = Creds::parse(std::process::id() as i32, &text).ok_or_else(|| Error::Kernel("/proc/self/status lacks credential fields".into()))?;
    let left = c.cap_prm | c.cap_eff | c.cap_amb;
    let bnd_ok = c.cap_bnd == 0 || !have_setpcap;
    let id_ok = to.is_none_or(|id| c.uids == [id.uid; 4] && c.gids == [id.gid; 4]);
    if left != 0 || !bnd_ok || !c.no_new_privs || !id_ok {
        return Err(Error::Kernel(format!("privileges left after dropping them: {c:?}")));
    }
    Ok(c)
}
