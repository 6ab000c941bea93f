//! HTTP plumbing shared by the gateway and the simulator: body types and the accept loop.
//!
//! Both servers are hyper 1 HTTP/1.1 servers on a tokio listener, optionally behind rustls; the
//! accept loop here owns connection tasks and graceful shutdown so neither server re-implements it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Boxed error used in streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of both servers: buffered or streamed, boxed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a handler knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Remote address of the TCP peer.
    pub peer: SocketAddr,
    /// Local address the request arrived on.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Per-server connection settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time allowed for a new connection to complete its TLS handshake and first request head.
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait, with no request in progress, for the next complete
    /// request head. Never applies while a response is streaming.
    pub idle_timeout: Duration,
    /// Maximum bytes in a request head.
    pub max_header_bytes: usize,
    /// Maximum header fields in a request head (hyper answers 431 beyond it).
    pub max_header_count: usize,
    /// Maximum connections served at once; a connection beyond it is closed right after accept.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_connections: 1024,
        }
    }
}

/// Whether a connection is serving a request, and since when it has not been.
///
/// hyper's own header-read timer starts when a connection begins waiting for a head, so it would
/// make the keep-alive idle time and the head time one number; this watch keeps them apart.
/// Requests count as in progress from their head until hyper drops the response body, so a
/// long-lived streaming response (EWS streaming notifications, up to 30 minutes) is never idle.
#[derive(Debug)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the last response ended; `None` before the first request.
    last_end: std::sync::Mutex<Option<tokio::time::Instant>>,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last_end: std::sync::Mutex::new(None),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// When the connection is to be closed if it is still idle then; `None` while serving.
    fn deadline(
        &self,
        opened: tokio::time::Instant,
        options: &ServeOptions,
    ) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        let last_end = self.last_end.lock().map(|g| *g).unwrap_or(None);
        Some(match last_end {
            None => opened + options.header_read_timeout,
            Some(end) => end + options.idle_timeout,
        })
    }

    /// Resolves when the connection has been idle past its deadline.
    async fn expired(&self, opened: tokio::time::Instant, options: &ServeOptions) {
        loop {
            match self.deadline(opened, options) {
                None => self.changed.notified().await,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if self.deadline(opened, options).is_some_and(|d| d <= tokio::time::Instant::now()) {
                                return;
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// One request in progress; ends when dropped (with the response body, or the handler future).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut end) = self.0.last_end.lock() {
            *end = Some(tokio::time::Instant::now());
        }
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// A response body that holds its request's [`InFlight`] until hyper is done with it.
struct TrackedBody {
    inner: Body,
    _flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive in full by a deadline (`[limits] body_read_timeout_seconds`):
/// a client that sends its head and then trickles the body would otherwise hold a connection,
/// a mailbox slot and, once forwarding started, an upstream request open for as long as it likes.
/// Past the deadline the next poll fails with [`BodyReadTimeout`]; streamed upstream, that error
/// aborts the upstream request and closes its connection.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    failed: bool,
}

impl<B> DeadlineBody<B> {
    /// `inner`, which must end within `limit` from now.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            failed: false,
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        // Checked before the body, so a client that keeps a trickle flowing is still cut.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.failed = true;
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout {
                seconds: this.limit.as_secs(),
            }))));
        }
        std::pin::Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive in full within the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {seconds} s")]
pub struct BodyReadTimeout {
    /// The configured timeout.
    pub seconds: u64,
}

/// The [`BodyReadTimeout`] anywhere in `err`'s source chain.
pub fn body_read_timeout<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyReadTimeout> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(timeout) = e.downcast_ref::<BodyReadTimeout>() {
            return Some(timeout);
        }
        current = e.source();
    }
    None
}

/// Accepts connections until `shutdown` fires, then waits for in-flight connections to finish.
///
/// `handler` is called once per request; it never fails (errors are responses).
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Resource exhaustion (EMFILE) must not end the server; pause briefly and go on.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once rather than left in the accept backlog:
        // a client then fails fast and retries, instead of hanging behind connections that may be
        // slow on purpose; the ones being served are not slowed down.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = options.max_connections, "connection refused: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().or(local).unwrap_or(peer);
        let handler = Arc::clone(&handler);
        let tls = tls.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let opened = tokio::time::Instant::now();
            let activity = Activity::new();
            let info = ConnInfo {
                peer,
                local,
                tls: tls.is_some(),
            };
            let service_activity = Arc::clone(&activity);
            let service = service_fn(move |req| {
                let handler = Arc::clone(&handler);
                let flight = service_activity.begin();
                async move {
                    let resp = handler(req, info).await;
                    let resp = resp.map(|inner| {
                        TrackedBody {
                            inner,
                            _flight: flight,
                        }
                        .boxed_unsync()
                    });
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = http1::Builder::new();
            // hyper's timer is the outer bound; `Activity` applies the first-head and idle limits.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_read_timeout.max(options.idle_timeout))
                .max_buf_size(options.max_header_bytes.max(8192))
                .max_header_size(options.max_header_bytes)
                .max_headers(options.max_header_count)
                .keep_alive(true);
            let idle = async { activity.expired(opened, &options).await };
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(options.header_read_timeout, acceptor.accept(stream))
                            .await;
                    let Ok(Ok(tls_stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    drive(conn, shutdown, idle).await;
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    drive(conn, shutdown, idle).await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn drive<I, S>(
    conn: http1::Connection<I, S>,
    shutdown: CancellationToken,
    idle: impl Future<Output = ()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with error");
            }
        }
        // Idle means no request in progress: dropping the connection loses nothing.
        _ = idle => {
            tracing::debug!("connection closed: idle or request head not complete in time");
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with error during shutdown");
            }
        }
    }
}
