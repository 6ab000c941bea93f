//! Gateway transport behaviour (issue 3): TLS in and out, `Expect: 100-continue` and keep-alive
//! around the Basic challenge, WSDL documents, failures reaching the client as SOAP faults, the
//! retry after Exchange refuses a token, streaming responses, and one token under concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use ews_gateway::config::Config;
use ews_gateway::server::{self, GatewayHandle};
use ews_gateway::sim::{self, SimConfig, SimHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    sim: SimHandle,
    gateway: GatewayHandle,
    _dir: tempfile::TempDir,
}

async fn setup(sim_config: SimConfig, tweak: impl FnOnce(&mut Config, &std::path::Path)) -> Setup {
    ews_gateway::tls::install_crypto_provider();
    let sim = sim::start(sim_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, ews_gateway::demo::demo_users_toml().unwrap()).unwrap();
    let mut config =
        ews_gateway::demo::gateway_config(&sim, "127.0.0.1:0".parse().unwrap(), users).unwrap();
    tweak(&mut config, dir.path());
    let gateway = server::start(&config).await.unwrap();
    Setup {
        sim,
        gateway,
        _dir: dir,
    }
}

fn token_requests(sim: &SimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.contains("/oauth2/"))
        .count()
}

#[tokio::test]
async fn tls_listener_and_tls_upstream_with_a_ca_file() {
    let mut sim_config = SimConfig::builtin().unwrap();
    sim_config.https = true;
    let pki = ews_gateway::tls::generate_pki(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let setup = setup(sim_config, |config, dir| {
        std::fs::write(dir.join("tls.crt"), &pki.server_cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &pki.server_key_pem).unwrap();
        config.listen.tls_cert = Some(dir.join("tls.crt"));
        config.listen.tls_key = Some(dir.join("tls.key"));
    })
    .await;
    // The sim's CA is not trusted yet: build again with it as the upstream and token CA.
    let ca = setup.sim.ca_pem.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sim-ca.pem"), &ca).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &pki.server_key_pem).unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        ews_gateway::demo::demo_users_toml().unwrap(),
    )
    .unwrap();
    let mut config = ews_gateway::demo::gateway_config(
        &setup.sim,
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("users.toml"),
    )
    .unwrap();
    config.listen.tls_cert = Some(dir.path().join("tls.crt"));
    config.listen.tls_key = Some(dir.path().join("tls.key"));
    config.upstream.ca_file = Some(dir.path().join("sim-ca.pem"));
    config.tenants[0].ca_file = Some(dir.path().join("sim-ca.pem"));
    let gateway = server::start(&config).await.unwrap();
    assert!(gateway.ews_url().starts_with("https://"));
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let resp = client
        .post(gateway.ews_url())
        .basic_auth(ALICE.0, Some(ALICE.1))
        .body(envelope(Some(version_header()), find_inbox()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("Quarterly report"));
    // The first gateway (no CA file) cannot verify the simulator's certificate: a clear fault.
    let reply = client
        .post(setup.gateway.ews_url())
        .basic_auth(ALICE.0, Some(ALICE.1))
        .body(envelope(Some(version_header()), find_inbox()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 500);
    let text = reply.text().await.unwrap();
    assert!(
        text.contains("ErrorServerBusy") && text.contains("Microsoft Entra ID"),
        "{text}"
    );
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], read_for: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + read_for;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn expect_continue_without_credentials_gets_401_not_100() {
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    let req = b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n";
    let answer = raw_exchange(s.gateway.addr, req, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!answer.contains("100 Continue"));
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=")
    );
    assert!(s.sim.requests().is_empty());
}

#[tokio::test]
async fn connection_survives_the_unauthenticated_first_attempt() {
    // DavMail sends each call unauthenticated first, then with Basic, on one connection.
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    let body = envelope(Some(version_header()), find_inbox());
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode("alice@contoso.example:alice-demo-pass");
    let first = format!(
        "POST /ews/exchange.asmx HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let second = format!(
        "POST /ews/exchange.asmx HTTP/1.1\r\nHost: gw\r\nAuthorization: Basic {basic}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(
        s.gateway.addr,
        format!("{first}{second}").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 200"),
        "the second request is served on the same connection: {answer}"
    );
    assert!(answer.contains("Quarterly report"));
}

#[tokio::test]
async fn wsdl_is_forwarded_with_the_bearer_and_post_is_refused() {
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    let base = format!("http://{}", s.gateway.addr);
    let resp = client()
        .get(format!("{base}/EWS/Services.wsdl"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("wsdl:definitions"));
    let seen = s
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path.eq_ignore_ascii_case("/EWS/Services.wsdl"))
        .unwrap();
    assert!(seen.header("authorization").unwrap().starts_with("Bearer "));
    let post = client()
        .post(format!("{base}/EWS/types.xsd"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    let anon = client()
        .get(format!("{base}/EWS/messages.xsd"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
}

#[tokio::test]
async fn unreachable_upstream_is_a_fault_naming_exchange() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = setup(SimConfig::builtin().unwrap(), move |config, _| {
        config.upstream.ews_url = format!("http://{closed}/EWS/Exchange.asmx");
    })
    .await;
    let reply = post(
        &s.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("ErrorServerBusy"), "{}", reply.body);
    assert!(
        reply.body.contains("could not reach Exchange"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains(&closed.to_string()), "{}", reply.body);
}

#[tokio::test]
async fn upstream_timeout_is_a_fault_naming_the_wait() {
    let mut sim_config = SimConfig::builtin().unwrap();
    sim_config.faults.ews_latency_ms = 3000;
    let s = setup(sim_config, |config, _| {
        config.upstream.response_timeout_seconds = 1
    })
    .await;
    let reply = post(
        &s.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("did not answer within 1 s"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn refused_token_is_dropped_and_the_request_retried_once() {
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    let url = s.gateway.ews_url();
    assert_eq!(
        post(
            &url,
            Some(ALICE),
            envelope(Some(version_header()), find_inbox())
        )
        .await
        .status,
        200
    );
    let bearer = s.sim.ews_requests()[0]
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    s.sim.revoke_token(&bearer);
    let reply = post(
        &url,
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(token_requests(&s.sim), 2, "a fresh token after the refusal");
    let ews = s.sim.ews_requests();
    assert_eq!(ews.len(), 3, "first call, refused attempt, retry");
    assert_ne!(
        ews[2].header("authorization"),
        ews[1].header("authorization")
    );
}

#[tokio::test]
async fn a_token_exchange_keeps_refusing_ends_in_a_fault_not_a_loop() {
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    // Withdraw consent: every token now lacks full_access_as_app (401 2000008).
    {
        let mut dir = s.sim.state.directory.write().unwrap();
        dir.tenant_mut("contoso.example").unwrap().apps[0]
            .roles
            .clear();
    }
    let reply = post(
        &s.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500, "never a 401 once authenticated");
    assert!(reply.body.contains("2000008"), "{}", reply.body);
    assert_eq!(s.sim.ews_requests().len(), 2, "one retry, no loop");
}

#[tokio::test]
async fn concurrent_first_requests_share_one_token_request() {
    let s = setup(SimConfig::builtin().unwrap(), |_, _| {}).await;
    let url = s.gateway.ews_url();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &url,
                Some(ALICE),
                envelope(Some(version_header()), find_inbox()),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(token_requests(&s.sim), 1);
}

#[tokio::test]
async fn streaming_notifications_are_not_buffered() {
    let mut sim_config = SimConfig::builtin().unwrap();
    sim_config.streaming_heartbeat = Duration::from_millis(300);
    let s = setup(sim_config, |_, _| {}).await;
    let url = s.gateway.ews_url();
    let sub = post(&url, Some(ALICE), envelope(Some(version_header()), "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>")).await;
    let sub_id = sub
        .body
        .split("<m:SubscriptionId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let mut resp = client()
        .post(&url)
        .basic_auth(ALICE.0, Some(ALICE.1))
        .body(envelope(Some(version_header()), &format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{sub_id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Envelopes arrive one by one while the 1-minute response is still open.
    for _ in 0..2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&chunk).contains("<m:ConnectionStatus>OK</m:ConnectionStatus>")
        );
    }
    let send = "<m:CreateItem MessageDisposition=\"SendOnly\"><m:Items><t:Message><t:Subject>Stream me</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>alice@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients></t:Message></m:Items></m:CreateItem>";
    assert_eq!(
        post(&url, Some(BOB), envelope(Some(version_header()), send))
            .await
            .status,
        200
    );
    let mut got = false;
    for _ in 0..20 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&chunk).contains("<t:NewMailEvent>") {
            got = true;
            break;
        }
    }
    assert!(
        got,
        "the new-mail notification streams through while the response is open"
    );
    // The affinity cookie and anchor pass per client.
    let affinity = client()
        .post(&url)
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("X-PreferServerAffinity", "true")
        .body(envelope(Some(version_header()), find_inbox()))
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = affinity
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("X-BackEndOverrideCookie=")),
        "{cookies:?}"
    );
}
