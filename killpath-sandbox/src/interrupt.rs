//! Ctrl-C during a run: the sandbox's tasks die at once, from the signal
//! handler itself (a fork bomb must not outlive an interrupted run even
//! for a moment), and the run notices at its next check and cleans up.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use crate::error::{Error, Result};

/// Set by SIGINT, SIGTERM or SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The `cgroup.kill` file written from the handler.
static KILL_FILE: OnceLock<CString> = OnceLock::new();

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if let Some(path) = KILL_FILE.get() {
        // SAFETY: open, write and close are async-signal-safe; the path is
        // a NUL-terminated string that lives as long as the process.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP; it writes `1` to
/// `kill_file` (a `cgroup.kill`). The first call's file wins.
pub fn install(kill_file: &Path) -> Result<()> {
    let path = CString::new(kill_file.as_os_str().as_bytes())
        .map_err(|e| Error::Io { what: format!("{} holds a NUL byte", kill_file.display()), source: std::io::Error::other(e) })?;
    let _ = KILL_FILE.set(path);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zero-initialised sigaction is valid; the handler does
        // only async-signal-safe work.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Error::Io { what: format!("sigaction({signal})"), source: std::io::Error::last_os_error() });
        }
    }
    Ok(())
}

/// Whether one of those signals arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
