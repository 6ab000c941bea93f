#![allow(unreachable_pub)] // shared by several test crates, each using a part
//! Shared helpers for the integration tests: start the demo (simulator + gateway) on loopback
//! and talk SOAP to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ews_gateway::demo::{self, Demo};
use ews_gateway::sim::SimConfig;

pub const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

pub async fn start_demo() -> Demo {
    start_demo_with(SimConfig::builtin().unwrap()).await
}

pub async fn start_demo_with(config: SimConfig) -> Demo {
    ews_gateway::tls::install_crypto_provider();
    demo::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An envelope with the given header content and body content.
pub fn envelope(header: Option<&str>, body: &str) -> String {
    let header = match header {
        Some(h) => format!("<s:Header>{h}</s:Header>"),
        None => String::new(),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\">{header}<s:Body>{body}</s:Body></s:Envelope>"
    )
}

pub fn version_header() -> &'static str {
    "<t:RequestServerVersion Version=\"Exchange2016\"/>"
}

pub fn impersonation(kind: &str, value: &str) -> String {
    format!(
        "<t:ExchangeImpersonation><t:ConnectingSID><t:{kind}>{value}</t:{kind}></t:ConnectingSID></t:ExchangeImpersonation>"
    )
}

pub fn find_inbox() -> &'static str {
    "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem>"
}

pub fn find_inbox_of(mailbox: &str) -> String {
    format!(
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"><t:Mailbox><t:EmailAddress>{mailbox}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:ParentFolderIds></m:FindItem>"
    )
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

pub async fn post(url: &str, user: Option<(&str, &str)>, body: String) -> Reply {
    let mut req = client()
        .post(url)
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(body);
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

pub const ALICE: (&str, &str) = ("alice@contoso.example", "alice-demo-pass");
pub const BOB: (&str, &str) = ("bob@contoso.example", "bob-demo-pass");
pub const ARCHIVER: (&str, &str) = ("archiver@contoso.example", "archiver-demo-pass");

/// The real binary running `serve --config FILE`, killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// The address it reported listening on.
    pub addr: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ews-gateway serve --config <config>` with extra environment variables and waits for
/// the address it logs (`ews-gateway listening addr=...`).
pub fn spawn_serve(config: &std::path::Path, envs: &[(&str, &str)]) -> ServeProcess {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ews-gateway"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("addr=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the gateway did not report its address");
    ServeProcess { child, addr }
}

/// The demo with its gateway configuration changed by `tune` and `extra_users` (users-file TOML)
/// appended to the demo users.
pub async fn start_demo_tuned(
    tune: impl FnOnce(&mut ews_gateway::config::Config),
    extra_users: &str,
) -> Demo {
    ews_gateway::tls::install_crypto_provider();
    let sim = ews_gateway::sim::start(
        SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    start_gateway_for(sim, tune, extra_users).await
}

/// A gateway in front of an already running simulator, as the demo builds it, tuned.
pub async fn start_gateway_for(
    sim: ews_gateway::sim::SimHandle,
    tune: impl FnOnce(&mut ews_gateway::config::Config),
    extra_users: &str,
) -> Demo {
    let dir = std::env::temp_dir().join(format!("ews-gateway-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let users_file = dir.join("users.toml");
    let users = format!("{}\n{extra_users}", demo::demo_users_toml().unwrap());
    std::fs::write(&users_file, users).unwrap();
    let mut config =
        demo::gateway_config(&sim, "127.0.0.1:0".parse().unwrap(), users_file).unwrap();
    tune(&mut config);
    let gateway = ews_gateway::server::start(&config).await.unwrap();
    Demo {
        sim,
        gateway,
        dir,
        ca_pem: None,
    }
}

/// A users-file entry for `name` with `password`, acting as its own mailbox.
pub fn user_entry(name: &str, password: &str) -> String {
    let hash = ews_gateway::auth::hash_password(password).unwrap();
    format!("\n[[user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n")
}

/// A raw HTTP/1.1 exchange: writes `request` as given and reads until the server closes or
/// `deadline` passes. Returns everything read and whether the server closed the connection.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    deadline: std::time::Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may close before the whole request is written (e.g. on a 431); that is fine.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// The status code of the first HTTP response in `raw`, if any.
pub fn raw_status(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(64)]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Subscribes `user` to streaming NewMail events on its inbox (with SOAP header content
/// `header`) and returns the subscription id.
pub async fn subscribe_inbox(url: &str, user: (&str, &str), header: &str) -> String {
    let sub = post(
        url,
        Some(user),
        envelope(Some(header), "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"),
    )
    .await;
    sub.body
        .split("<m:SubscriptionId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no SubscriptionId in {}", sub.body))
        .to_owned()
}

/// Subscribes and opens GetStreamingEvents (`minutes` of ConnectionTimeout); returns the open
/// response once its head arrived.
pub async fn open_stream(
    url: &str,
    user: (&str, &str),
    header: &str,
    minutes: u32,
) -> reqwest::Response {
    let sub_id = subscribe_inbox(url, user, header).await;
    let resp = client()
        .post(url)
        .basic_auth(user.0, Some(user.1))
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(envelope(Some(header), &format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub_id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>{minutes}</m:ConnectionTimeout></m:GetStreamingEvents>")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}
