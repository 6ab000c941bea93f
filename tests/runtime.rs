//! Running it in production (issue 7) and its audit trail (issue 6): the admin listener
//! (`/live`, `/ready`, `/metrics`), readiness following the token, reload (valid, invalid, by
//! file change, TLS certificate), and, through the real binary, SIGHUP, SIGTERM with requests in
//! flight and the audit file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use common::*;
use ews_gateway::config::Config;
use ews_gateway::server::{self, GatewayHandle};
use ews_gateway::sim::faults::Faults;
use ews_gateway::sim::{self, SimConfig, SimHandle};

struct Setup {
    sim: SimHandle,
    gateway: GatewayHandle,
    dir: tempfile::TempDir,
}

/// Writes the demo's configuration as a TOML file (so reloads have something to read).
fn config_toml(config: &Config, extra: &str) -> String {
    let t = &config.tenants[0];
    format!(
        r#"
[listen]
address = "127.0.0.1:0"
{tls}
[admin]
address = "127.0.0.1:0"
[auth]
users_file = "{users}"
default_domain = "contoso.example"
[upstream]
ews_url = "{ews}"
[[tenant]]
tenant_id = "{tenant}"
domains = ["contoso.example"]
client_id = "{client}"
client_secret_file = "{secret}"
authority = "{authority}"
refresh_before_expiry_seconds = 1
{extra}
"#,
        tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
            (Some(c), Some(k)) => format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                c.display(),
                k.display()
            ),
            _ => String::new(),
        },
        users = config.auth.users_file.display(),
        ews = config.upstream.ews_url,
        tenant = t.tenant_id,
        client = t.client_id,
        secret = t.client_secret_file.as_ref().unwrap().display(),
        authority = t.authority.as_deref().unwrap(),
    )
}

async fn setup(sim_config: SimConfig, extra: &str, tls: bool) -> Setup {
    ews_gateway::tls::install_crypto_provider();
    let sim = sim::start(sim_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, ews_gateway::demo::demo_users_toml().unwrap()).unwrap();
    let mut config =
        ews_gateway::demo::gateway_config(&sim, "127.0.0.1:0".parse().unwrap(), users).unwrap();
    if tls {
        write_cert(dir.path(), "first");
        config.listen.tls_cert = Some(dir.path().join("tls.crt"));
        config.listen.tls_key = Some(dir.path().join("tls.key"));
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_toml(&config, extra)).unwrap();
    let gateway = server::start_from_file(&path).await.unwrap();
    Setup { sim, gateway, dir }
}

/// A fresh CA and localhost certificate; returns the CA PEM, also written as `ca-<tag>.pem`.
fn write_cert(dir: &Path, tag: &str) -> String {
    let pki = ews_gateway::tls::generate_pki(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("tls.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &pki.server_key_pem).unwrap();
    std::fs::write(dir.join(format!("ca-{tag}.pem")), &pki.ca_cert_pem).unwrap();
    pki.ca_cert_pem
}

async fn admin_get(gateway: &GatewayHandle, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", gateway.admin_addr.unwrap());
    let resp = client().get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn eventually(what: &str, secs: u64, mut cond: impl AsyncFnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

fn dave_users(dir: &Path) -> String {
    let hash = ews_gateway::auth::hash_password("dave-pass").unwrap();
    let mut users = ews_gateway::demo::demo_users_toml().unwrap();
    users.push_str(&format!(
        "\n[[user]]\nname = \"dave@contoso.example\"\nmailbox = \"alice@contoso.example\"\npassword_hash = \"{hash}\"\n"
    ));
    std::fs::write(dir.join("users.toml"), users).unwrap();
    "dave-pass".to_owned()
}

#[tokio::test]
async fn admin_listener_answers_live_ready_and_metrics_after_traffic() {
    let s = setup(SimConfig::builtin().unwrap(), "", false).await;
    assert_eq!(admin_get(&s.gateway, "/live").await, (200, "live\n".into()));
    eventually("ready once the token is held", 20, async || {
        admin_get(&s.gateway, "/ready").await.0 == 200
    })
    .await;
    let (_, ready) = admin_get(&s.gateway, "/ready").await;
    assert!(ready.contains("token valid"), "{ready}");

    let ok = post(
        &s.gateway.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(ok.status, 200);
    let wrong = post(
        &s.gateway.ews_url(),
        Some(("alice@contoso.example", "nope")),
        envelope(None, find_inbox()),
    )
    .await;
    assert_eq!(wrong.status, 401);

    let (status, metrics) = admin_get(&s.gateway, "/metrics").await;
    assert_eq!(status, 200);
    let line = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
            .map(str::to_owned)
    };
    let served = line(
        "ews_gateway_requests_total",
        &[
            "operation=\"FindItem\"",
            "status=\"200\"",
            "outcome=\"forwarded\"",
        ],
    )
    .unwrap_or_else(|| panic!("no FindItem counter in:\n{metrics}"));
    assert!(served.ends_with(" 1"), "{served}");
    for (name, labels) in [
        (
            "ews_gateway_auth_failures_total",
            &["reason=\"invalid_credentials\""][..],
        ),
        ("ews_gateway_token_acquisitions_total", &["result=\"ok\""]),
        ("ews_gateway_token_remaining_seconds", &["tenant="]),
        ("ews_gateway_upstream_latency_seconds_bucket", &[]),
        (
            "ews_gateway_request_duration_seconds_bucket",
            &["operation=\"FindItem\""],
        ),
        ("ews_gateway_body_bytes_total", &["direction=\"out\""]),
        ("ews_gateway_in_flight_requests", &[]),
    ] {
        assert!(
            line(name, labels).is_some(),
            "{name} {labels:?} missing in:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("alice@contoso.example"),
        "no user or mailbox is ever a label:\n{metrics}"
    );
    assert_eq!(admin_get(&s.gateway, "/nope").await.0, 404);
    s.gateway.stop().await;
    s.sim.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_token_through_an_entra_outage() {
    let mut sim_config = SimConfig::builtin().unwrap();
    sim_config.token_lifetime = Duration::from_secs(3);
    let s = setup(sim_config, "", false).await;
    eventually("ready", 20, async || {
        admin_get(&s.gateway, "/ready").await.0 == 200
    })
    .await;
    s.sim.set_faults(Faults {
        token_unavailable: true,
        ..Faults::default()
    });
    eventually("not ready once the token expired", 30, async || {
        admin_get(&s.gateway, "/ready").await.0 == 503
    })
    .await;
    let (_, text) = admin_get(&s.gateway, "/ready").await;
    assert!(text.contains("no valid token"), "{text}");
    s.sim.set_faults(Faults::default());
    eventually("ready again after the outage", 60, async || {
        admin_get(&s.gateway, "/ready").await.0 == 200
    })
    .await;
    s.gateway.stop().await;
    s.sim.stop().await;
}

#[tokio::test]
async fn reload_applies_a_valid_set_and_refuses_an_invalid_one() {
    let s = setup(SimConfig::builtin().unwrap(), "", false).await;
    let url = s.gateway.ews_url();
    let dave = ("dave@contoso.example", "dave-pass");
    let before = post(&url, Some(dave), envelope(None, find_inbox())).await;
    assert_eq!(before.status, 401);
    dave_users(s.dir.path());
    s.gateway.reload().unwrap();
    let after = post(
        &url,
        Some(dave),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(
        after.status, 200,
        "the new user works without a restart: {}",
        after.body
    );

    // An invalid users file is refused whole; the previous set keeps serving.
    std::fs::write(
        s.dir.path().join("users.toml"),
        "[[user]]\nname = \"broken\"\n",
    )
    .unwrap();
    let err = s.gateway.reload().unwrap_err().to_string();
    assert!(err.contains("users file"), "{err}");
    let still = post(
        &url,
        Some(dave),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(
        still.status, 200,
        "old users keep serving after a refused reload"
    );

    // An invalid configuration file likewise.
    let path = s.dir.path().join("gateway.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[limits]\nno_such_key = 1\n")).unwrap();
    let err = s.gateway.reload().unwrap_err().to_string();
    assert!(err.contains("no_such_key"), "{err}");
    let alice = post(
        &url,
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(alice.status, 200);
    let (_, metrics) = admin_get(&s.gateway, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ews_gateway_config_reloads_total")
                && l.contains("result=\"invalid\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ews_gateway_config_reloads_total")
                && l.contains("result=\"ok\"")),
        "{metrics}"
    );
    s.gateway.stop().await;
    s.sim.stop().await;
}

#[tokio::test]
async fn a_changed_users_file_is_picked_up_without_a_signal() {
    let s = setup(
        SimConfig::builtin().unwrap(),
        "[runtime]\nwatch_interval_seconds = 1\n",
        false,
    )
    .await;
    let url = s.gateway.ews_url();
    let before = s.gateway.gateway();
    dave_users(s.dir.path());
    // Polling with dave's login would lock dave out before the reload; watch the swap instead.
    eventually("the watcher reloads the users file", 20, async || {
        !std::sync::Arc::ptr_eq(&before, &s.gateway.gateway())
    })
    .await;
    let dave = post(
        &url,
        Some(("dave@contoso.example", "dave-pass")),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(dave.status, 200, "{}", dave.body);
    s.gateway.stop().await;
    s.sim.stop().await;
}

#[tokio::test]
async fn a_rotated_tls_certificate_serves_new_handshakes_after_reload() {
    let s = setup(SimConfig::builtin().unwrap(), "", true).await;
    let url = s.gateway.ews_url();
    let trusting = |tag: &str| {
        let pem = std::fs::read(s.dir.path().join(format!("ca-{tag}.pem"))).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap()
    };
    let first = trusting("first");
    assert_eq!(
        first
            .post(&url)
            .basic_auth(ALICE.0, Some(ALICE.1))
            .body(envelope(Some(version_header()), find_inbox()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    write_cert(s.dir.path(), "second");
    s.gateway.reload().unwrap();
    let second = trusting("second");
    assert_eq!(
        second
            .post(&url)
            .basic_auth(ALICE.0, Some(ALICE.1))
            .body(envelope(Some(version_header()), find_inbox()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let fresh_first = trusting("first");
    assert!(
        fresh_first.post(&url).body("x").send().await.is_err(),
        "the old certificate is no longer served"
    );
    s.gateway.stop().await;
    s.sim.stop().await;
}

/// A simulator, a temporary directory with the demo users file, and the demo's gateway
/// configuration for it (written out by the caller with [`config_toml`]).
async fn binary_setup() -> (SimHandle, tempfile::TempDir, Config) {
    ews_gateway::tls::install_crypto_provider();
    let sim = sim::start(
        SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, ews_gateway::demo::demo_users_toml().unwrap()).unwrap();
    let config =
        ews_gateway::demo::gateway_config(&sim, "127.0.0.1:0".parse().unwrap(), users).unwrap();
    (sim, dir, config)
}

/// The real binary serving `path`, with its log lines (standard error) on a channel.
/// `rust_log: None` leaves RUST_LOG unset, so the configuration's level applies.
fn spawn_binary(
    path: &Path,
    rust_log: Option<&str>,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ews-gateway"));
    command.args(["serve", "--config"]).arg(path);
    match rust_log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The real binary: `serve` with an audit file; SIGHUP reloads; SIGTERM lets a slow request and
/// a streaming subscription finish cleanly, then the process exits 0.
#[tokio::test]
async fn the_binary_reloads_on_sighup_drains_on_sigterm_and_writes_the_audit_file() {
    let (sim, dir, config) = binary_setup().await;
    let audit = dir.path().join("audit.jsonl");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_toml(&config, &format!("[audit]\nfile = \"{}\"\n[runtime]\nwatch_interval_seconds = 0\nshutdown_grace_seconds = 20\n", audit.display()))).unwrap();

    let (mut child, rx) = spawn_binary(&path, Some("info"));
    let mut addr = None;
    let wait_line = |pred: &dyn Fn(&str) -> bool| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("gateway log line");
            if pred(&line) {
                return line;
            }
        }
    };
    let listening = wait_line(&|l| l.contains("ews-gateway listening"));
    if let Some(rest) = listening.split("addr=").nth(1) {
        addr = rest.split_whitespace().next().map(str::to_owned);
    }
    let url = format!("http://{}/EWS/Exchange.asmx", addr.unwrap());
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };

    // SIGHUP picks up a new user.
    dave_users(dir.path());
    signal("-HUP");
    wait_line(&|l| l.contains("configuration reloaded"));
    let dave = post(
        &url,
        Some(("dave@contoso.example", "dave-pass")),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(dave.status, 200, "{}", dave.body);

    // A streaming subscription and a slow request are in flight when SIGTERM arrives.
    let mut stream = open_stream(&url, ALICE, version_header(), 30).await;
    sim.set_faults(Faults {
        ews_latency_ms: 1500,
        ..Faults::default()
    });
    let slow_url = url.clone();
    let slow = tokio::spawn(async move {
        post(
            &slow_url,
            Some(BOB),
            envelope(Some(version_header()), find_inbox()),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal("-TERM");

    let mut streamed = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(15), stream.chunk())
        .await
        .expect("the stream ends within the grace")
        .unwrap()
    {
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        streamed.contains("<m:ConnectionStatus>Closed</m:ConnectionStatus>"),
        "the stream is closed cleanly: {streamed}"
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status, 200,
        "the in-flight request completes: {}",
        slow.body
    );
    assert!(slow.body.contains("FindItemResponse"));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    // The audit file has one line per request, with the fields the report reads.
    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<ews_gateway::audit::AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dave_line = records
        .iter()
        .find(|r| r.principal.as_deref() == Some("dave@contoso.example"))
        .expect("dave's request");
    assert_eq!(dave_line.mailbox.as_deref(), Some("alice@contoso.example"));
    assert_eq!(dave_line.operation.as_deref(), Some("FindItem"));
    assert_eq!(dave_line.status, 200);
    assert_eq!(dave_line.outcome, "forwarded");
    assert!(
        dave_line.bytes_in > 300 && dave_line.bytes_out > 300,
        "{dave_line:?}"
    );
    assert!(dave_line.upstream_request_id.is_some() && dave_line.client_request_id.is_some());
    assert!(dave_line.tenant.is_some());
    let streaming = records
        .iter()
        .find(|r| r.operation.as_deref() == Some("GetStreamingEvents"))
        .expect("the stream's line");
    assert_eq!(streaming.outcome, "forwarded");
    assert!(streaming.bytes_out >= streamed.len() as u64);
    let bob = records
        .iter()
        .find(|r| r.principal.as_deref() == Some("bob@contoso.example"))
        .expect("the slow request's line");
    assert!(bob.duration_ms >= 1000, "{bob:?}");
    assert!(
        !text.contains("dave-pass") && !text.contains("alice-demo-pass"),
        "no password in the audit trail"
    );

    // `report` reads what the gateway wrote: the migration inventory.
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_ews-gateway"))
        .args(["report", "--format", "json", "--audit"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["lines"]["malformed"], 0, "{report}");
    let groups = report["groups"].as_array().unwrap();
    let row = groups
        .iter()
        .find(|g| g["principal"] == "dave@contoso.example")
        .unwrap_or_else(|| panic!("dave in the report: {report}"));
    assert_eq!(row["mailbox"], "alice@contoso.example");
    assert_eq!(row["operation"], "FindItem");
    assert_eq!(row["requests"], 1);
    sim.stop().await;
}

/// The log level follows `[runtime] log_level` on reload, without a restart (when RUST_LOG is
/// not set, which would win).
#[tokio::test]
async fn the_log_level_changes_on_reload() {
    let (sim, dir, config) = binary_setup().await;
    let path = dir.path().join("gateway.toml");
    let with_level = |level: &str| {
        config_toml(
            &config,
            &format!("[runtime]\nwatch_interval_seconds = 0\nlog_level = \"{level}\"\n"),
        )
    };
    std::fs::write(&path, with_level("info")).unwrap();
    let (mut child, rx) = spawn_binary(&path, None);
    let wait_line = |pred: &dyn Fn(&str) -> bool| -> Option<String> {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
                && pred(&line)
            {
                return Some(line);
            }
        }
        None
    };
    let listening = wait_line(&|l| l.contains("ews-gateway listening")).unwrap();
    let addr = listening
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let malformed = || async {
        let resp = client()
            .post(format!("http://{addr}/EWS/Exchange.asmx"))
            .header("Authorization", "Basic !!!not-base64")
            .body("<x/>")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    };
    malformed().await;
    // At info, the request's audit line shows, the debug detail does not.
    let seen = wait_line(&|l| {
        l.contains("malformed Basic credentials") || l.contains("outcome=\"unauthenticated\"")
    });
    assert!(seen.is_some_and(|l| !l.contains("malformed Basic credentials")));

    std::fs::write(&path, with_level("debug")).unwrap();
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_line(&|l| l.contains("configuration reloaded")).is_some());
    malformed().await;
    assert!(
        wait_line(&|l| l.contains("malformed Basic credentials")).is_some(),
        "debug lines appear after the reload"
    );
    let _ = child.kill();
    let _ = child.wait();
    sim.stop().await;
}
