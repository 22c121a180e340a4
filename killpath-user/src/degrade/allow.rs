//! Degrade's allow-lists as the operator writes them: `--allow-connect
//! CIDR[:PORT]` (an LPM trie key). `--allow-write` directories are resolved
//! to (dev, inode) by the agent (`agent/degrade.rs`).
use std::net::IpAddr;

use killpath_common::{ConnectAllow, CONNECT_ALLOW_FIXED_BITS};

use crate::error::{Error, Result};

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
}
