//! The reqwest Graph port against a scripted local HTTP server: the URL is built from the
//! mailbox, calls carry the Bearer token and a client-request-id, upload chunks carry
//! Content-Range and never an Authorization header, a 401 drops the token and retries once, a
//! 429 within the retry budget is waited out and a longer one becomes the error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ews_gateway::graph::http::{GraphTokens, HttpGraph, HttpGraphConfig};
use ews_gateway::graph::{GraphError, GraphPort, GraphRequest, LocalShaper, UploadChunk};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    auth: Option<String>,
    range: Option<String>,
    request_id: bool,
    body: Bytes,
}

type Script = Arc<dyn Fn(usize, &Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync>;

async fn server(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            let script = Arc::clone(&script);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    let script = Arc::clone(&script);
                    async move {
                        let header =
                            |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                        let mut s = Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            auth: header("authorization"),
                            range: header("content-range"),
                            request_id: header("client-request-id").is_some(),
                            body: Bytes::new(),
                        };
                        s.body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut l = log.lock().unwrap();
                            l.push(s.clone());
                            l.len() - 1
                        };
                        let (status, headers, body) = script(n, &s);
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        for (k, v) in headers {
                            resp.headers_mut().insert(k, v.parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (base, seen)
}

struct Tokens {
    issued: AtomicUsize,
    invalidated: Mutex<Vec<String>>,
}

struct Shared(Arc<Tokens>);

impl GraphTokens for Shared {
    async fn token(&self) -> Result<Arc<str>, GraphError> {
        let n = self.0.issued.load(Ordering::SeqCst);
        Ok(Arc::from(format!("graph-token-{n}")))
    }

    fn invalidate(&self, bearer: &str) {
        self.0.invalidated.lock().unwrap().push(bearer.to_owned());
        self.0.issued.fetch_add(1, Ordering::SeqCst);
    }
}

fn port(base: &str, max_retry_wait: Duration) -> (HttpGraph<Shared, LocalShaper>, Arc<Tokens>) {
    let tokens = Arc::new(Tokens {
        issued: AtomicUsize::new(0),
        invalidated: Mutex::new(Vec::new()),
    });
    let graph = HttpGraph::new(
        reqwest::Client::new(),
        HttpGraphConfig {
            graph_url: format!("{base}/"),
            deadline: Duration::from_secs(20),
            max_retry_wait,
        },
        Shared(Arc::clone(&tokens)),
        LocalShaper::default(),
    );
    (graph, tokens)
}

#[tokio::test]
async fn calls_carry_the_token_and_the_mailbox_url() {
    let (base, seen) = server(Arc::new(|_, _| {
        (
            200,
            vec![("content-type", "application/json".into())],
            r#"{"id":"x"}"#.into(),
        )
    }))
    .await;
    let (graph, _) = port(&base, Duration::from_secs(5));
    let r = graph
        .call(
            "alice@contoso.example",
            GraphRequest::post_json("/sendMail", serde_json::json!({"a": 1})),
        )
        .await
        .unwrap();
    assert_eq!(r.json.unwrap()["id"], "x");
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/v1.0/users/alice@contoso.example/sendMail");
    assert_eq!(s.auth.as_deref(), Some("Bearer graph-token-0"));
    assert!(s.request_id);
    assert_eq!(&s.body[..], br#"{"a":1}"#);
    // A mailbox cannot smuggle a path.
    assert_eq!(
        graph.url("a/../b@x?y#z", "/messages"),
        format!("{base}/v1.0/users/a%2F..%2Fb@x%3Fy%23z/messages")
    );
}

#[tokio::test]
async fn uploads_carry_content_range_and_no_authorization() {
    let (base, seen) = server(Arc::new(|n, _| {
        if n == 0 {
            (200, vec![], r#"{"nextExpectedRanges":["5-"]}"#.into())
        } else {
            (201, vec![], String::new())
        }
    }))
    .await;
    let (graph, _) = port(&base, Duration::from_secs(5));
    let url = format!("{base}/upload/opaque");
    for (start, bytes) in [(0u64, &b"hello"[..]), (5, &b"world!"[..])] {
        graph
            .upload(
                "alice@contoso.example",
                &url,
                UploadChunk {
                    start,
                    total: 11,
                    bytes: Bytes::copy_from_slice(bytes),
                },
            )
            .await
            .unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.method == "PUT" && s.auth.is_none()));
    assert_eq!(seen[0].range.as_deref(), Some("bytes 0-4/11"));
    assert_eq!(seen[1].range.as_deref(), Some("bytes 5-10/11"));
    assert_eq!(&seen[1].body[..], b"world!");
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let (base, seen) = server(Arc::new(|_, s| {
        if s.auth.as_deref() == Some("Bearer graph-token-0") {
            (
                401,
                vec![],
                r#"{"error":{"code":"InvalidAuthenticationToken","message":"expired"}}"#.into(),
            )
        } else {
            (200, vec![], "{}".into())
        }
    }))
    .await;
    let (graph, tokens) = port(&base, Duration::from_secs(5));
    graph
        .call(
            "alice@contoso.example",
            GraphRequest::get("/mailFolders/inbox"),
        )
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(*tokens.invalidated.lock().unwrap(), vec!["graph-token-0"]);
}

#[tokio::test]
async fn throttling_is_waited_out_within_budget_else_reported() {
    let throttled = r#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#;
    let (base, seen) = server(Arc::new(move |n, _| {
        if n == 0 {
            (429, vec![("retry-after", "1".into())], throttled.into())
        } else {
            (200, vec![], "{}".into())
        }
    }))
    .await;
    let (graph, _) = port(&base, Duration::from_secs(5));
    graph
        .call("alice@contoso.example", GraphRequest::get(""))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2, "retried after Retry-After");

    let (base, seen) = server(Arc::new(move |_, _| {
        (429, vec![("retry-after", "120".into())], throttled.into())
    }))
    .await;
    let (graph, _) = port(&base, Duration::from_secs(5));
    let err = graph
        .call("alice@contoso.example", GraphRequest::get(""))
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 1, "no retry past the budget");
    match err {
        GraphError::Api {
            status: 429,
            code,
            retry_after,
            ..
        } => {
            assert_eq!(code, "ApplicationThrottled");
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("{other:?}"),
    }
}
