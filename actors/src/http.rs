//! Serving HTTP with the limits an edge on a network needs, for the gateway and the
//! metrics listener, so that sockets that never speak cannot pile up:
//! - the header timeout runs from the moment a connection opens, so it also covers the
//!   sniff between HTTP/1 and HTTP/2 (hyper's own header timeout starts only after it): a
//!   connection that has not begun a request by then is closed, whatever it sent;
//! - a connection with no request in progress for `idle_timeout` is closed (HTTP/1
//!   keep-alive and HTTP/2 alike), and HTTP/2 pings find peers that vanished mid-stream;
//! - an event stream whose client stops reading (a frame handed over and not taken within
//!   `write_timeout`: the client's buffers are full) has its connection closed, which ends
//!   the stream as a client that went away would;
//! - at most `max_connections` are open: at the cap a new connection makes the silent or
//!   longest-idle one close (see `http/connections.rs`); with none idle, the new one is
//!   closed at once;
//! - a failed `accept` (out of file descriptors) closes an idle connection to free one
//!   and backs off, doubling up to a second, instead of spinning.
//!
//! Also `TCP_NODELAY` (an SSE event per token goes out at once instead of waiting ~40 ms
//! for a delayed ACK), and a graceful stop (no new connections; open ones finish their
//! requests). `axum::serve` sets none of this on hyper; this is the same loop with them.

mod connections;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, Router};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use connections::{Busy, Conn, Connections, Due, Timeouts};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From opening to the first request's headers, and for each request's headers.
    pub(crate) header_timeout: Duration,
    /// With no request in progress, after the first.
    pub(crate) idle_timeout: Duration,
    /// HTTP/2 ping interval, and how long a ping may go unanswered.
    pub(crate) keep_alive_interval: Duration,
    /// How long a frame of an event stream may wait for the client to take it.
    pub(crate) write_timeout: Duration,
    /// Open connections at the most.
    pub(crate) max_connections: usize,
}

impl Limits {
    /// The gateway's settings.
    pub(crate) fn of(cfg: &bitinglip_config::GatewayConfig) -> Self {
        Self {
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            keep_alive_interval: cfg.keep_alive_interval,
            write_timeout: cfg.write_timeout,
            max_connections: cfg.max_connections,
        }
    }
}

/// Longest a closing connection is given to finish what it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` completes, then lets open connections finish.
pub(crate) async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: impl Future<Output = ()>) {
    let conns = Arc::new(Connections::default());
    let (closing, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(err) => {
                    // Out of file descriptors and the like: free one by closing an idle
                    // connection, wait, keep serving.
                    tracing::warn!(cause = %err, open = conns.len(), "accept failed");
                    conns.make_room(conns.len());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        if !conns.make_room(limits.max_connections) {
            // Every open connection is in the middle of a request: this one waits its turn
            // by reconnecting, rather than taking a descriptor above the cap.
            tracing::debug!(open = conns.len(), "connection refused: at the cap and none idle");
            drop(tcp);
            continue;
        }
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %err, "TCP_NODELAY not set");
        }
        let conn = conns.open();
        tokio::spawn(serve_connection(tcp, app.clone(), limits, conn, conns.clone(), closed.clone()));
    }
    let _ = closing.send(true);
}

/// One connection, until it ends, is due to close, or is told to.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    conn: Arc<Conn>,
    conns: Arc<Connections>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = tracked.begin();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(Body::new)).await.unwrap_or_else(|never| match never {});
            // Only event streams are watched for a client that stopped reading: a large
            // answer in one frame may take long to drain over a slow link.
            let stream = resp
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            Ok::<_, Infallible>(resp.map(|body| Body::new(Tracked { body, busy, stream })))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_interval);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    tokio::pin!(served);
    let timeouts = Timeouts { header: limits.header_timeout, idle: limits.idle_timeout, write: limits.write_timeout };
    let shortest = limits.header_timeout.min(limits.idle_timeout).min(limits.write_timeout);
    let mut wait = shortest;
    let graceful = loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(cause = %err, "connection ended with an error");
                }
                conns.closed(&conn);
                return;
            }
            _ = tokio::time::sleep(wait) => {
                match conn.due(conn.age(), timeouts) {
                    // Never longer than the shortest timeout: a request that began since
                    // (and so a stream that may stall) is looked at in time.
                    Due::Wait(next) => wait = next.min(shortest),
                    // Silent from the start, or not reading: nothing to finish, drop it.
                    Due::Drop => break false,
                    Due::Close => break true,
                }
            }
            _ = conn.close.notified() => break conn.spoke(),
            // The guard `wait_for` returns is dropped at once: it may not live across an await.
            _ = async { stopping.wait_for(|c| *c).await.map(|_| ()) } => {
                served.as_mut().graceful_shutdown();
                let _ = served.await;
                conns.closed(&conn);
                return;
            }
        }
    };
    conns.closed(&conn);
    if graceful {
        // Between requests: HTTP/2 gets its GOAWAY, a request that raced in finishes.
        served.as_mut().graceful_shutdown();
        if conn.is_idle() {
            let _ = tokio::time::timeout(CLOSE_GRACE, served).await;
        } else {
            let _ = served.await;
        }
    }
}

/// A response body that keeps its connection busy until it is finished or dropped, and
/// for an event stream tells the connection when a frame waits for the client.
struct Tracked {
    body: Body,
    busy: Busy,
    stream: bool,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if !this.stream {
            return Pin::new(&mut this.body).poll_frame(cx);
        }
        // Asked again: what was handed over before was taken.
        this.busy.asked();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            this.busy.handed();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `resp` with `guard` held until its body is finished or dropped (a connection kept busy,
/// a key's request counted as in progress).
pub(crate) fn hold<G: Send + Unpin + 'static>(resp: axum::response::Response, guard: G) -> axum::response::Response {
    resp.map(|body| Body::new(Held { body, _guard: guard }))
}

/// A response body that holds a guard.
struct Held<G> {
    body: Body,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for Held<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
