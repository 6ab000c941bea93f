//! Helpers for `bench/run.sh`, not part of the gateway: a fast fixed-response EWS upstream (so the
//! upstream is never the bottleneck), a client that holds many idle streaming connections, and a
//! client that times cold (argon2) against cached credential checks.
//!
//! It lives in `src/bin` so that `cargo build --release` builds it beside the gateway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::stream::{self, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    name = "ews-gateway-bench",
    about = "Benchmark helpers (see bench/run.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A keep-alive upstream that drains each request body and answers a fixed FindItem
    /// response; a GetStreamingEvents request gets a response that stays open.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Opens `--conns` GetStreamingEvents connections, waits for each response to start, prints
    /// `ready N`, and holds them for `--hold-seconds`.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 60)]
        hold_seconds: u64,
    },
    /// For each user `PREFIX{i}@DOMAIN`, times the first request (a cold password verification)
    /// and a second one (cached); prints one JSON line with the medians in microseconds.
    Cold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        users: Vec<String>,
        #[arg(long)]
        password: String,
        #[arg(long)]
        body_file: std::path::PathBuf,
    },
    /// Sends `--n` requests one after another on one keep-alive connection and fails unless
    /// every answer is 200 (the deterministic load of bench/callgrind-check.sh).
    Send {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        n: usize,
        #[arg(long)]
        user: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        body_file: std::path::PathBuf,
    },
}

const FIND_ITEM_RESPONSE: &str = include_str!("../../bench/finditem-response.xml");
const STREAMING_FIRST: &str = "<Envelope xmlns=\"http://schemas.xmlsoap.org/soap/envelope/\"><Body><GetStreamingEventsResponse xmlns=\"http://schemas.microsoft.com/exchange/services/2006/messages\"><ResponseMessages><GetStreamingEventsResponseMessage ResponseClass=\"Success\"><ResponseCode>NoError</ResponseCode><ConnectionStatus>OK</ConnectionStatus></GetStreamingEventsResponseMessage></ResponseMessages></GetStreamingEventsResponse></Body></Envelope>";

type RespBody = BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Upstream { listen } => upstream(listen).await,
        Command::Idle {
            addr,
            conns,
            user,
            password,
            hold_seconds,
        } => idle(addr, conns, &user, &password, hold_seconds).await,
        Command::Cold {
            addr,
            users,
            password,
            body_file,
        } => cold(addr, &users, &password, &body_file).await,
        Command::Send {
            addr,
            n,
            user,
            password,
            body_file,
        } => send(addr, n, &user, &password, &body_file).await,
    }
}

#[allow(clippy::print_stdout)]
async fn upstream(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("addr={}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                // EMFILE under the idle-connection load: wait and go on.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

/// Drains the body (remembering whether it is a GetStreamingEvents call) and answers.
async fn answer(req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    const NEEDLE: &[u8] = b"GetStreamingEvents";
    let mut body = req.into_body();
    let mut streaming = false;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data()
            && !streaming
        {
            // Search across chunk boundaries with the previous chunk's last bytes.
            tail.extend_from_slice(&data[..data.len().min(4096)]);
            streaming = tail.windows(NEEDLE.len()).any(|w| w == NEEDLE);
            let keep = tail.len().saturating_sub(NEEDLE.len());
            tail.drain(..keep);
        }
    }
    let body: RespBody = if streaming {
        let first = stream::once(async {
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(STREAMING_FIRST.as_bytes())))
        });
        // The response stays open until the peer goes away, as a streaming subscription does.
        BodyExt::boxed(StreamBody::new(first.chain(stream::pending())))
    } else {
        BodyExt::boxed(Full::new(Bytes::from_static(FIND_ITEM_RESPONSE.as_bytes())))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "request-id",
        http::HeaderValue::from_static("bench-0000-0000"),
    );
    Ok(resp)
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

const STREAMING_REQUEST: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/></s:Header><s:Body><m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>bench</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents></s:Body></s:Envelope>";

/// Opens one streaming connection and returns it once the response has started.
async fn open_streaming(addr: SocketAddr, request: &[u8]) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    // The head and the first notification: then the connection is idle.
    while !seen.windows(16).any(|w| w == b"ConnectionStatus") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
        if n == 0 {
            bail!("connection closed before the streaming response started");
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > 64 * 1024 {
            bail!("no streaming response");
        }
    }
    if !seen.starts_with(b"HTTP/1.1 200") {
        bail!(
            "streaming request answered {}",
            String::from_utf8_lossy(&seen[..seen.len().min(200)])
        );
    }
    Ok(stream)
}

#[allow(clippy::print_stdout)]
async fn idle(
    addr: SocketAddr,
    conns: usize,
    user: &str,
    password: &str,
    hold_seconds: u64,
) -> Result<()> {
    let request = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{STREAMING_REQUEST}",
        basic(user, password),
        STREAMING_REQUEST.len()
    );
    let request = Bytes::from(request);
    let started = Instant::now();
    // A bounded number of handshakes in flight, so the accept queues never overflow.
    let held: Vec<Result<TcpStream>> = stream::iter(0..conns)
        .map(|_| {
            let request = request.clone();
            async move { open_streaming(addr, &request).await }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(conns);
    let mut first_error = None;
    for r in held {
        match r {
            Ok(s) => streams.push(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        bail!(
            "{} of {conns} streaming connections failed; first: {e:#}",
            conns - streams.len()
        );
    }
    println!(
        "ready {} in {} ms",
        streams.len(),
        started.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(hold_seconds)).await;
    drop(streams);
    Ok(())
}

/// One request on a fresh connection; returns its duration in microseconds.
async fn timed_request(addr: SocketAddr, auth: &str, body: &Bytes) -> Result<u128> {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post("/EWS/Exchange.asmx")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Basic {auth}"))
        .header(http::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .body(Full::new(body.clone()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("request answered {status}");
    }
    Ok(started.elapsed().as_micros())
}

#[allow(clippy::print_stdout)]
async fn cold(
    addr: SocketAddr,
    users: &[String],
    password: &str,
    body_file: &std::path::Path,
) -> Result<()> {
    let body = Bytes::from(
        std::fs::read(body_file).with_context(|| format!("reading {}", body_file.display()))?,
    );
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for user in users {
        let auth = basic(user, password);
        cold.push(timed_request(addr, &auth, &body).await?);
        warm.push(timed_request(addr, &auth, &body).await?);
    }
    cold.sort_unstable();
    warm.sort_unstable();
    let median = |v: &[u128]| v.get(v.len() / 2).copied().unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "kind": "cold",
            "n": users.len(),
            "cold_us_median": median(&cold),
            "cold_us_min": cold.first(),
            "cold_us_max": cold.last(),
            "warm_us_median": median(&warm),
        })
    );
    Ok(())
}

async fn send(
    addr: SocketAddr,
    n: usize,
    user: &str,
    password: &str,
    body_file: &std::path::Path,
) -> Result<()> {
    let body = Bytes::from(
        std::fs::read(body_file).with_context(|| format!("reading {}", body_file.display()))?,
    );
    let auth = format!("Basic {}", basic(user, password));
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    for i in 0..n {
        let req = Request::post("/EWS/Exchange.asmx")
            .header(http::header::HOST, addr.to_string())
            .header(http::header::AUTHORIZATION, auth.as_str())
            .header(http::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(Full::new(body.clone()))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status != http::StatusCode::OK {
            bail!("request {i} answered {status}");
        }
    }
    Ok(())
}
