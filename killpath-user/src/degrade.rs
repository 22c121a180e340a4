//! Level 2, degrade, on the user side: the capability catalog, what this
//! kernel can enforce of it, and `--allow-connect` parsing.
use std::net::IpAddr;

use killpath_common::{cap, ConnectAllow, CONNECT_ALLOW_FIXED_BITS};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every capability: name, bit, what refuses it.
pub const CATALOG: &[(&str, u32, &str)] = &[
    ("net.connect", cap::NET_CONNECT, "cgroup connect4/6 + sendmsg4/6 (allow-list: LPM trie)"),
    ("net.listen", cap::NET_LISTEN, "BPF LSM socket_listen"),
    ("net.raw", cap::NET_RAW, "cgroup sock_create (raw IP) + BPF LSM socket_create (packet sockets)"),
    ("net.unix", cap::NET_UNIX, "BPF LSM socket_create + socket_connect (AF_UNIX)"),
    ("fs.write", cap::FS_WRITE, "BPF LSM file_open (for write) + path_mknod/mkdir/unlink/rmdir/rename/link/symlink/truncate/chmod/chown; allow-list by directory inode"),
    ("exec", cap::EXEC, "BPF LSM bprm_check_security"),
    ("fork", cap::FORK, "BPF LSM task_alloc (threads stay allowed)"),
    ("signal", cap::SIGNAL, "BPF LSM task_kill (receivers outside the target)"),
    ("ptrace", cap::PTRACE, "BPF LSM ptrace_access_check + ptrace_traceme"),
    ("mount", cap::MOUNT, "BPF LSM sb_mount + move_mount + sb_umount"),
    ("bpf", cap::BPF, "BPF LSM bpf"),
    ("module", cap::MODULE, "BPF LSM kernel_module_request + kernel_load_data + kernel_read_file"),
    ("setid", cap::SETID, "BPF LSM task_fix_setuid + task_fix_setgid"),
];

/// One capability and whether this kernel enforces its revocation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capability {
    pub name: String,
    pub enforceable: bool,
    pub detail: String,
}

/// Why capabilities cannot be enforced on this kernel (None: they can).
#[derive(Clone, Debug, Default)]
pub struct KernelGaps {
    /// BPF LSM unavailable.
    pub lsm: Option<String>,
    /// fs.write offsets missing from BTF.
    pub fs: Option<String>,
    /// signal offsets missing from BTF.
    pub signal: Option<String>,
}

/// The catalog on this kernel.
pub fn capabilities(gaps: &KernelGaps) -> Vec<Capability> {
    let lsm_error = gaps.lsm.as_deref();
    CATALOG
        .iter()
        .map(|(name, bit, by)| {
            let btf_gap = match *bit {
                cap::FS_WRITE => gaps.fs.as_deref(),
                cap::SIGNAL => gaps.signal.as_deref(),
                _ => None,
            };
            let (enforceable, detail) = if let (Some(gap), None) = (btf_gap, lsm_error) {
                (false, format!("not enforceable on this kernel: {gap}"))
            } else if *bit == cap::NET_CONNECT {
                (true, (*by).to_owned())
            } else {
                match lsm_error {
                    None => (true, (*by).to_owned()),
                    Some(_) => (false, "not enforceable on this kernel: needs BPF LSM (see `killpath probe`)".to_owned()),
                }
            };
            Capability { name: (*name).to_owned(), enforceable, detail }
        })
        .collect()
}

/// Bit of a capability name.
pub fn bit(name: &str) -> Result<u32> {
    CATALOG.iter().find(|(n, _, _)| *n == name).map(|(_, b, _)| *b).ok_or_else(|| {
        let names: Vec<&str> = CATALOG.iter().map(|(n, _, _)| *n).collect();
        Error::InvalidRequest(format!("unknown capability {name:?}; known: {}", names.join(", ")))
    })
}

/// Names of the bits set in `mask`.
pub fn names(mask: u32) -> Vec<&'static str> {
    CATALOG.iter().filter(|(_, b, _)| mask & b != 0).map(|(n, _, _)| *n).collect()
}

/// Name of capability bit index `index` (as in denial keys/events).
pub fn name_of_index(index: u32) -> &'static str {
    CATALOG.iter().find(|(_, b, _)| b.trailing_zeros() == index).map_or("unknown", |(n, _, _)| *n)
}

/// Parses `CIDR[:PORT]`: `10.1.0.0/16:5432`, `127.0.0.1`, `[::1]/128:443`,
/// `::/0`. Returns the LPM key (prefix length, data) for target `cgroup_id`.
pub fn parse_allow_connect(spec: &str, cgroup_id: u64) -> Result<(u32, ConnectAllow)> {
    let bad = |why: &str| Error::InvalidRequest(format!("bad --allow-connect {spec:?}: {why}"));
    let (addr_part, port) = if let Some(rest) = spec.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
        let (inner, plen) = match after.split_once(':') {
            Some((p, port)) => ((inner, p), Some(port)),
            None => ((inner, after), None),
        };
        (format!("{}{}", inner.0, inner.1), plen)
    } else {
        match spec.matches(':').count() {
            0 | 1 => match spec.rsplit_once(':') {
                Some((a, p)) => (a.to_owned(), Some(p)),
                None => (spec.to_owned(), None),
            },
            _ => (spec.to_owned(), None),
        }
    };
    let port: u16 = match port {
        None => 0,
        Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("port must be 1-65535"))?,
    };
    let (ip, plen) = match addr_part.split_once('/') {
        Some((ip, l)) => (ip.to_owned(), Some(l.parse::<u32>().map_err(|_| bad("prefix length is not a number"))?)),
        None => (addr_part.clone(), None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
    let (addr, bits) = match ip {
        IpAddr::V4(v4) => {
            let l = plen.unwrap_or(32);
            if l > 32 {
                return Err(bad("IPv4 prefix length above 32"));
            }
            (v4.to_ipv6_mapped().octets(), 96 + l)
        }
        IpAddr::V6(v6) => {
            let l = plen.unwrap_or(128);
            if l > 128 {
                return Err(bad("IPv6 prefix length above 128"));
            }
            (v6.octets(), l)
        }
    };
    Ok((CONNECT_ALLOW_FIXED_BITS + bits, ConnectAllow { cgroup_id: cgroup_id.to_ne_bytes(), port_be: port.to_be(), _pad: 0, addr }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_connect_specs() {
        let (l, k) = parse_allow_connect("10.1.0.0/16:5432", 7).unwrap();
        assert_eq!(l, CONNECT_ALLOW_FIXED_BITS + 96 + 16);
        assert_eq!(u16::from_be(k.port_be), 5432);
        assert_eq!(&k.addr[12..], &[10, 1, 0, 0]);
        assert_eq!(parse_allow_connect("127.0.0.1", 7).unwrap().0, CONNECT_ALLOW_FIXED_BITS + 128);
        assert_eq!(parse_allow_connect("::1", 7).unwrap().0, CONNECT_ALLOW_FIXED_BITS + 128);
        let (l, k) = parse_allow_connect("[fd00::]/8:443", 7).unwrap();
        assert_eq!((l, u16::from_be(k.port_be)), (CONNECT_ALLOW_FIXED_BITS + 8, 443));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4:0", "1.2.3.4:99999", "[::1", "1.2.3.4/x"] {
            assert!(parse_allow_connect(bad, 7).is_err(), "{bad}");
        }
    }

    #[test]
    fn catalog_names_round_trip() {
        for (n, b, _) in CATALOG {
            assert_eq!(bit(n).unwrap(), *b);
            assert_eq!(name_of_index(b.trailing_zeros()), *n);
        }
        assert!(bit("net.teleport").is_err());
        assert_eq!(names(cap::EXEC | cap::FORK), vec!["exec", "fork"]);
    }
}
