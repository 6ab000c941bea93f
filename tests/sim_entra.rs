//! HTTP-level tests of the simulated Entra ID token endpoint and of the access tokens it issues.
//!
//! Each test pins one rule; loosening the rule in `sim::entra` or `sim::tokens` makes it fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ews_gateway::sim::faults::Faults;
use ews_gateway::sim::tokens::{BearerError, ClientAuth, TokenClaims};
use ews_gateway::sim::{SimConfig, SimHandle, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const TENANT_ID: &str = "5f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const DOMAIN: &str = "contoso.example";
const GATEWAY_APP: &str = "11111111-2222-4333-8444-555555555555";
const GATEWAY_SECRET: &str = "sim-secret-gateway-app-0001";
const NO_CONSENT_APP: &str = "33333333-2222-4333-8444-555555555555";
const NO_CONSENT_SECRET: &str = "sim-secret-no-consent-0003";
const EXPIRED_APP: &str = "55555555-2222-4333-8444-555555555555";
const EXPIRED_SECRET: &str = "sim-secret-expired-0005";
const EXO_SCOPE: &str = "https://outlook.office365.com/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn sim() -> SimHandle {
    sim_with(SimConfig::builtin().unwrap()).await
}

async fn sim_with(config: SimConfig) -> SimHandle {
    start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn v1_url(handle: &SimHandle, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/token", handle.base_url())
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

async fn post_form(url: &str, form: &[(&str, &str)]) -> Answer {
    send(reqwest::Client::new().post(url).form(form)).await
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Answer {
        status,
        headers,
        json,
    }
}

fn secret_form<'a>(client_id: &'a str, secret: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", client_id),
        ("scope", EXO_SCOPE),
        ("client_secret", secret),
        ("grant_type", "client_credentials"),
    ]
}

/// Asserts an Entra error answer in every field Entra sends.
fn assert_aadsts(answer: &Answer, status: StatusCode, error: &str, code: u64) -> String {
    let j = &answer.json;
    assert_eq!(answer.status, status, "{j}");
    assert_eq!(j["error"], error, "{j}");
    assert_eq!(j["error_codes"], json!([code]), "{j}");
    let desc = j["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    let trace = j["trace_id"].as_str().unwrap();
    let corr = j["correlation_id"].as_str().unwrap();
    let ts = j["timestamp"].as_str().unwrap();
    assert!(
        desc.ends_with(&format!(
            "\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"
        )),
        "{desc}"
    );
    assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
    assert_eq!(
        j["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    assert_eq!(
        answer.headers["content-type"],
        "application/json; charset=utf-8"
    );
    desc.to_owned()
}

fn payload(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn now() -> i64 {
    ews_gateway::sim::tokens::now_unix()
}

// ---------------------------------------------------------------- secrets, v2 and v1 shapes

#[tokio::test]
async fn v2_secret_grant_returns_numbers_and_entra_headers() {
    let h = sim().await;
    let corr = "0b7f4c56-3c1e-4d8a-9f00-123456789abc";
    let a = send(
        reqwest::Client::new()
            .post(h.token_url(TENANT_ID))
            .header("client-request-id", corr)
            .form(&secret_form(GATEWAY_APP, GATEWAY_SECRET)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["token_type"], "Bearer");
    assert_eq!(a.json["expires_in"], json!(3599));
    assert_eq!(a.json["ext_expires_in"], json!(3599));
    assert!(a.json.get("expires_on").is_none() && a.json.get("resource").is_none());
    assert!(a.json.get("refresh_token").is_none());
    assert_eq!(a.headers["cache-control"], "no-store, no-cache");
    assert_eq!(a.headers["pragma"], "no-cache");
    assert_eq!(a.headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(a.headers["client-request-id"], corr);
    assert!(uuid::Uuid::parse_str(a.headers["x-ms-request-id"].to_str().unwrap()).is_ok());

    let token = a.json["access_token"].as_str().unwrap();
    let c = payload(token);
    assert_eq!(c["aud"], "https://outlook.office365.com");
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT_ID}/"));
    assert_eq!(c["idp"], c["iss"]);
    assert_eq!(c["tid"], TENANT_ID);
    assert_eq!(c["appid"], GATEWAY_APP);
    assert_eq!(c["app_displayname"], "ews-gateway (simulated)");
    assert_eq!(c["appidacr"], "1");
    assert_eq!(c["oid"], "aaaaaaaa-0000-4000-8000-000000000001");
    assert_eq!(c["sub"], c["oid"]);
    assert_eq!(c["roles"], json!(["full_access_as_app"]));
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["idtyp"], "app");
    assert!(c["uti"].is_string());
    let (iat, nbf, exp) = (
        c["iat"].as_i64().unwrap(),
        c["nbf"].as_i64().unwrap(),
        c["exp"].as_i64().unwrap(),
    );
    assert_eq!(iat, nbf);
    assert_eq!(exp - iat, 3599 + 300, "iat back-dated five minutes");
    assert!((exp - 3599 - now()).abs() <= 5);

    let v = h.state.tokens.validate(token, now()).unwrap();
    assert_eq!(v.appid, GATEWAY_APP);
    assert_eq!(v.tid, TENANT_ID);
}

#[tokio::test]
async fn v1_grant_returns_strings_expires_on_and_resource_as_requested() {
    let h = sim().await;
    let a = post_form(
        &v1_url(&h, TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", GATEWAY_APP),
            ("client_secret", GATEWAY_SECRET),
            ("resource", "https://outlook.office365.com/"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    for field in ["expires_in", "ext_expires_in", "expires_on", "not_before"] {
        assert!(
            a.json[field].is_string(),
            "{field} must be a string: {}",
            a.json
        );
    }
    assert_eq!(a.json["expires_in"], "3599");
    assert_eq!(a.json["resource"], "https://outlook.office365.com/");
    let token = a.json["access_token"].as_str().unwrap();
    let c = payload(token);
    assert_eq!(
        c["aud"], "https://outlook.office365.com/",
        "v1 keeps the slash"
    );
    assert_eq!(a.json["expires_on"], c["exp"].as_i64().unwrap().to_string());
    assert_eq!(a.json["not_before"], c["nbf"].as_i64().unwrap().to_string());
    assert!(h.state.tokens.validate(token, now()).is_ok());
}

#[tokio::test]
async fn v2_audience_drops_trailing_slash_and_accepts_every_exchange_resource() {
    let h = sim().await;
    for (scope, aud) in [
        (
            "https://outlook.office365.com//.default",
            "https://outlook.office365.com",
        ),
        (
            "https://outlook.office.com/.default",
            "https://outlook.office.com",
        ),
    ] {
        let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
        form[1] = ("scope", scope);
        let a = post_form(&h.token_url(TENANT_ID), &form).await;
        assert_eq!(a.status, StatusCode::OK, "{scope}: {}", a.json);
        assert_eq!(
            payload(a.json["access_token"].as_str().unwrap())["aud"],
            aud
        );
    }
}

#[tokio::test]
async fn tenant_is_addressable_by_any_domain() {
    let h = sim().await;
    for tenant in [DOMAIN, "CONTOSO.onmicrosoft.example"] {
        let a = post_form(
            &h.token_url(tenant),
            &secret_form(GATEWAY_APP, GATEWAY_SECRET),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{tenant}: {}", a.json);
        assert_eq!(
            payload(a.json["access_token"].as_str().unwrap())["tid"],
            TENANT_ID
        );
    }
}

#[tokio::test]
async fn secret_in_basic_authorization_header_is_accepted() {
    let h = sim().await;
    let form = [("scope", EXO_SCOPE), ("grant_type", "client_credentials")];
    let ok = send(
        reqwest::Client::new()
            .post(h.token_url(TENANT_ID))
            .basic_auth(GATEWAY_APP, Some(GATEWAY_SECRET))
            .form(&form),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert_eq!(
        payload(ok.json["access_token"].as_str().unwrap())["appid"],
        GATEWAY_APP
    );
    let bad = send(
        reqwest::Client::new()
            .post(h.token_url(TENANT_ID))
            .basic_auth(GATEWAY_APP, Some("wrong"))
            .form(&form),
    )
    .await;
    assert_aadsts(&bad, StatusCode::UNAUTHORIZED, "invalid_client", 7_000_215);
}

#[tokio::test]
async fn unknown_tenant_is_90002() {
    let h = sim().await;
    for tenant in ["0f0e0d0c-0b0a-4909-8807-060504030201", "northwind.example"] {
        let a = post_form(
            &h.token_url(tenant),
            &secret_form(GATEWAY_APP, GATEWAY_SECRET),
        )
        .await;
        let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_request", 90_002);
        assert!(d.contains(&format!("Tenant '{tenant}' not found.")), "{d}");
    }
}

#[tokio::test]
async fn malformed_tenant_identifier_is_900023() {
    let h = sim().await;
    let a = post_form(
        &h.token_url("not_a_tenant"),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_request", 900_023);
    assert!(
        d.contains("'not_a_tenant' is neither a valid DNS name"),
        "{d}"
    );
}

#[tokio::test]
async fn unknown_app_is_700016_unauthorized_client() {
    let h = sim().await;
    let app = "12345678-2222-4333-8444-555555555555";
    let a = post_form(&h.token_url(TENANT_ID), &secret_form(app, GATEWAY_SECRET)).await;
    let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "unauthorized_client", 700_016);
    assert!(
        d.contains(&format!(
            "Application with identifier '{app}' was not found in the directory"
        )),
        "{d}"
    );
}

#[tokio::test]
async fn wrong_secret_is_7000215_with_401() {
    let h = sim().await;
    // Another app's valid secret is still the wrong secret.
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, NO_CONSENT_SECRET),
    )
    .await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 7_000_215);
    assert!(d.contains("Invalid client secret provided."), "{d}");
    assert!(d.contains(GATEWAY_APP), "{d}");
    assert!(!d.contains(NO_CONSENT_SECRET), "secrets never echoed");
}

#[tokio::test]
async fn expired_secret_is_7000222_with_401() {
    let h = sim().await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(EXPIRED_APP, EXPIRED_SECRET),
    )
    .await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 7_000_222);
    assert!(
        d.contains(&format!(
            "The provided client secret keys for app '{EXPIRED_APP}' are expired."
        )),
        "{d}"
    );
}

#[tokio::test]
async fn neither_secret_nor_assertion_is_7000218() {
    let h = sim().await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &[
            ("client_id", GATEWAY_APP),
            ("scope", EXO_SCOPE),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 7_000_218);
    assert!(d.contains("'client_assertion' or 'client_secret'"), "{d}");
}

#[tokio::test]
async fn missing_grant_type_is_900144() {
    let h = sim().await;
    let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
    form.retain(|(k, _)| *k != "grant_type");
    let a = post_form(&h.token_url(TENANT_ID), &form).await;
    let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_request", 900_144);
    assert!(d.contains("parameter: 'grant_type'."), "{d}");
}

#[tokio::test]
async fn unsupported_grant_type_is_70003() {
    let h = sim().await;
    let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
    form[3] = ("grant_type", "password");
    let a = post_form(&h.token_url(TENANT_ID), &form).await;
    assert_aadsts(
        &a,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
        70_003,
    );
}

#[tokio::test]
async fn scope_without_default_suffix_is_1002012() {
    let h = sim().await;
    let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
    form[1] = (
        "scope",
        "https://outlook.office365.com/EWS.AccessAsUser.All",
    );
    let a = post_form(&h.token_url(TENANT_ID), &form).await;
    let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_scope", 1_002_012);
    assert!(d.contains("/.default suffixed"), "{d}");
}

#[tokio::test]
async fn scope_for_unknown_resource_is_500011() {
    let h = sim().await;
    for scope in [
        "https://outlook.office365.com/ews/Exchange.asmx/.default",
        "https://management.azure.com/.default",
    ] {
        let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
        form[1] = ("scope", scope);
        let a = post_form(&h.token_url(TENANT_ID), &form).await;
        let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_resource", 500_011);
        let resource = scope.trim_end_matches("/.default");
        assert!(
            d.contains(&format!(
                "The resource principal named {resource} was not found"
            )),
            "{d}"
        );
    }
}

#[tokio::test]
async fn v1_unknown_resource_is_500011_and_missing_resource_900144() {
    let h = sim().await;
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", GATEWAY_APP),
        ("client_secret", GATEWAY_SECRET),
        ("resource", "https://outlook.office365.com/.default"),
    ];
    let a = post_form(&v1_url(&h, TENANT_ID), &form).await;
    assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_resource", 500_011);
    form.pop();
    let a = post_form(&v1_url(&h, TENANT_ID), &form).await;
    let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_request", 900_144);
    assert!(d.contains("'resource'"), "{d}");
}

#[tokio::test]
async fn malformed_scope_is_70011() {
    let h = sim().await;
    for scope in [
        "https://outlook.office365.com/.default https://graph.microsoft.com/.default",
        "/.default",
    ] {
        let mut form = secret_form(GATEWAY_APP, GATEWAY_SECRET);
        form[1] = ("scope", scope);
        let a = post_form(&h.token_url(TENANT_ID), &form).await;
        let d = assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_scope", 70_011);
        assert!(d.contains("input parameter 'scope' is not valid"), "{d}");
    }
}

#[tokio::test]
async fn app_without_consent_gets_a_token_without_roles() {
    let h = sim().await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(NO_CONSENT_APP, NO_CONSENT_SECRET),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let token = a.json["access_token"].as_str().unwrap();
    assert!(payload(token).get("roles").is_none());
    assert!(
        h.state
            .tokens
            .validate(token, now())
            .unwrap()
            .roles
            .is_empty()
    );
}

#[tokio::test]
async fn get_is_refused_with_900561() {
    let h = sim().await;
    let a = send(reqwest::Client::new().get(h.token_url(TENANT_ID))).await;
    assert_aadsts(&a, StatusCode::BAD_REQUEST, "invalid_request", 900_561);
}

#[tokio::test]
async fn token_unavailable_fault_answers_503() {
    let h = sim().await;
    h.set_faults(Faults {
        token_unavailable: true,
        ..Faults::default()
    });
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json["error"], "temporarily_unavailable");
    assert!(a.json.get("access_token").is_none());
}

#[tokio::test]
async fn token_latency_fault_delays_the_answer() {
    let h = sim().await;
    h.set_faults(Faults {
        token_latency_ms: 400,
        ..Faults::default()
    });
    let started = Instant::now();
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn jwks_is_published_and_verifies_issued_tokens() {
    let h = sim().await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    let token = a.json["access_token"].as_str().unwrap();
    for path in [
        format!("/{TENANT_ID}/discovery/v2.0/keys"),
        "/common/discovery/keys".to_owned(),
    ] {
        let jwks: Value = reqwest::get(format!("{}{path}", h.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = &jwks["keys"][0];
        for field in ["kty", "use", "kid", "x5t", "n", "e"] {
            assert!(key[field].is_string(), "{field} missing in {jwks}");
        }
        assert_eq!(key["kty"], "RSA");
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.kid.as_deref(), key["kid"].as_str());
        assert_eq!(header.x5t.as_deref(), key["x5t"].as_str());
        // x5t is the SHA-1 of the published certificate.
        let cert = STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap();
        assert_eq!(key["x5t"], URL_SAFE_NO_PAD.encode(Sha1::digest(&cert)));
        let dk = jsonwebtoken::DecodingKey::from_rsa_components(
            key["n"].as_str().unwrap(),
            key["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://outlook.office365.com"]);
        jsonwebtoken::decode::<Value>(token, &dk, &validation).unwrap();
    }
}

#[tokio::test]
async fn header_nonce_option_puts_a_nonce_in_issued_tokens() {
    let mut config = SimConfig::builtin().unwrap();
    config.token_header_nonce = true;
    let h = sim_with(config).await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    let token = a.json["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert!(header.nonce.is_some());
    assert!(h.state.tokens.validate(token, now()).is_ok());
}

// ---------------------------------------------------------------- certificate credentials

struct TestCert {
    key_pem: String,
    cert_pem: String,
    der: Vec<u8>,
}

fn rsa_cert() -> TestCert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    cert_for(key)
}

fn cert_for(key: rcgen::KeyPair) -> TestCert {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ews-gateway test client");
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
        der: cert.der().to_vec(),
    }
}

fn register(h: &SimHandle, cert: &TestCert) {
    let mut dir = h.state.directory.write().unwrap();
    dir.tenant_mut(TENANT_ID)
        .unwrap()
        .app_mut(GATEWAY_APP)
        .unwrap()
        .certificates
        .push(cert.cert_pem.clone());
}

fn real_aud() -> String {
    format!("https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/token")
}

fn assertion_claims(aud: &str) -> Value {
    let n = now();
    json!({
        "aud": aud,
        "iss": GATEWAY_APP,
        "sub": GATEWAY_APP,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": n,
        "iat": n,
        "exp": n + 600,
    })
}

/// PS256 with `x5t#S256`, as current MSAL sends.
fn ps256(signing_key_pem: &str, named_cert_der: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::PS256);
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(named_cert_der)));
    let key = EncodingKey::from_rsa_pem(signing_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// RS256 with `x5t` (SHA-1), as older libraries send.
fn rs256(signing_key_pem: &str, named_cert_der: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.x5t = Some(URL_SAFE_NO_PAD.encode(Sha1::digest(named_cert_der)));
    let key = EncodingKey::from_rsa_pem(signing_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn post_assertion(url: &str, assertion: &str) -> Answer {
    post_form(
        url,
        &[
            ("client_id", GATEWAY_APP),
            ("scope", EXO_SCOPE),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("grant_type", "client_credentials"),
        ],
    )
    .await
}

#[tokio::test]
async fn ps256_assertion_with_x5t_s256_gets_a_certificate_token() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    let jwt = ps256(&cert.key_pem, &cert.der, &assertion_claims(&real_aud()));
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let token = a.json["access_token"].as_str().unwrap();
    assert_eq!(payload(token)["appidacr"], "2");
    assert_eq!(h.state.tokens.validate(token, now()).unwrap().appidacr, "2");
}

#[tokio::test]
async fn rs256_assertion_with_sha1_x5t_is_accepted_with_simulator_v1_audience() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    // The simulator's own token URL (v1 form, tenant by domain) is an accepted audience.
    let aud = format!("{}/{DOMAIN}/oauth2/token", h.base_url());
    let jwt = rs256(&cert.key_pem, &cert.der, &assertion_claims(&aud));
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        payload(a.json["access_token"].as_str().unwrap())["appidacr"],
        "2"
    );
}

#[tokio::test]
async fn assertion_signed_by_another_key_is_700027() {
    let h = sim().await;
    let cert = rsa_cert();
    let intruder = rsa_cert();
    register(&h, &cert);
    // Names the registered certificate but is signed by a different key.
    let jwt = ps256(&intruder.key_pem, &cert.der, &assertion_claims(&real_aud()));
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_027);
    assert!(
        d.contains("[Reason - The provided signature value did not match"),
        "{d}"
    );
}

#[tokio::test]
async fn assertion_with_unknown_thumbprint_is_700027_key_not_found() {
    let h = sim().await;
    let cert = rsa_cert();
    let unregistered = rsa_cert();
    register(&h, &cert);
    let jwt = rs256(
        &unregistered.key_pem,
        &unregistered.der,
        &assertion_claims(&real_aud()),
    );
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_027);
    let thumb = hex::encode_upper(Sha1::digest(&unregistered.der));
    assert!(d.contains("[Reason - The key was not found."), "{d}");
    assert!(d.contains(&thumb), "{d}");
}

#[tokio::test]
async fn assertion_for_another_audience_is_refused() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    for aud in [
        "https://login.microsoftonline.com/0f0e0d0c-0b0a-4909-8807-060504030201/oauth2/v2.0/token"
            .to_owned(),
        "https://graph.microsoft.com".to_owned(),
        format!("https://login.microsoftonline.com/{TENANT_ID}/v2.0"),
    ] {
        let jwt = ps256(&cert.key_pem, &cert.der, &assertion_claims(&aud));
        let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
        let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_023);
        assert!(d.contains("audience claim does not match"), "{aud}: {d}");
    }
}

#[tokio::test]
async fn assertion_whose_iss_differs_from_sub_is_refused() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    let mut claims = assertion_claims(&real_aud());
    claims["iss"] = json!(NO_CONSENT_APP);
    let jwt = ps256(&cert.key_pem, &cert.der, &claims);
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_021);
    let mut claims = assertion_claims(&real_aud());
    claims["sub"] = json!(NO_CONSENT_APP);
    let jwt = ps256(&cert.key_pem, &cert.der, &claims);
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_021);
}

#[tokio::test]
async fn expired_or_future_assertion_is_700024() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    let n = now();
    for (nbf, exp) in [(n - 7200, n - 3600), (n + 3600, n + 4200)] {
        let mut claims = assertion_claims(&real_aud());
        claims["nbf"] = json!(nbf);
        claims["iat"] = json!(nbf);
        claims["exp"] = json!(exp);
        let jwt = ps256(&cert.key_pem, &cert.der, &claims);
        let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
        let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_024);
        assert!(d.contains("not within its valid time range"), "{d}");
    }
}

#[tokio::test]
async fn replayed_assertion_jti_is_700027() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    let jwt = ps256(&cert.key_pem, &cert.der, &assertion_claims(&real_aud()));
    let first = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let again = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    let d = assert_aadsts(&again, StatusCode::UNAUTHORIZED, "invalid_client", 700_027);
    assert!(d.contains("has already been used"), "{d}");
}

#[tokio::test]
async fn es256_assertion_is_700027_unsupported_algorithm() {
    let h = sim().await;
    let cert = rsa_cert();
    register(&h, &cert);
    let ec = cert_for(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
    register(&h, &ec);
    let mut header = Header::new(Algorithm::ES256);
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&ec.der)));
    let key = EncodingKey::from_ec_pem(ec.key_pem.as_bytes()).unwrap();
    let jwt = jsonwebtoken::encode(&header, &assertion_claims(&real_aud()), &key).unwrap();
    let a = post_assertion(&h.token_url(TENANT_ID), &jwt).await;
    let d = assert_aadsts(&a, StatusCode::UNAUTHORIZED, "invalid_client", 700_027);
    assert!(
        d.contains("Unsupported asymmetric signing algorithm"),
        "{d}"
    );
}

// ---------------------------------------------------------------- TokenService::validate

fn gateway_claims(h: &SimHandle, aud: &str, at: i64) -> TokenClaims {
    let dir = h.state.directory.read().unwrap();
    let app = dir.tenant(TENANT_ID).unwrap().app(GATEWAY_APP).unwrap();
    TokenClaims::app_only(
        TENANT_ID,
        app,
        aud,
        ClientAuth::Secret,
        at,
        Duration::from_secs(3599),
    )
}

#[tokio::test]
async fn validate_refuses_tampered_tokens() {
    let h = sim().await;
    let a = post_form(
        &h.token_url(TENANT_ID),
        &secret_form(NO_CONSENT_APP, NO_CONSENT_SECRET),
    )
    .await;
    let token = a.json["access_token"].as_str().unwrap();
    let mut claims = payload(token);
    claims["roles"] = json!(["full_access_as_app"]);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let err = h.state.tokens.validate(&forged, now()).unwrap_err();
    assert!(matches!(err, BearerError::BadSignature), "{err:?}");
    assert_eq!(
        err.diagnostics(),
        r#"2000000;reason="The token has an invalid signature.";error_category="invalid_signature""#
    );
    let err = h.state.tokens.validate("not-a-jwt", now()).unwrap_err();
    assert!(matches!(err, BearerError::Malformed), "{err:?}");
}

#[tokio::test]
async fn validate_refuses_tokens_signed_by_another_simulator() {
    let ours = sim().await;
    let theirs = sim().await;
    let a = post_form(
        &theirs.token_url(TENANT_ID),
        &secret_form(GATEWAY_APP, GATEWAY_SECRET),
    )
    .await;
    let token = a.json["access_token"].as_str().unwrap();
    assert!(theirs.state.tokens.validate(token, now()).is_ok());
    let err = ours.state.tokens.validate(token, now()).unwrap_err();
    assert!(matches!(err, BearerError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn validate_refuses_wrong_audience_with_2000003() {
    let h = sim().await;
    let token = h
        .state
        .tokens
        .issue(&gateway_claims(&h, "https://graph.microsoft.com", now()))
        .unwrap();
    let err = h.state.tokens.validate(&token, now()).unwrap_err();
    assert!(
        matches!(&err, BearerError::WrongAudience { actual } if actual == "https://graph.microsoft.com"),
        "{err:?}"
    );
    assert_eq!(
        err.diagnostics(),
        r#"2000003;reason="The audience claim value is invalid 'aud'.";error_category="invalid_resource""#
    );
}

#[tokio::test]
async fn validate_refuses_expired_and_not_yet_valid_tokens() {
    let h = sim().await;
    let issued_at = now() - 2 * 3600;
    let token = h
        .state
        .tokens
        .issue(&gateway_claims(
            &h,
            "https://outlook.office365.com",
            issued_at,
        ))
        .unwrap();
    // Valid at the time it was issued, expired now.
    assert!(h.state.tokens.validate(&token, issued_at).is_ok());
    let err = h.state.tokens.validate(&token, now()).unwrap_err();
    assert!(matches!(err, BearerError::Expired), "{err:?}");
    assert_eq!(
        err.diagnostics(),
        r#"2000001;reason="The token has expired.";error_category="invalid_token""#
    );
    let future = h
        .state
        .tokens
        .issue(&gateway_claims(
            &h,
            "https://outlook.office365.com",
            now() + 3600,
        ))
        .unwrap();
    let err = h.state.tokens.validate(&future, now()).unwrap_err();
    assert!(matches!(err, BearerError::NotYetValid), "{err:?}");
}
