//! Connection-level resource limits (`[limits]`): header count and size, concurrent
//! connections, the first-head timeout (slowloris), the keep-alive idle timeout (which must not
//! cut a streaming response), the request body size with Content-Length and chunked, and the
//! body-read timeout (a trickled body is cut and its upstream request aborted).
//! Malformed or slow requests are written by hand on a TCP stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn basic(user: (&str, &str)) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.0, user.1));
    format!("Basic {token}")
}

fn post_raw(auth: Option<&str>, extra_headers: &str, body: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml; charset=utf-8\r\n{auth}{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response head (up to the blank line) from `stream`, or `None` if it closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => {
                head.push(byte[0]);
                if head.ends_with(b"\r\n\r\n") {
                    return Some(String::from_utf8_lossy(&head).into_owned());
                }
            }
            Ok(_) => return None,
            Err(_) => panic!("no answer and no close within 10 s"),
        }
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`, reading and discarding.
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn too_many_header_fields_get_431_and_nothing_goes_upstream() {
    let demo = start_demo_tuned(|c| c.limits.max_header_count = 20, "").await;
    let many: String = (0..30).map(|i| format!("X-Filler-{i}: v\r\n")).collect();
    let body = envelope(Some(version_header()), find_inbox());
    let (raw, _) = raw_exchange(
        demo.gateway.addr,
        &post_raw(Some(&basic(ALICE)), &many, &body),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        raw_status(&raw),
        Some(431),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(demo.sim.ews_requests().is_empty());

    // Under the cap the same request is served.
    let few: String = (0..5).map(|i| format!("X-Filler-{i}: v\r\n")).collect();
    let (raw, _) = raw_exchange(
        demo.gateway.addr,
        &post_raw(Some(&basic(ALICE)), &few, &body),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        raw_status(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(demo.sim.ews_requests().len(), 1);
    demo.stop().await;
}

#[tokio::test]
async fn a_header_block_over_max_header_bytes_gets_431() {
    let demo = start_demo_tuned(|c| c.limits.max_header_bytes = 8192, "").await;
    let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let (raw, _) = raw_exchange(
        demo.gateway.addr,
        &post_raw(Some(&basic(ALICE)), &big, "<x/>"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        raw_status(&raw),
        Some(431),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(demo.sim.requests().iter().all(|r| !r.is_ews()));
    demo.stop().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once_and_served_again_when_free() {
    let demo = start_demo_tuned(|c| c.limits.max_connections = 2, "").await;
    let addr = demo.gateway.addr;
    // Two connections hold both slots (each has answered a request, so each is really served).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        held.push(s);
    }
    // A third is closed without an answer.
    let (raw, closed) = raw_exchange(
        addr,
        b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        closed && raw.is_empty(),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // Free one slot; a new connection is served once the gateway has seen the close.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let (raw, _) = raw_exchange(
            addr,
            b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        if raw_status(&raw) == Some(401) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a freed slot is used again");
    drop(held);
    demo.stop().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_at_header_read_timeout_and_nothing_goes_upstream() {
    let demo = start_demo_tuned(|c| c.limits.header_read_timeout_seconds = 1, "").await;
    let mut s = TcpStream::connect(demo.gateway.addr).await.unwrap();
    let auth = basic(ALICE);
    let head = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Length: 10\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Slowloris: one header byte every 200 ms, never finishing the head.
    let mut closed = false;
    for i in 0..50 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        if i % 5 == 4 && closes_within(&mut s, Duration::from_millis(1)).await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "the gateway must close a head that never completes");
    assert!(demo.sim.ews_requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout() {
    // The first head gets 30 s, the idle wait after a response only 1 s.
    let demo = start_demo_tuned(|c| c.limits.idle_timeout_seconds = 1, "").await;
    let mut s = TcpStream::connect(demo.gateway.addr).await.unwrap();
    s.write_all(b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(
        closes_within(&mut s, Duration::from_secs(15)).await,
        "an idle kept-alive connection is closed (well before the 30 s head timeout)"
    );

    // With the default idle timeout the same connection stays usable for a second request.
    let demo2 = start_demo_tuned(|_| {}, "").await;
    let mut s = TcpStream::connect(demo2.gateway.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    demo.stop().await;
    demo2.stop().await;
}

#[tokio::test]
async fn a_streaming_response_outlives_the_idle_and_head_timeouts() {
    let mut sim_config = ews_gateway::sim::SimConfig::builtin().unwrap();
    sim_config.streaming_heartbeat = Duration::from_millis(300);
    let sim = ews_gateway::sim::start(sim_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let demo = start_gateway_for(
        sim,
        |c| {
            c.limits.idle_timeout_seconds = 1;
            c.limits.header_read_timeout_seconds = 1;
        },
        "",
    )
    .await;
    let url = demo.gateway.ews_url();
    let mut resp = open_stream(&url, ALICE, version_header(), 1).await;
    // Heartbeats keep arriving for well over three times both timeouts.
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream must not end while the subscription's minute runs");
        if String::from_utf8_lossy(&chunk).contains("<m:ConnectionStatus>OK</m:ConnectionStatus>") {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 4, "{heartbeats} heartbeats");
    drop(resp);
    demo.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_with_content_length_is_refused_before_upstream() {
    let demo = start_demo_tuned(|c| c.limits.max_body_bytes = 10_000, "").await;
    let filler = format!("<!--{}-->", "x".repeat(20_000));
    let body = envelope(Some(version_header()), &format!("{}{filler}", find_inbox()));
    let reply = post(&demo.gateway.ews_url(), Some(ALICE), body).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("ErrorMessageSizeExceeded"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("10000 bytes"), "{}", reply.body);
    assert!(demo.sim.ews_requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_never_reaches_exchange_whole() {
    let demo = start_demo_tuned(|c| c.limits.max_body_bytes = 10_000, "").await;
    let auth = basic(ALICE);
    // The head is complete in the first chunk; the limit is crossed while streaming the rest.
    let first = format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header>{}</s:Header><s:Body><m:FindItem Traversal=\"Shallow\">",
        version_header()
    );
    let mut req = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n",
        first.len()
    );
    let filler = format!("<!--{}-->", "y".repeat(4000));
    for _ in 0..5 {
        req.push_str(&format!("{:x}\r\n{filler}\r\n", filler.len()));
    }
    let tail = "<m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem></s:Body></s:Envelope>";
    req.push_str(&format!("{:x}\r\n{tail}\r\n0\r\n\r\n", tail.len()));
    let (raw, _) = raw_exchange(demo.gateway.addr, req.as_bytes(), Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(raw_status(&raw), Some(500), "{text}");
    assert!(text.contains("ErrorMessageSizeExceeded"), "{text}");
    assert!(text.contains("10000 bytes"), "{text}");
    // Whatever Exchange saw, it never saw a complete request body over the limit.
    for r in demo.sim.ews_requests() {
        assert!(
            r.body.len() <= 10_000 + 512,
            "{} bytes reached Exchange",
            r.body.len()
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("</s:Envelope>"));
    }

    // Chunked under the limit is served, byte for byte.
    let small = envelope(Some(version_header()), find_inbox());
    let req = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
        small.len()
    );
    let before = demo.sim.ews_requests().len();
    let (raw, _) = raw_exchange(demo.gateway.addr, req.as_bytes(), Duration::from_secs(20)).await;
    assert_eq!(
        raw_status(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(demo.sim.ews_requests().len(), before + 1);
    demo.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_at_body_read_timeout_and_the_upstream_request_is_aborted() {
    // A stand-in Exchange that records what arrives on its one connection and how it ended: the
    // simulator would wait for the whole body, so only a raw listener shows the abort itself.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/EWS/Exchange.asmx",
        upstream.local_addr().unwrap()
    );
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = loop {
            match conn.read(&mut buf).await {
                Ok(0) => break "eof",
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break "reset",
            }
        };
        let _ = seen_tx.send((got, ended));
    });
    let demo = start_demo_tuned(
        |c| {
            c.limits.body_read_timeout_seconds = 2;
            c.upstream.ews_url = url.clone();
        },
        "",
    )
    .await;
    let auth = basic(ALICE);
    // The envelope head is complete, so forwarding starts; the rest never comes but a byte a second.
    let first = format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header>{}</s:Header><s:Body><m:FindItem Traversal=\"Shallow\">",
        version_header()
    );
    let head = format!(
        "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{first}",
        first.len() + 1000
    );
    let s = TcpStream::connect(demo.gateway.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut answer))
        .await
        .is_ok();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(closed, "the gateway must close the connection: {text}");
    assert_eq!(raw_status(&answer), Some(500), "{text}");
    assert!(text.contains("ErrorTimeoutExpired"), "{text}");
    assert!(text.contains("limit of 2 s"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "cut early: {elapsed:?}"
    );
    // The upstream request had started (the head was forwarded) and was aborted: its connection
    // was closed with the body incomplete, not left open waiting for the rest.
    let (got, ended) = tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .expect("the upstream connection was left open")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("POST /EWS/Exchange.asmx"), "{got}");
    assert!(got.contains("ExchangeImpersonation"), "{got}");
    assert!(!got.contains("</s:Envelope>"), "{got}");
    assert!(["eof", "reset"].contains(&ended));
    trickle.abort();
    demo.stop().await;
}

#[test]
fn limits_must_be_positive() {
    let users = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[auth]
users_file = "{}"
[upstream]
ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "contoso.example"
client_id = "11111111-2222-4333-8444-555555555555"
client_secret_env = "PATH"
[limits]
max_connections = 0
idle_timeout_seconds = 0
body_read_timeout_seconds = 0
max_header_count = 0
max_header_bytes = 100
"#,
        users.path().display()
    );
    let mut config: ews_gateway::config::Config = toml::from_str(&text).unwrap();
    let err = config.validate().unwrap_err().to_string();
    for key in [
        "limits.max_connections",
        "limits.idle_timeout_seconds",
        "limits.body_read_timeout_seconds",
        "limits.max_header_count",
        "limits.max_header_bytes",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    config.limits = Default::default();
    config.validate().unwrap();
}
