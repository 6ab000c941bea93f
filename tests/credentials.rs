//! Entra credentials end to end (issue 4): certificate assertions (PS256 + x5t#S256, RS256 + x5t)
//! and rotation to the next credential when one is refused, against the simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::*;
use ews_gateway::config::CredentialConfig;
use ews_gateway::server;
use ews_gateway::sim::{self, SimConfig, SimHandle};

struct Cert {
    cert_pem: String,
    key_pem: String,
}

fn rsa_cert() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ews-gateway credential test");
    let cert = params.self_signed(&key).unwrap();
    Cert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn register(sim: &SimHandle, cert: &Cert) {
    let mut dir = sim.state.directory.write().unwrap();
    dir.tenant_mut("contoso.example").unwrap().apps[0]
        .certificates
        .push(cert.cert_pem.clone());
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn gateway_with(
    sim: &SimHandle,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut ews_gateway::config::TenantConfig),
) -> Result<server::GatewayHandle, server::StartError> {
    let users = write(
        dir,
        "users.toml",
        &ews_gateway::demo::demo_users_toml().unwrap(),
    );
    let mut config =
        ews_gateway::demo::gateway_config(sim, "127.0.0.1:0".parse().unwrap(), users).unwrap();
    config.tenants[0].client_secret = None;
    tweak(&mut config.tenants[0]);
    config.validate()?;
    server::start(&config).await
}

fn cert_credential(
    dir: &std::path::Path,
    name: &str,
    cert: &Cert,
    alg: Option<&str>,
) -> CredentialConfig {
    CredentialConfig {
        certificate_file: Some(write(dir, &format!("{name}.crt"), &cert.cert_pem)),
        key_file: Some(write(dir, &format!("{name}.key"), &cert.key_pem)),
        algorithm: alg.map(str::to_owned),
        ..Default::default()
    }
}

fn token_bodies(sim: &SimHandle) -> Vec<String> {
    sim.requests()
        .into_iter()
        .filter(|r| r.path.contains("/oauth2/"))
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect()
}

fn bearer_claims(sim: &SimHandle) -> serde_json::Value {
    let ews = sim.ews_requests();
    let bearer = ews
        .last()
        .unwrap()
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    let payload = bearer.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn start_sim() -> SimHandle {
    ews_gateway::tls::install_crypto_provider();
    sim::start(
        SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn certificate_credentials_carry_requests_end_to_end() {
    for alg in [None, Some("RS256")] {
        let sim = start_sim().await;
        let dir = tempfile::tempdir().unwrap();
        let cert = rsa_cert();
        register(&sim, &cert);
        let gw = gateway_with(&sim, dir.path(), |t| {
            t.credentials
                .push(cert_credential(dir.path(), "c", &cert, alg))
        })
        .await
        .unwrap();
        let reply = post(
            &gw.ews_url(),
            Some(ALICE),
            envelope(Some(version_header()), find_inbox()),
        )
        .await;
        assert_eq!(reply.status, 200, "{alg:?}: {}", reply.body);
        let bodies = token_bodies(&sim);
        assert_eq!(bodies.len(), 1);
        assert!(bodies[0].contains("client_assertion="), "{}", bodies[0]);
        assert!(!bodies[0].contains("client_secret"), "no secret is sent");
        assert_eq!(bearer_claims(&sim)["appidacr"], "2", "a certificate token");
    }
}

#[tokio::test]
async fn a_refused_credential_rotates_to_the_next() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let retired = rsa_cert(); // not (or no longer) registered on the app
    let current = rsa_cert();
    register(&sim, &current);
    let gw = gateway_with(&sim, dir.path(), |t| {
        t.credentials
            .push(cert_credential(dir.path(), "retired", &retired, None));
        t.credentials
            .push(cert_credential(dir.path(), "current", &current, None));
    })
    .await
    .unwrap();
    let reply = post(
        &gw.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        token_bodies(&sim).len(),
        2,
        "the retired certificate was refused, the next one worked"
    );
}

#[tokio::test]
async fn a_wrong_secret_falls_back_to_the_next_secret_from_a_file() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "secret", "sim-secret-gateway-app-0001\n");
    let gw = gateway_with(&sim, dir.path(), |t| {
        t.client_secret = Some("an-old-secret".into());
        t.credentials.push(CredentialConfig {
            secret_file: Some(file),
            ..Default::default()
        });
    })
    .await
    .unwrap();
    let reply = post(
        &gw.ews_url(),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(bearer_claims(&sim)["appidacr"], "1");
}

#[tokio::test]
async fn unusable_certificates_are_refused_at_start_with_the_reason() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let a = rsa_cert();
    let b = rsa_cert();
    let mismatched = Cert {
        cert_pem: a.cert_pem.clone(),
        key_pem: b.key_pem.clone(),
    };
    let err = gateway_with(&sim, dir.path(), |t| {
        t.credentials
            .push(cert_credential(dir.path(), "m", &mismatched, None))
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );
    let ec_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&ec_key)
        .unwrap();
    let ec = Cert {
        cert_pem: ec_cert.pem(),
        key_pem: ec_key.serialize_pem(),
    };
    let err = gateway_with(&sim, dir.path(), |t| {
        t.credentials
            .push(cert_credential(dir.path(), "ec", &ec, None))
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not RSA"), "{err}");
}
