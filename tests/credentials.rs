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
    config.tenants[0].client_secret_file = None;
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

const MANAGED_IDENTITY_APP: &str = "66666666-2222-4333-8444-555555555555";

#[tokio::test]
async fn imds_managed_identity_carries_requests() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("{}/metadata/identity/oauth2/token", sim.base_url());
    let gw = gateway_with(&sim, dir.path(), |t| {
        t.client_id = MANAGED_IDENTITY_APP.into();
        t.credentials.push(CredentialConfig {
            managed_identity: Some("imds".into()),
            identity_endpoint: Some(endpoint),
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
    let identity_call = sim
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/metadata/"))
        .unwrap();
    assert_eq!(identity_call.method, "GET");
    assert_eq!(identity_call.header("metadata"), Some("true"));
    assert!(
        identity_call
            .path
            .contains("resource=https%3A%2F%2Foutlook.office365.com"),
        "{}",
        identity_call.path
    );
    assert_eq!(bearer_claims(&sim)["appid"], MANAGED_IDENTITY_APP);
}

#[tokio::test]
async fn simulated_identity_endpoints_enforce_their_headers() {
    let sim = start_sim().await;
    let http = reqwest::Client::new();
    let imds = http
        .get(format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://outlook.office365.com", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(imds.status().as_u16(), 400);
    assert!(
        imds.text()
            .await
            .unwrap()
            .contains("Required metadata header not specified")
    );
    let app_service = http
        .get(format!(
            "{}/msi/token?api-version=2019-08-01&resource=https://outlook.office365.com",
            sim.base_url()
        ))
        .header("X-IDENTITY-HEADER", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(app_service.status().as_u16(), 401);
    let ok = http
        .get(format!(
            "{}/msi/token?api-version=2019-08-01&resource=https://outlook.office365.com",
            sim.base_url()
        ))
        .header(
            "X-IDENTITY-HEADER",
            sim.state.config.identity_header.as_str(),
        )
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ok.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some());
    assert!(body["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
async fn app_service_managed_identity_through_the_real_binary() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let users = write(
        dir.path(),
        "users.toml",
        &ews_gateway::demo::demo_users_toml().unwrap(),
    );
    let config = write(
        dir.path(),
        "gw.toml",
        &format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[auth]\nusers_file = \"{}\"\n[upstream]\news_url = \"{}\"\n[[tenant]]\ntenant_id = \"contoso.example\"\nclient_id = \"{MANAGED_IDENTITY_APP}\"\nauthority = \"{}\"\n[[tenant.credential]]\nmanaged_identity = \"app-service\"\n",
            users.display(),
            sim.ews_url(),
            sim.authority_url()
        ),
    );
    let endpoint = format!("{}/msi/token", sim.base_url());
    let gateway = spawn_serve(
        &config,
        &[
            ("IDENTITY_ENDPOINT", endpoint.as_str()),
            ("IDENTITY_HEADER", sim.state.config.identity_header.as_str()),
        ],
    );
    let addr = gateway.addr.clone();
    let reply = post(
        &format!("http://{addr}/EWS/Exchange.asmx"),
        Some(ALICE),
        envelope(Some(version_header()), find_inbox()),
    )
    .await;
    drop(gateway);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let identity_call = sim
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/msi/"))
        .unwrap();
    assert_eq!(
        identity_call.header("x-identity-header"),
        Some(sim.state.config.identity_header.as_str())
    );
    assert_eq!(bearer_claims(&sim)["appid"], MANAGED_IDENTITY_APP);
}

const FEDERATED_APP: &str = "88888888-2222-4333-8444-555555555555";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:ews-gateway:ews-gateway";

#[tokio::test]
async fn workload_identity_federation_presents_the_token_file_and_rereads_it() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(
        dir.path(),
        "azure-identity-token",
        &sim.federation_token(SERVICE_ACCOUNT),
    );
    let file = token_file.clone();
    let gw = gateway_with(&sim, dir.path(), |t| {
        t.client_id = FEDERATED_APP.into();
        t.credentials.push(CredentialConfig {
            federated_token_file: Some(file),
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
    let body = &token_bodies(&sim)[0];
    let presented = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        body.contains(&format!("client_assertion={presented}")),
        "the file's token is the assertion"
    );
    assert_eq!(bearer_claims(&sim)["appid"], FEDERATED_APP);
}

#[tokio::test]
async fn a_federated_token_for_another_subject_is_refused_with_70021() {
    let sim = start_sim().await;
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", FEDERATED_APP.to_owned()),
        ("scope", "https://outlook.office365.com/.default".to_owned()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        (
            "client_assertion",
            sim.federation_token("system:serviceaccount:other:intruder"),
        ),
    ];
    let resp = reqwest::Client::new()
        .post(sim.token_url("contoso.example"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 70021);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("No matching federated identity record")
    );
    // A token signed by another issuer key does not verify either.
    let other = start_sim().await;
    let mut forged = form.clone();
    forged[4].1 = other.federation_token(SERVICE_ACCOUNT);
    let resp = reqwest::Client::new()
        .post(sim.token_url("contoso.example"))
        .form(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn pkcs12_certificate_credential_carries_requests() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let sim = start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ews-gateway pfx test");
    let cert = params.self_signed(&key).unwrap();
    register(
        &sim,
        &Cert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    );
    let chain = PrivateKeyChain::new(
        vec![1u8; 20],
        PrivateKey::from_der(&key.serialize_der()).unwrap(),
        [Certificate::from_der(cert.der()).unwrap()],
    );
    let mut store = KeyStore::new();
    store.add_entry("ews-gateway", KeyStoreEntry::PrivateKeyChain(chain));
    // No password: tests cannot set environment variables in-process (edition 2024).
    let pfx = store.writer("").write().unwrap();
    let path = dir.path().join("app.pfx");
    std::fs::write(&path, pfx).unwrap();
    let gw = gateway_with(&sim, dir.path(), |t| {
        t.credentials.push(CredentialConfig {
            pkcs12_file: Some(path),
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
    assert_eq!(bearer_claims(&sim)["appidacr"], "2");
}
