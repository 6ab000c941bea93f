//! Several tenants in one gateway (issue 4): a mailbox's domain selects its tenant and token;
//! an unknown domain is refused clearly before anything goes upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::*;
use ews_gateway::config::TenantConfig;
use ews_gateway::sim::{self, SimConfig};

const FABRIKAM: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

#[tokio::test]
async fn each_mailbox_uses_its_own_tenants_token() {
    ews_gateway::tls::install_crypto_provider();
    let sim = sim::start(
        SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hash = ews_gateway::auth::hash_password("svc-pass").unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"svc@contoso.example\"\npassword_hash = \"{hash}\"\nmay_impersonate = [\"*@contoso.example\", \"dana@fabrikam.example\", \"x@other.example\"]\n"),
    )
    .unwrap();
    let mut config =
        ews_gateway::demo::gateway_config(&sim, "127.0.0.1:0".parse().unwrap(), users).unwrap();
    let mut fabrikam: TenantConfig = toml::from_str(&format!(
        "tenant_id = \"{FABRIKAM}\"\ndomains = [\"fabrikam.example\"]\nclient_id = \"77777777-2222-4333-8444-555555555555\"\nclient_secret = \"sim-secret-fabrikam-gateway-0007\"\nauthority = \"{}\"",
        sim.authority_url()
    ))
    .unwrap();
    fabrikam.credentials.clear();
    config.tenants.push(fabrikam);
    config.validate().unwrap();
    let gw = ews_gateway::server::start(&config).await.unwrap();
    let svc = ("svc@contoso.example", "svc-pass");

    let as_dana = format!(
        "{}{}",
        version_header(),
        impersonation("PrimarySmtpAddress", "dana@fabrikam.example")
    );
    let reply = post(
        &gw.ews_url(),
        Some(svc),
        envelope(Some(&as_dana), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("Fabrikam board minutes"));
    let as_alice = format!(
        "{}{}",
        version_header(),
        impersonation("PrimarySmtpAddress", "alice@contoso.example")
    );
    let reply = post(
        &gw.ews_url(),
        Some(svc),
        envelope(Some(&as_alice), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let tids: Vec<String> = sim
        .ews_requests()
        .iter()
        .map(|r| {
            let bearer = r
                .header("authorization")
                .unwrap()
                .trim_start_matches("Bearer ")
                .to_owned();
            let payload = bearer.split('.').nth(1).unwrap().to_owned();
            let claims: serde_json::Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap(),
            )
            .unwrap();
            claims["tid"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tids[0], FABRIKAM);
    assert_eq!(tids[1], "5f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e");

    let before = sim.requests().len();
    let elsewhere = format!(
        "{}{}",
        version_header(),
        impersonation("PrimarySmtpAddress", "x@other.example")
    );
    let reply = post(
        &gw.ews_url(),
        Some(svc),
        envelope(Some(&elsewhere), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(
        reply
            .body
            .contains("No Entra tenant is configured for the domain of x@other.example"),
        "{}",
        reply.body
    );
    assert_eq!(sim.requests().len(), before, "nothing went upstream");
}
