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
    /// Time allowed for a client to send a complete request head.
    pub header_read_timeout: Duration,
    /// Maximum bytes in a request head.
    pub max_header_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
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
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().or(local).unwrap_or(peer);
        let handler = Arc::clone(&handler);
        let tls = tls.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let info = ConnInfo {
                peer,
                local,
                tls: tls.is_some(),
            };
            let service = service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(handler(req, info).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_read_timeout)
                .max_buf_size(options.max_header_bytes.max(8192))
                .keep_alive(true);
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
                    drive(conn, shutdown).await;
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    drive(conn, shutdown).await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn drive<I, S>(conn: http1::Connection<I, S>, shutdown: CancellationToken)
where
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
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with error during shutdown");
            }
        }
    }
}
