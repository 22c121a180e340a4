//! Readiness for a service manager (systemd `Type=notify`, see
//! deploy/systemd/killpath.service): `READY=1` once every program is
//! attached (in [`super::State::open`]) and the socket listens, so
//! `systemctl start killpath` returns only when a `killpath stop` would be
//! served; `STOPPING=1` when the agent exits. Without `NOTIFY_SOCKET` (not
//! started by systemd) both do nothing. A failed notification is logged,
//! never fatal: enforcement does not depend on the service manager.
use std::path::Path;

use sd_notify::NotifyState;
use tracing::warn;

/// Tells the service manager the agent serves `socket`.
pub(super) fn ready(socket: &Path) {
    let status = format!("serving {}", socket.display());
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!("cannot tell the service manager the agent is ready (NOTIFY_SOCKET): {e}");
    }
}

/// Tells the service manager the agent is exiting (enforcement stays).
pub(super) fn stopping() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("exiting; enforcement stays pinned in the kernel")]) {
        warn!("cannot tell the service manager the agent is stopping (NOTIFY_SOCKET): {e}");
    }
}
