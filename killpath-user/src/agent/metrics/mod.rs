//! `killpath agent --metrics ADDR`: Prometheus metrics over HTTP
//! (`GET /metrics`, the text format 0.0.4, encoded by `prometheus-client`,
//! served by `hyper`). Off unless asked for.
//!
//! Every value is read at scrape time from the kernel maps, the agent's
//! state and the kernel's files ([`sample`]), never from the workload. A
//! scrape never blocks a stop: it holds the state lock only to copy
//! numbers and walk the maps once (no file I/O), it takes it like any
//! background task (it waits while a stop is announced, and gives the lock
//! back at once to a stop that announces itself: `stop_first`), it runs at
//! the nice value of a read-only command, and at most [`CONCURRENT`]
//! scrapes run at a time, so a flood of scrapes queues here, not on the
//! lock.
mod encode;
mod journal;
mod recorded;
mod sample;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

pub(super) use recorded::{count_request, observe_effect, observe_stop};

use super::State;
use crate::error::{Error, Result};

/// Scrapes served at once; more are answered 503.
const CONCURRENT: usize = 2;

/// A client must send its request head within this (a connection that
/// dribbles bytes does not hold a task forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// Binds the metrics address before the agent loads anything (an address
/// in use fails the start with an error naming it); served by [`serve`]
/// once the runtime runs.
pub(super) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).map_err(Error::io(format!("binding the metrics address {addr} (--metrics)")))?;
    l.set_nonblocking(true).map_err(Error::io("setting the metrics socket non-blocking"))?;
    Ok(l)
}

/// What every scrape shares.
struct Shared {
    state: Arc<Mutex<State>>,
    slots: Semaphore,
    verify: journal::VerifyCache,
    /// The running build's pin generation directory.
    gen: std::path::PathBuf,
}

/// Accepts scrapers forever.
pub(super) async fn serve(listener: std::net::TcpListener, state: Arc<Mutex<State>>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("metrics: not served: {e}"),
    };
    if let Ok(local) = listener.local_addr() {
        tracing::info!(metrics = %local, "serving Prometheus metrics on http://{local}/metrics");
    }
    let gen = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).enforcer.generation().to_owned();
    let shared = Arc::new(Shared { state, slots: Semaphore::new(CONCURRENT), verify: Default::default(), gen });
    // Open connections are capped: a flood of idle connections (from a
    // target that can reach the port) must not use up the agent's file
    // descriptors, which a stop needs (pidfds, cgroup.kill, the journal).
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the cap: closed at once (dropping the stream), not queued.
        let Ok(open) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _open = open;
            let svc = hyper::service::service_fn(move |req| respond(req, shared.clone()));
            // One request per connection (Prometheus reconnects cheaply),
            // and a connection that sends nothing is closed after the
            // header timeout.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "metrics connection ended: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn respond(req: Request<Incoming>, shared: Arc<Shared>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, TEXT, "killpath serves its metrics at /metrics\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET /metrics\n".into()));
    }
    // Scrapes beyond the concurrent ones are answered 503 at once rather
    // than queued behind them.
    let Ok(_slot) = shared.slots.try_acquire() else {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{CONCURRENT} scrapes already running\n")));
    };
    let s = shared.clone();
    let body = tokio::task::spawn_blocking(move || scrape(&s)).await;
    Ok(match body {
        Ok(Ok(text)) => reply(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text),
        Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("encoding the metrics failed: {e}\n")),
        Err(e) => {
            tracing::error!("metrics: scrape panicked: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "internal error; the agent is still running\n".into())
        }
    })
}

/// One scrape, on a blocking thread (see the module doc).
fn scrape(shared: &Shared) -> std::result::Result<String, std::fmt::Error> {
    let _reader = super::stop_first::Reader::enter();
    let started = std::time::Instant::now();
    let (sample, locked_us) = {
        let held = super::stop_first::background(&shared.state);
        let locked = std::time::Instant::now();
        (sample::Sample::take(&held), locked.elapsed().as_micros())
    };
    recorded::forget_targets_except(&sample.targets.iter().map(|t| t.name.as_str()).collect());
    let text = encode::encode(&sample.finish(&shared.gen, &shared.verify));
    tracing::debug!(locked_us, total_us = started.elapsed().as_micros(), "metrics scraped");
    text
}
