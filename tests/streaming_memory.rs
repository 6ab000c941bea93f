//! A 100 MB request streams through the real `ews-gateway serve` binary with bounded memory.
//!
//! The upstream here is a draining server (not the simulator, which would parse 100 MB into a
//! tree) and the token endpoint a fixed answer; the gateway is a child process whose peak RSS
//! (`VmHWM`) is read from /proc.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

#[derive(Default, Debug, Clone)]
struct Seen {
    len: u64,
    sha256: Vec<u8>,
    authorization: String,
    anchor: String,
}

async fn serve_fn<F, Fut>(f: F) -> std::net::SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_through_with_bounded_memory() {
    let token_addr = serve_fn(|_req| async {
        Response::new(Full::new(Bytes::from_static(
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"stub-access-token"}"#,
        )))
    })
    .await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen_upstream = Arc::clone(&seen);
    let upstream_addr = serve_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen_upstream);
        async move {
            let authorization = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let anchor = req.headers().get("x-anchormailbox").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                }
            }
            *seen.lock().unwrap() = Seen { len, sha256: hasher.finalize().to_vec(), authorization, anchor };
            let mut resp = Response::new(Full::new(Bytes::from_static(b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>")));
            resp.headers_mut().insert("content-type", "text/xml; charset=utf-8".parse().unwrap());
            resp
        }
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let hash = ews_gateway::auth::hash_password("scan-pass").unwrap();
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"scanner@contoso.example\"\npassword_hash = \"{hash}\"\n"),
    )
    .unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[listen]
address = "127.0.0.1:0"
[auth]
users_file = "{}"
[upstream]
ews_url = "http://{upstream_addr}/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "contoso.example"
client_id = "11111111-2222-4333-8444-555555555555"
client_secret_env = "STREAM_TEST_SECRET"
authority = "http://{token_addr}"
"#,
            users.display()
        ),
    )
    .unwrap();
    let gateway = common::spawn_serve(&config, &[("STREAM_TEST_SECRET", "s3cret")]);
    let pid = gateway.child.id();
    let gw_addr = gateway.addr.clone();

    let head = "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\" xmlns:t=\"http://schemas.microsoft.com/exchange/services/2006/types\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/></s:Header><s:Body><m:CreateAttachment><m:ParentItemId Id=\"AAMk\"/><m:Attachments><t:FileAttachment><t:Name>scan.pdf</t:Name><t:Content>";
    let tail = "</t:Content></t:FileAttachment></m:Attachments></m:CreateAttachment></s:Body></s:Envelope>";
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: usize = 100;
    let filler = Bytes::from(vec![b'A'; CHUNK]);
    let total = (head.len() + tail.len() + CHUNK * CHUNKS) as u64;
    let mut expected = Sha256::new();
    let injected = ews_gateway::soap::ConnectingSid {
        kind: ews_gateway::soap::ConnectingSidKind::PrimarySmtpAddress,
        value: "scanner@contoso.example".into(),
    }
    .to_header_xml();

    // Warm up: the first request pays argon2 (19 MiB by design) and fills pools; then reset the
    // peak so that only the streaming request is measured.
    let warm = reqwest::Client::new()
        .post(format!("http://{gw_addr}/EWS/Exchange.asmx"))
        .basic_auth("scanner@contoso.example", Some("scan-pass"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(format!("{head}AAAA{tail}"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status().as_u16(), 200);
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let rss_before = vm_kib(pid, "VmRSS:");
    let parts: Vec<Bytes> = std::iter::once(Bytes::from(head))
        .chain(std::iter::repeat_n(filler, CHUNKS))
        .chain(std::iter::once(Bytes::from(tail)))
        .collect();
    // What Exchange must receive: the client's bytes with the impersonation closing the Header.
    let rewritten_head = head.replacen("</s:Header>", &format!("{injected}</s:Header>"), 1);
    expected.update(rewritten_head.as_bytes());
    for p in &parts[1..] {
        expected.update(p);
    }
    let expected = expected.finalize().to_vec();
    let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
    let resp = reqwest::Client::new()
        .post(format!("http://{gw_addr}/EWS/Exchange.asmx"))
        .basic_auth("scanner@contoso.example", Some("scan-pass"))
        .header("content-type", "text/xml; charset=utf-8")
        .header("content-length", total)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let hwm = vm_kib(pid, "VmHWM:");
    drop(gateway);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.authorization, "Bearer stub-access-token");
    assert_eq!(seen.anchor, "scanner@contoso.example");
    assert_eq!(
        seen.len,
        total + injected.len() as u64,
        "upstream got every byte plus the header"
    );
    assert_eq!(
        seen.sha256, expected,
        "upstream got exactly the client's bytes plus the header"
    );
    let growth_mib = hwm.saturating_sub(rss_before) / 1024;
    eprintln!(
        "gateway RSS before {rss_before} KiB, peak {hwm} KiB, growth {growth_mib} MiB for a {} MiB body",
        total / 1024 / 1024
    );
    assert!(
        growth_mib < 24,
        "peak memory grew by {growth_mib} MiB while streaming 100 MiB"
    );
}
