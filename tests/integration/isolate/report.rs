//! The channel catalog an isolate response carries and the table `verify`
//! prints, checked against what this kernel can enforce.
use serde_json::Value;

use super::{CATALOG, VERIFY_CHANNELS};
use crate::support::{net::ipv6_loopback, status::strs};

/// The `verify` row of `channel`.
pub(super) fn row<'a>(verify: &'a Value, channel: &str) -> &'a Value {
    verify.as_array().unwrap_or_else(|| panic!("no verify rows: {verify}")).iter().find(|r| r["channel"] == channel).unwrap_or_else(|| panic!("no {channel} row in {verify}"))
}

/// Asserts that `channels` (the catalog in a response) claims a cut exactly
/// for the enforced channels and lists every other one in `open_channels`.
pub(super) fn assert_catalog(r: &Value, open: &[&str]) {
    let channels = r["channels"].as_array().unwrap_or_else(|| panic!("no channels list: {r}"));
    let names: Vec<&str> = channels.iter().map(|c| c["channel"].as_str().unwrap_or("")).collect();
    assert_eq!(names, CATALOG, "the catalog names every channel isolation covers: {r}");
    for c in channels {
        let name = c["channel"].as_str().unwrap_or("");
        let enforced = !open.contains(&name);
        assert_eq!(c["enforced"], enforced, "{name}: enforced must be {enforced} on this kernel: {c}");
        let by = c["by"].as_str().unwrap_or("");
        if enforced {
            assert!(!by.contains("needs"), "{name} is enforced, by a real mechanism: {c}");
        } else {
            assert!(by.contains("BPF LSM"), "{name}: says BPF LSM is what it lacks: {c}");
        }
    }
    let mut listed = strs(&r["open_channels"]);
    listed.sort();
    let mut want: Vec<String> = open.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(listed, want, "open_channels names exactly what is not enforced: {r}");
}

/// Asserts a verify table: every channel in `open` is OPEN (with detail
/// `open_detail`), every other one is cut; tcp6 may only be skipped when
/// the host has no ::1; established-tcp as given (and tun-fd too when
/// established-tcp is skipped: both are opened before the cut).
pub(super) fn assert_verify(verify: &Value, open: &[&str], established: &str, open_detail: Option<&str>) {
    let rows = verify.as_array().unwrap_or_else(|| panic!("no verify rows: {verify}"));
    let names: Vec<&str> = rows.iter().map(|r| r["channel"].as_str().unwrap_or("")).collect();
    assert_eq!(names, VERIFY_CHANNELS, "{verify}");
    for ch in VERIFY_CHANNELS {
        let r = row(verify, ch);
        let detail = r["detail"].as_str().unwrap_or("");
        assert!(!detail.is_empty(), "every verdict says what was seen: {r}");
        if *ch == "established-tcp" || (*ch == "tun-fd" && established == "skipped") {
            // Both need something opened from inside before the cut.
            assert_eq!(r["result"], established, "{r}");
        } else if *ch == "tcp6" && !ipv6_loopback() {
            assert_eq!(r["result"], "skipped", "{r}");
        } else if open.contains(ch) {
            assert_eq!(r["result"], "OPEN", "{ch} must be reported OPEN: {r}\nall rows: {verify}");
            if let Some(d) = open_detail {
                assert!(detail.contains(d), "{ch}: detail should say {d:?}: {r}");
            }
        } else {
            assert_eq!(r["result"], "cut", "{ch} must be cut: {r}\nall rows: {verify}");
        }
    }
}
