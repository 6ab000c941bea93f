//! The real binary's subcommands: `sim --json`, `hash-password`, `serve` config validation, `demo`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ews-gateway");

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn first_stdout_line(child: &mut Child, matching: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let matching = matching.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&matching) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("no matching output line")
}

#[tokio::test]
async fn sim_json_gives_what_a_script_needs_to_get_a_token_and_call_ews() {
    let mut child = Command::new(BIN)
        .args(["sim", "--json", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_stdout_line(&mut child, "token_url");
    let _guard = Killed(child);
    let info: serde_json::Value = serde_json::from_str(&line).unwrap();
    for key in [
        "token_url",
        "ews_url",
        "tenant_id",
        "client_id",
        "client_secret",
    ] {
        assert!(
            info[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key} missing in {line}"
        );
    }
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(info["token_url"].as_str().unwrap())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", info["client_id"].as_str().unwrap()),
            ("client_secret", info["client_secret"].as_str().unwrap()),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap();
    let envelope = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header><t:RequestServerVersion Version="Exchange2016"/><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>alice@contoso.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>"#;
    let resp = http
        .post(info["ews_url"].as_str().unwrap())
        .bearer_auth(bearer)
        .header("X-AnchorMailbox", "alice@contoso.example")
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("ServerVersionInfo"), "{text}");
    assert!(
        text.contains("<t:DisplayName>Inbox</t:DisplayName>"),
        "{text}"
    );
}

#[tokio::test]
async fn sim_ews_retired_refuses_ews_and_serves_graph() {
    let mut child = Command::new(BIN)
        .args(["sim", "--json", "--ews-retired", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_stdout_line(&mut child, "token_url");
    let _guard = Killed(child);
    let info: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(info["ews_retired"], true, "{line}");
    let http = reqwest::Client::new();
    let token = |scope: &'static str| {
        http.post(info["token_url"].as_str().unwrap()).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", info["client_id"].as_str().unwrap()),
            ("client_secret", info["client_secret"].as_str().unwrap()),
            ("scope", scope),
        ])
    };
    let ews: serde_json::Value = token("https://outlook.office365.com/.default")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .post(info["ews_url"].as_str().unwrap())
        .bearer_auth(ews["access_token"].as_str().unwrap())
        .header("Content-Type", "text/xml; charset=utf-8")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(info["graph_scope"], "https://graph.microsoft.com/.default");
    let graph: serde_json::Value = token("https://graph.microsoft.com/.default")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .get(format!(
            "{}/v1.0/users/alice@contoso.example/mailFolders/inbox",
            info["graph_url"].as_str().unwrap()
        ))
        .bearer_auth(graph["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let folder: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(folder["displayName"], "Inbox");
}

#[test]
fn hash_password_reads_stdin_and_prints_a_verifiable_argon2id_hash() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));
    let users = format!("[[user]]\nname = \"a@contoso.example\"\npassword_hash = \"{hash}\"\n");
    let store = ews_gateway::auth::CredentialStore::from_toml(
        &users,
        ews_gateway::auth::StoreOptions {
            names: Default::default(),
            cache_ttl: Duration::from_secs(1),
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = rt.block_on(store.verify(&ews_gateway::auth::BasicCredentials {
        username: "a@contoso.example".into(),
        password: "correct horse".into(),
    }));
    assert!(ok.is_ok());
}

#[test]
fn serve_reports_every_config_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "[listen]\naddress = \"0.0.0.0:8443\"\n[auth]\nusers_file = \"/nonexistent\"\n[upstream]\news_url = \"ftp://x\"\n[[tenant]]\ntenant_id = \"t\"\nclient_id = \"c\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["clear text", "users_file", "ews_url", "no credential"] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn example_config_and_users_files_parse() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/ews-gateway.example.toml")).unwrap();
    ews_gateway::config::Config::parse(&text, "example").unwrap();
    let users = std::fs::read_to_string(format!("{root}/users.example.toml")).unwrap();
    let store = ews_gateway::auth::CredentialStore::from_toml(
        &users,
        ews_gateway::auth::StoreOptions {
            names: Default::default(),
            cache_ttl: Duration::from_secs(1),
        },
    )
    .unwrap();
    assert_eq!(store.len(), 4);
}

#[tokio::test]
async fn demo_prints_its_url_and_challenges_without_credentials() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_stdout_line(&mut child, "EWS URL");
    let _guard = Killed(child);
    let url = line.split_whitespace().last().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .post(&url)
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
}

/// `demo --https --tls-name`: the certificate covers the extra name, is signed by the CA written to
/// --ca-out, and nothing else is trusted.
#[tokio::test]
async fn demo_https_serves_a_certificate_for_the_tls_names() {
    let dir = std::env::temp_dir().join(format!("ews-cli-demo-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_out = dir.join("ca.pem");
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--https"])
        .args(["--tls-name", "autodiscover.contoso.example", "--ca-out"])
        .arg(&ca_out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_stdout_line(&mut child, "EWS URL");
    let _guard = Killed(child);
    let url = line.split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let addr: std::net::SocketAddr = url["https://".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_out).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("autodiscover.contoso.example", addr)
        .resolve("other.contoso.example", addr)
        .build()
        .unwrap();
    let named = format!(
        "https://autodiscover.contoso.example:{}/autodiscover/autodiscover.svc",
        addr.port()
    );
    let resp = client.post(&named).body("<x/>").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // A name the certificate does not cover fails the handshake.
    let other = format!(
        "https://other.contoso.example:{}/EWS/Exchange.asmx",
        addr.port()
    );
    assert!(client.post(&other).body("<x/>").send().await.is_err());
    // Without the CA nothing verifies.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusting.post(&url).body("<x/>").send().await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// DavMail sends every call first without credentials: the audit line of that half says
/// "unauthenticated", never "forwarded" (nothing went upstream).
#[tokio::test]
async fn demo_audit_tells_challenges_from_forwarded_calls() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("audit") {
                let _ = tx.send(line);
            }
        }
    });
    let line = first_stdout_line(&mut child, "EWS URL");
    let _guard = Killed(child);
    let url = line.split_whitespace().last().unwrap().to_owned();
    let body = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header></s:Header><s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="root"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>"#;
    let http = reqwest::Client::new();
    let send = |auth: bool| {
        let mut req = http
            .post(&url)
            .header("Content-Type", "text/xml; charset=UTF-8")
            .body(body);
        if auth {
            req = req.basic_auth("alice@contoso.example", Some("alice-demo-pass"));
        }
        req.send()
    };
    assert_eq!(send(false).await.unwrap().status().as_u16(), 401);
    let challenged = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(challenged.contains("status=401"), "{challenged}");
    assert!(
        challenged.contains("outcome=\"unauthenticated\""),
        "{challenged}"
    );
    assert_eq!(send(true).await.unwrap().status().as_u16(), 200);
    let served = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(served.contains("status=200"), "{served}");
    assert!(served.contains("outcome=\"forwarded\""), "{served}");
}

#[tokio::test]
async fn sim_faults_flag_injects_from_the_start() {
    let mut child = Command::new(BIN)
        .args([
            "sim",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--faults",
            r#"{"token_unavailable":true}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_stdout_line(&mut child, "token_url");
    let _guard = Killed(child);
    let info: serde_json::Value = serde_json::from_str(&line).unwrap();
    let resp = reqwest::Client::new()
        .post(info["token_url"].as_str().unwrap())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let bad = Command::new(BIN)
        .args(["sim", "--faults", "{\"nope\":1}"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--faults"));
}
