//! The agent's unix socket: newline-delimited JSON, one request per line.
//! Each connection is its own task, so a slow or hostile client never
//! blocks another; malformed input gets an error response and the
//! connection (and the agent) keep going.
use std::{
    fs,
    os::unix::fs::{chown, PermissionsExt},
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder, Framed};
use tracing::{debug, error, info, warn};

use super::{Caller, State};
use crate::{
    client::protocol::{self, Command, ErrorBody, Response, MAX_LINE},
    error::{Error, Result},
};

/// Streams alerts and sampled denials to one subscriber until it goes away.
async fn subscribe(mut framed: Framed<UnixStream, RequestCodec>, id: Value, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (mut rx, head) = {
        let s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (s.events.subscribe(), s.journal_head.clone())
    };
    // Every event carries the journal head (see `anchor`).
    let head = move || head.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let send = |v: Value| serde_json::to_string(&Response::ok(id.clone(), v)).unwrap_or_default();
    let err = |e: AnyDelimiterCodecError| std::io::Error::other(e.to_string());
    framed.send(send(serde_json::json!({"subscribed": true}))).await.map_err(err)?;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let line = match ev {
                    Ok(ev) => send(serde_json::json!({"event": super::anchor::with_head(ev, &head())})),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => send(serde_json::json!({"event": {"type": "lagged", "missed": n}})),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                };
                framed.send(line).await.map_err(err)?;
            }
            // Anything from the subscriber (or its hang-up) ends the stream.
            _ = framed.next() => return Ok(()),
        }
    }
}

/// Reads sampled denials from the kernel's ring buffer and publishes them.
pub async fn denial_reader(rb: aya::maps::RingBuf<aya::maps::MapData>, state: Arc<Mutex<State>>) {
    super::ring::read_batches::<killpath_common::DenialEvent, _, _>(rb, "denial", |events| {
        let s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ev in events {
            let _ = s.events.send(s.denial_json(&ev));
        }
        std::future::ready(())
    })
    .await;
}

/// Line framing with a length cap. Unlike a plain line codec, bytes left
/// without a newline when the peer hangs up are dropped, never executed:
/// half a `stop` request is not a request. An oversized line is an item,
/// not a decoder error: `Framed` ends the stream after any error, and a
/// too-long line must cost the client one error response, not its
/// connection.
struct RequestCodec(AnyDelimiterCodec);

/// One framed input.
enum Frame {
    Line(Bytes),
    /// A line over [`MAX_LINE`]; the codec discards it up to its newline.
    TooLong,
}

impl Decoder for RequestCodec {
    type Item = Frame;
    type Error = AnyDelimiterCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Ok(Some(Frame::TooLong)),
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if !buf.is_empty() {
            debug!(bytes = buf.len(), "dropping unterminated request at hang-up");
            buf.clear();
        }
        Ok(None)
    }
}

impl Encoder<String> for RequestCodec {
    type Error = AnyDelimiterCodecError;

    fn encode(&mut self, item: String, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.0.encode(item, dst)
    }
}

/// Binds the socket: parent dir created, stale socket replaced, mode 0600
/// (0660 and chgrp when a group is configured).
pub fn bind(state: &State) -> Result<UnixListener> {
    let path = &state.config.socket;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io { what: format!("removing stale socket {}", path.display()), source: e }),
    }
    let listener = UnixListener::bind(path).map_err(Error::io(format!("binding {}", path.display())))?;
    let mode = if state.config.group.is_some() { 0o660 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("setting socket mode"))?;
    if let Some(gid) = state.config.group {
        chown(path, None, Some(gid)).map_err(Error::io("setting socket group"))?;
    }
    Ok(listener)
}

/// Accepts connections forever.
pub async fn serve(listener: UnixListener, state: Arc<Mutex<State>>) {
    info!("serving");
    // Read once: a new connection never waits for the state lock.
    let (group, unlocked, early) = {
        let s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (s.config.group, super::stop_first::Unlocked::of(&s), super::confinement_unlocked::Early::open(&s))
    };
    // Stops run on their own thread (see `stop_thread`); without it, in
    // the blocking pool like before (the agent still serves).
    let stops = super::stop_thread::StopThread::start().map_err(|e| error!("{e}")).ok();
    let fixed = Arc::new(Fixed { group, unlocked, early, stops, in_flight: super::stop_thread::InFlight::new() });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                let fixed = fixed.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, state, fixed).await {
                        debug!("connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn authorized(caller: Caller, group: Option<u32>) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let Some(g) = group else { return false };
    if caller.gid == g {
        return true;
    }
    // SO_PEERCRED carries only the primary gid; supplementary groups are in
    // /proc/PID/status (the peer pid is the kernel's, not a claim).
    fs::read_to_string(format!("/proc/{}/status", caller.pid))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Groups:").map(str::to_owned)))
        .is_some_and(|l| l.split_whitespace().any(|x| x.parse() == Ok(g)))
}

/// What every connection shares: the agent's group, what commands served
/// without the state lock read, the stop thread and the cap on requests in
/// flight.
struct Fixed {
    group: Option<u32>,
    unlocked: super::stop_first::Unlocked,
    /// Confinement checked before queueing (`confinement_unlocked`).
    early: Option<super::confinement_unlocked::Early>,
    stops: Option<super::stop_thread::StopThread>,
    in_flight: super::stop_thread::InFlight,
}

type Shared = Arc<Fixed>;

async fn connection(stream: UnixStream, state: Arc<Mutex<State>>, fixed: Shared) -> std::io::Result<()> {
    let mut drill = None;
    let r = serve_connection(stream, state.clone(), fixed, &mut drill).await;
    // A drill whose connection closed without drill-end (its client was
    // interrupted or died): the agent puts its target back.
    if let Some(id) = drill {
        let _ = tokio::task::spawn_blocking(move || {
            state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).abandon_drill(id, "its client disconnected before ending it");
        })
        .await;
    }
    r
}

async fn serve_connection(stream: UnixStream, state: Arc<Mutex<State>>, fixed: Shared, drill: &mut Option<u64>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().unwrap_or(0);
    // Held for the connection's life: each request checks the caller is
    // still this very process (see `confinement`).
    let pidfd = super::confinement::peer_pidfd(&stream, pid);
    let mut caller = Caller { uid: cred.uid(), gid: cred.gid(), pid, drill: None, pidfd: pidfd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd), source: None };
    let group = fixed.group;
    let codec = RequestCodec(AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_LINE));
    let mut framed = Framed::new(stream, codec);
    while let Some(frame) = framed.next().await {
        let received = Instant::now();
        let mut command = "invalid";
        let response = match frame {
            Ok(Frame::TooLong) => {
                Response::err(Value::Null, ErrorBody::new("too-long", format!("request line longer than {MAX_LINE} bytes; discarded up to the next newline")))
            }
            Err(AnyDelimiterCodecError::Io(e)) => return Err(e),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => return Ok(()),
            Ok(Frame::Line(line)) => match protocol::decode(&line) {
                Err(d) => Response::err(d.id, d.error),
                Ok(req) if req.cmd == Command::Events {} => return subscribe(framed, req.id, state).await,
                Ok(req) => {
                    command = req.cmd.name();
                    let state = state.clone();
                    let shared = fixed.clone();
                    let fixed = fixed.clone();
                    let id = req.id.clone();
                    let (begins, ends) = (matches!(req.cmd, Command::DrillBegin { .. }), matches!(req.cmd, Command::DrillEnd { .. }));
                    if begins && drill.is_some() {
                        let e = ErrorBody::new("bad-request", "a drill is already running on this connection");
                        framed
                            .send(serde_json::to_string(&Response::err(id, e)).unwrap_or_default())
                            .await
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        continue;
                    }
                    caller.drill = *drill;
                    // A caller inside a target is refused before anything is
                    // queued: its requests never wait on the stop thread nor
                    // hold a thread (`confinement_unlocked`).
                    if let Some(e) = super::confinement_unlocked::refuse(fixed.early.as_ref(), &req.cmd, caller, &state).await {
                        let refused = Response::err(id, ErrorBody::new(e.code(), e.to_string()));
                        // Counted like the refusals under the lock
                        // (`killpath_socket_refused_callers_total`).
                        super::metrics::count_request(command, &refused);
                        let line = serde_json::to_string(&refused).unwrap_or_default();
                        framed.send(line).await.map_err(|e| std::io::Error::other(e.to_string()))?;
                        continue;
                    }
                    let mutates = req.cmd.mutates();
                    let allowed = !mutates || authorized(caller, group);
                    let is_stop = matches!(req.cmd, Command::Stop { .. });
                    let run = move || run_request(&state, &fixed.unlocked, req.cmd, caller, allowed, received);
                    // A stop never waits for a thread, nor behind the cap.
                    // Nor does any other command that changes something:
                    // the cap is for reads, which a task inside a target may
                    // send too (confinement), and a target flooding `status`
                    // must not make an operator's isolate or approve `busy`.
                    let r = match shared.stops.as_ref().filter(|_| is_stop) {
                        Some(stops) => Ok(stops.run(Box::new(run)).await),
                        None if mutates => tokio::task::spawn_blocking(run).await,
                        None => match shared.in_flight.enter().await {
                            // Blocking work (fsync, waiting for a cgroup to
                            // empty) runs off the async threads.
                            Some(slot) => {
                                tokio::task::spawn_blocking(move || {
                                    let r = run();
                                    drop(slot);
                                    r
                                })
                                .await
                            }
                            None => Ok(Err(Error::Busy { cap: super::stop_thread::IN_FLIGHT })),
                        },
                    };
                    match r {
                        Ok(Ok(v)) => {
                            if begins {
                                *drill = v["drill"].as_u64();
                            }
                            if ends {
                                *drill = None;
                            }
                            Response::ok(id, v)
                        }
                        Ok(Err(e)) => Response::err(id, ErrorBody::new(e.code(), e.to_string())),
                        Err(e) => {
                            error!("handler panicked: {e}");
                            Response::err(id, ErrorBody::new("internal", "internal error; the agent is still running"))
                        }
                    }
                }
            },
        };
        super::metrics::count_request(command, &response);
        let line = serde_json::to_string(&response).unwrap_or_else(|_| r#"{"id":null,"ok":false,"error":{"code":"internal","message":"encode"}}"#.into());
        framed.send(line).await.map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Serves one request that is not answered by the connection itself: on
/// the stop thread for a stop, in the blocking pool otherwise.
fn run_request(state: &Mutex<State>, unlocked: &super::stop_first::Unlocked, cmd: Command, caller: Caller, allowed: bool, received: Instant) -> Result<Value> {
    // A read-only command runs below the agent's priority (`stop_first`).
    let _reader = (!cmd.mutates()).then(super::stop_first::Reader::enter);
    if let Some(r) = unlocked.serve(&cmd) {
        return r;
    }
    // A trail read holds it for its snapshot only (`trail_read`).
    if let Some(r) = super::trail_read::serve(state, &cmd, caller) {
        return r;
    }
    // `status` holds the state lock for its snapshot only.
    if let Command::Status { name } = &cmd {
        return super::status::serve(state, &cmd, name.as_deref());
    }
    // A name to resolve is resolved before the lock (`named`).
    let pre = if allowed { super::named::Prepared::before_lock(unlocked, &cmd) } else { super::named::Prepared::default() };
    // A panicked handler must not take the agent down with it: keep
    // serving from the state as it was left. A stop goes ahead of
    // everything else (`stop_first`).
    let mut s = super::stop_first::lock(state, &cmd);
    if !allowed {
        s.journal_refusal(caller, &cmd)?;
        return Err(Error::Forbidden { uid: caller.uid });
    }
    // A task of a target may read but never change anything (nor begin a
    // drill, nor `run`): resolved now, per request, from the kernel's view
    // of the caller's cgroup.
    if cmd.confined() {
        let refusal = match s.caller_target(caller) {
            Ok(None) => None,
            Ok(Some(target)) => Some((Error::InsideTarget { pid: caller.pid, target: target.clone() }, Some(target))),
            Err(e) => Some((e, None)),
        };
        if let Some((e, target)) = refusal {
            s.journal_confined_refusal(caller, &cmd, &e, target.as_deref())?;
            return Err(e);
        }
    }
    if matches!(cmd, Command::Stop { .. }) {
        super::stop_first::checked();
    }
    s.handle(cmd, caller, received, pre)
}
