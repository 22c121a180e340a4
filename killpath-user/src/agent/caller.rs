//! Who is asking: the peer's credentials from SO_PEERCRED, and the drill
//! its connection began, if any.
use crate::journal::Actor;

/// Who is asking, from SO_PEERCRED.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// The drill this connection began, if any: its commands are the drill's.
    pub drill: Option<u64>,
    /// A pidfd of the peer (owned by its connection), to tell a live
    /// caller from a recycled pid; None for the agent's own actions.
    pub pidfd: Option<std::os::fd::RawFd>,
    /// Set for actions the agent takes on its own (a kernel raise, a
    /// timeout): journaled as that source rather than as a peer.
    pub source: Option<&'static str>,
}

impl Caller {
    /// The agent acting on its own, journaled as `source`.
    pub(super) fn agent(source: &'static str) -> Self {
        Self { source: Some(source), ..Self::AGENT }
    }

    /// The agent acting on its own (a pending action applied or dropped on
    /// timeout): journaled as `{"source": "agent"}`. pid -1 is never a
    /// peer's (SO_PEERCRED pids are positive, or 0 when unknown).
    pub(super) const AGENT: Caller = Caller { uid: 0, gid: 0, pid: -1, drill: None, pidfd: None, source: Some("agent") };

    pub(super) fn actor(self) -> Actor {
        match (self.source, self.drill) {
            (Some(source), _) => Actor::Source { source: source.to_owned() },
            (None, Some(d)) => super::drill::actor(d, self.uid, self.pid),
            (None, None) => Actor::Caller { uid: self.uid, pid: self.pid },
        }
    }
}
