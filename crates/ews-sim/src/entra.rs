//! Simulated Entra ID token endpoint (client-credentials grant, v1 and v2).
//!
//! Owns request parsing, client authentication (secret in the body or in `Authorization: Basic`,
//! or a certificate-signed client assertion checked against `App.certificates`), the assertion
//! replay cache, and Entra's error and success shapes (reference D1–D4). Tokens themselves are
//! made by [`super::tokens::TokenService`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, Method, Response, StatusCode, header};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::macros::format_description;

use super::directory::{App, Tenant};
use super::tokens::{ClientAuth, TokenClaims};
use super::{SimRequest, SimState, respond};
use ews_http::http_util::Body;

/// Which token API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenApi {
    /// `/{tenant}/oauth2/token` with `resource=`.
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope=`.
    V2,
}

/// Exchange Online resource identifiers Entra knows (as `resource`, or before `/.default`).
pub const EXCHANGE_RESOURCES: [&str; 3] = [
    "https://outlook.office365.com",
    "https://outlook.office365.com/",
    "https://outlook.office.com",
];

/// Microsoft Graph resource identifiers Entra knows.
pub const GRAPH_RESOURCES: [&str; 2] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
];

/// `client_assertion_type` for certificate credentials.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew allowed on client assertion `nbf`/`exp`, in seconds.
pub const ASSERTION_SKEW_SECS: i64 = 300;

/// Token endpoint state.
#[derive(Debug, Default)]
pub struct EntraState {
    /// `client_id|jti` of accepted assertions → Unix time after which they may be forgotten.
    seen_jti: Mutex<HashMap<String, i64>>,
}

impl EntraState {
    /// Records an assertion id; false when it was already used and has not expired yet.
    fn record_jti(&self, client_id: &str, jti: &str, forget_after: i64, now: i64) -> bool {
        let Ok(mut seen) = self.seen_jti.lock() else {
            return false;
        };
        // Pruned on every insert: entries can only be replayed while their assertion is valid.
        seen.retain(|_, until| *until >= now);
        let key = format!("{}|{jti}", client_id.to_ascii_lowercase());
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, forget_after);
        true
    }

    /// How many assertion ids are remembered (for tests of pruning).
    pub fn remembered_assertions(&self) -> usize {
        self.seen_jti.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// An Entra error: HTTP status, OAuth `error`, AADSTS code and message (without the prefix).
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

impl Failure {
    fn new(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        // Entra answers 401 for invalid_client and 400 for everything else.
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            code,
            message: message.into(),
        }
    }

    fn missing(parameter: &str) -> Self {
        Self::new(
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    fn assertion(reason: impl std::fmt::Display) -> Self {
        Self::new(
            "invalid_client",
            700_027,
            format!("Client assertion contains an invalid signature. [Reason - {reason}]"),
        )
    }
}

/// Per-response identifiers, as in every Entra answer.
struct Ids {
    trace_id: String,
    correlation_id: String,
    now: OffsetDateTime,
}

impl Ids {
    fn for_request(req: &SimRequest) -> Self {
        // Entra uses the caller's client-request-id as the correlation id when it is a GUID.
        let correlation_id = req
            .headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
            .unwrap_or_else(uuid::Uuid::new_v4)
            .to_string();
        Self {
            trace_id: uuid::Uuid::new_v4().to_string(),
            correlation_id,
            now: OffsetDateTime::now_utc(),
        }
    }

    fn timestamp(&self) -> String {
        self.now
            .format(format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default()
    }
}

/// Handles a token request.
pub async fn handle_token(
    state: &Arc<SimState>,
    tenant: &str,
    api: TokenApi,
    req: SimRequest,
) -> Response<Body> {
    let faults = state.faults();
    if faults.token_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.token_latency_ms)).await;
    }
    let ids = Ids::for_request(&req);
    if faults.token_unavailable {
        let mut failure = Failure::new(
            "temporarily_unavailable",
            90_033,
            "A transient error has occurred. Please try again.",
        );
        failure.status = StatusCode::SERVICE_UNAVAILABLE;
        return error_response(&failure, &ids);
    }
    let now = ids.now.unix_timestamp();
    match issue(state, tenant, api, &req, now) {
        Ok(body) => json_response(StatusCode::OK, body.to_string(), &ids),
        Err(failure) => error_response(&failure, &ids),
    }
}

/// The whole decision: a success body or the Entra error.
fn issue(
    state: &SimState,
    tenant_segment: &str,
    api: TokenApi,
    req: &SimRequest,
    now: i64,
) -> Result<serde_json::Value, Failure> {
    if req.method != Method::POST {
        return Err(Failure::new(
            "invalid_request",
            900_561,
            format!(
                "The endpoint only accepts POST requests. Received a {} request.",
                req.method
            ),
        ));
    }
    let tenant_owned = find_tenant(state, tenant_segment)?;
    let tenant = &tenant_owned;
    let form = Form::parse(req);

    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| Failure::missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(Failure::new(
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }

    let basic = basic_credentials(req);
    let client_id = match (&basic, form.get("client_id")) {
        (Some((id, _)), _) => id.clone(),
        (None, Some(id)) => id.to_owned(),
        (None, None) => return Err(Failure::missing("client_id")),
    };

    let resource = requested_resource(api, &form)?;

    let app = tenant.app(&client_id).ok_or_else(|| {
        Failure::new(
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant_segment}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    })?;
    // A Basic header and a body client_id must name the same client.
    if let (Some(_), Some(body_id)) = (&basic, form.get("client_id"))
        && !body_id.eq_ignore_ascii_case(&app.client_id)
    {
        return Err(bad_secret(app));
    }

    let auth =
        if form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some() {
            let (Some(kind), Some(assertion)) = (
                form.get("client_assertion_type"),
                form.get("client_assertion"),
            ) else {
                return Err(neither_credential());
            };
            if kind != JWT_BEARER {
                return Err(neither_credential());
            }
            if is_federated(app, assertion) {
                verify_federated(state, app, assertion)?;
            } else {
                verify_assertion(state, tenant, app, assertion, now)?;
            }
            ClientAuth::Certificate
        } else {
            let secret = match (&basic, form.get("client_secret")) {
                (Some((_, secret)), _) => secret.clone(),
                (None, Some(secret)) => secret.to_owned(),
                (None, None) => return Err(neither_credential()),
            };
            verify_secret(app, &secret, now)?;
            ClientAuth::Secret
        };

    let graph = GRAPH_RESOURCES.contains(&resource.as_str());
    if !graph && !EXCHANGE_RESOURCES.contains(&resource.as_str()) {
        return Err(Failure::new(
            "invalid_resource",
            500_011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
                tenant.name
            ),
        ));
    }

    // v2 tokens name the resource without a trailing slash; v1 echoes what was asked for.
    let aud = match api {
        TokenApi::V2 => resource.trim_end_matches('/').to_owned(),
        TokenApi::V1 => resource.clone(),
    };
    let lifetime = state.tokens.lifetime();
    let mut claims = TokenClaims::app_only(&tenant.id, app, &aud, auth, now, lifetime);
    if graph {
        // Each resource has its own consented roles.
        claims.roles = app.graph_roles.clone();
    }
    let token = state.tokens.issue(&claims).map_err(|e| {
        Failure::new(
            "temporarily_unavailable",
            90_033,
            format!("A transient error has occurred. Please try again. ({e})"),
        )
    })?;
    let expires_in = lifetime.as_secs();
    Ok(match api {
        TokenApi::V2 => serde_json::json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }),
        TokenApi::V1 => serde_json::json!({
            "token_type": "Bearer",
            "expires_in": expires_in.to_string(),
            "ext_expires_in": expires_in.to_string(),
            "expires_on": claims.exp.to_string(),
            "not_before": claims.nbf.to_string(),
            "resource": resource,
            "access_token": token,
        }),
    })
}

/// Resolves the `{tenant}` path segment (GUID or verified domain).
fn find_tenant(state: &SimState, segment: &str) -> Result<Tenant, Failure> {
    let lower = segment.to_ascii_lowercase();
    if matches!(lower.as_str(), "common" | "organizations" | "consumers") {
        // Client credentials need a tenant; Entra cannot infer one from an app-only request.
        return Err(Failure::new(
            "invalid_request",
            50_059,
            "No tenant-identifying information found in either the request or implied by any provided credentials.",
        ));
    }
    if uuid::Uuid::parse_str(segment).is_err() && !is_dns_name(segment) {
        return Err(Failure::new(
            "invalid_request",
            900_023,
            format!(
                "Specified tenant identifier '{segment}' is neither a valid DNS name, nor a valid external domain."
            ),
        ));
    }
    let directory = state.directory.read().map_err(|_| {
        Failure::new(
            "temporarily_unavailable",
            90_033,
            "A transient error has occurred. Please try again.",
        )
    })?;
    directory.tenant(segment).cloned().ok_or_else(|| {
        Failure::new(
            "invalid_request",
            90_002,
            format!(
                "Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    })
}

/// A DNS name with at least two labels of letters, digits and inner hyphens.
fn is_dns_name(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The resource asked for: v2 `scope` (`<resource>/.default`) or v1 `resource`.
fn requested_resource(api: TokenApi, form: &Form) -> Result<String, Failure> {
    match api {
        TokenApi::V1 => form
            .get("resource")
            .map(str::to_owned)
            .ok_or_else(|| Failure::missing("resource")),
        TokenApi::V2 => {
            if form.get("resource").is_some() {
                return Err(Failure::new(
                    "invalid_request",
                    901_002,
                    "The 'resource' request parameter is not supported.",
                ));
            }
            let scope = form.get("scope").ok_or_else(|| Failure::missing("scope"))?;
            let invalid_scope = || {
                Failure::new(
                    "invalid_scope",
                    70_011,
                    format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                    ),
                )
            };
            let values: Vec<&str> = scope.split_whitespace().collect();
            let [single] = values.as_slice() else {
                // Empty, or more than one value: client credentials take exactly one resource.
                return Err(invalid_scope());
            };
            let Some(resource) = single.strip_suffix("/.default") else {
                return Err(Failure::new(
                    "invalid_scope",
                    1_002_012,
                    format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                ));
            };
            if resource.is_empty() {
                return Err(invalid_scope());
            }
            Ok(resource.to_owned())
        }
    }
}

fn neither_credential() -> Failure {
    Failure::new(
        "invalid_client",
        7_000_218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )
}

fn bad_secret(app: &App) -> Failure {
    Failure::new(
        "invalid_client",
        7_000_215,
        format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
            app.client_id
        ),
    )
}

fn verify_secret(app: &App, presented: &str, now: i64) -> Result<(), Failure> {
    let matching = app
        .secrets
        .iter()
        .find(|s| bool::from(s.value.as_bytes().ct_eq(presented.as_bytes())));
    match matching {
        None => Err(bad_secret(app)),
        Some(secret) if secret.expires_at.is_some_and(|at| at <= now) => Err(Failure::new(
            "invalid_client",
            7_000_222,
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// `client_id` and secret from `Authorization: Basic` (RFC 6749 §2.3.1: each form-encoded).
fn basic_credentials(req: &SimRequest) -> Option<(String, String)> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| -> Option<String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={}", s)).ok()?;
        pairs.into_iter().next().map(|(_, v)| v)
    };
    Some((decode(id)?, decode(secret)?))
}

/// The form body (first value wins).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(req: &SimRequest) -> Self {
        let is_form = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        // Entra reads parameters only from a form body; anything else looks like an empty request.
        let pairs = if is_form {
            serde_urlencoded::from_bytes(&req.body).unwrap_or_default()
        } else {
            Vec::new()
        };
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// A certificate registered on an app, parsed once per request.
struct RegisteredCert {
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    spki: Vec<u8>,
    is_rsa: bool,
    not_before: i64,
    not_after: i64,
}

fn registered_certs(app: &App) -> Vec<RegisteredCert> {
    use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
    let mut out = Vec::new();
    for pem in &app.certificates {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten() {
            let Ok(cert) = block.parse_x509() else {
                continue;
            };
            let spki = cert.public_key();
            out.push(RegisteredCert {
                sha1: Sha1::digest(&block.contents).to_vec(),
                sha256: Sha256::digest(&block.contents).to_vec(),
                spki: spki.raw.to_vec(),
                is_rsa: spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION,
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
            });
        }
    }
    out
}

fn portal_date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[month]/[day]/[year] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn iso_date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].0000000Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Checks a client assertion (reference D4) and records its `jti`.
/// Whether an assertion comes from an external issuer the app federates with (workload
/// identity federation) rather than from the app's own certificate.
fn is_federated(app: &App, assertion: &str) -> bool {
    let issuer = assertion
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_owned));
    issuer.is_some_and(|iss| {
        iss != app.client_id && app.federated_credentials.iter().any(|f| f.issuer == iss)
    })
}

/// Checks an external assertion against the app's federated identity credentials.
fn verify_federated(state: &SimState, app: &App, assertion: &str) -> Result<(), Failure> {
    let claims = state.federation.verify(assertion).ok_or_else(|| {
        Failure::assertion(
            "The federated assertion's signature or lifetime is invalid for its issuer.",
        )
    })?;
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (iss, sub) = (text("iss"), text("sub"));
    let audiences: Vec<String> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let matching = app
        .federated_credentials
        .iter()
        .any(|f| f.issuer == iss && f.subject == sub && audiences.contains(&f.audience));
    if !matching {
        return Err(Failure::new(
            "invalid_client",
            70_021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                audiences.join(",")
            ),
        ));
    }
    Ok(())
}

fn verify_assertion(
    state: &SimState,
    tenant: &Tenant,
    app: &App,
    assertion: &str,
    now: i64,
) -> Result<(), Failure> {
    let malformed = || Failure::assertion("The client assertion is not a well-formed JWT.");
    let mut parts = assertion.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(p64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let sig = URL_SAFE_NO_PAD.decode(s64).map_err(|_| malformed())?;

    let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    // Entra accepts only RSA certificates for apps.
    let verify_alg: &'static signature::RsaParameters = match alg {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        other => {
            return Err(Failure::assertion(format!(
                "Invalid JWT token. Unsupported asymmetric signing algorithm '{other}'."
            )));
        }
    };

    // x5t#S256 (current MSAL) or x5t (SHA-1, older libraries).
    let thumb = |name: &str| {
        header
            .get(name)
            .and_then(|v| v.as_str())
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
    };
    let (thumbprint, by_sha256) = match (thumb("x5t#S256"), thumb("x5t")) {
        (Some(t), _) => (t, true),
        (None, Some(t)) => (t, false),
        (None, None) => {
            return Err(Failure::assertion(
                "Invalid JWT token. No certificate thumbprint specified in token header.",
            ));
        }
    };
    let thumb_hex = hex::encode_upper(&thumbprint);
    let certs = registered_certs(app);
    let Some(cert) = certs.iter().find(|c| {
        let registered = if by_sha256 { &c.sha256 } else { &c.sha1 };
        *registered == thumbprint
    }) else {
        return Err(Failure::assertion(format!(
            "The key was not found., Thumbprint of key used by client: '{thumb_hex}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.",
            app.client_id
        )));
    };
    let found_key = format!(
        "Found key 'Start={}, End={}'",
        portal_date(cert.not_before),
        portal_date(cert.not_after)
    );
    if !cert.is_rsa {
        return Err(Failure::assertion(
            "Invalid JWT token. Unsupported asymmetric signing algorithm.",
        ));
    }
    if cert.not_after < now || cert.not_before > now {
        return Err(Failure::assertion(format!(
            "The key used is expired., Thumbprint of key used by client: '{thumb_hex}', {found_key}"
        )));
    }
    let signing_input = format!("{h64}.{p64}");
    UnparsedPublicKey::new(verify_alg, &cert.spki)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| {
            Failure::assertion(format!(
                "The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{thumb_hex}', {found_key}"
            ))
        })?;

    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let aud = text("aud");
    if !assertion_audiences(state, tenant)
        .iter()
        .any(|a| a.eq_ignore_ascii_case(aud))
    {
        return Err(Failure::new(
            "invalid_client",
            700_023,
            "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }
    let (iss, sub) = (text("iss"), text("sub"));
    if !iss.eq_ignore_ascii_case(&app.client_id) || !sub.eq_ignore_ascii_case(&app.client_id) {
        return Err(Failure::new(
            "invalid_client",
            700_021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        ));
    }

    let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64) else {
        return Err(Failure::assertion(
            "The client assertion has no 'exp' claim.",
        ));
    };
    let nbf = claims.get("nbf").and_then(serde_json::Value::as_i64);
    let too_early = nbf.is_some_and(|nbf| nbf - ASSERTION_SKEW_SECS > now);
    if too_early || exp + ASSERTION_SKEW_SECS < now {
        return Err(Failure::new(
            "invalid_client",
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
                iso_date(now),
                nbf.map(iso_date).unwrap_or_else(|| "unset".to_owned()),
                iso_date(exp)
            ),
        ));
    }

    let jti = text("jti");
    if jti.is_empty() {
        return Err(Failure::assertion(
            "The client assertion has no 'jti' claim.",
        ));
    }
    if !state
        .entra
        .record_jti(&app.client_id, jti, exp + ASSERTION_SKEW_SECS, now)
    {
        return Err(Failure::assertion(format!(
            "The client assertion with jti '{jti}' has already been used."
        )));
    }
    Ok(())
}

/// Token endpoint URLs an assertion may name as `aud`: Entra's and this simulator's, v1 and v2,
/// with the tenant by id or by any of its domains.
fn assertion_audiences(state: &SimState, tenant: &Tenant) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["https://login.microsoftonline.com", state.base_url.as_str()] {
        for name in std::iter::once(&tenant.id).chain(tenant.domains.iter()) {
            out.push(format!("{host}/{name}/oauth2/v2.0/token"));
            out.push(format!("{host}/{name}/oauth2/token"));
        }
    }
    out
}

fn error_response(failure: &Failure, ids: &Ids) -> Response<Body> {
    let ts = ids.timestamp();
    let body = serde_json::json!({
        "error": failure.error,
        "error_description": format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {ts}",
            failure.code, failure.message, ids.trace_id, ids.correlation_id
        ),
        "error_codes": [failure.code],
        "timestamp": ts,
        "trace_id": ids.trace_id,
        "correlation_id": ids.correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={}", failure.code),
    });
    json_response(failure.status, body.to_string(), ids)
}

/// A JSON answer with the headers Entra sends on every token response.
fn json_response(status: StatusCode, body: String, ids: &Ids) -> Response<Body> {
    let mut resp = respond(status, "application/json; charset=utf-8", body);
    let headers = resp.headers_mut();
    for (name, value) in [
        ("cache-control", "no-store, no-cache"),
        ("pragma", "no-cache"),
        ("expires", "-1"),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("p3p", "CP=\"DSP CUR OTPi IND OTRi ONL FIN\""),
        ("x-ms-ests-server", "2.1.00000.0 - SIM ProdSlices"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&ids.trace_id) {
        headers.insert("x-ms-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ids.correlation_id) {
        headers.insert("client-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("contoso.example"));
        assert!(is_dns_name("a-b.onmicrosoft.com"));
        assert!(!is_dns_name("contoso"));
        assert!(!is_dns_name("bad_name.example"));
        assert!(!is_dns_name("-x.example"));
        assert!(!is_dns_name("a..b"));
    }

    #[test]
    fn jti_cache_refuses_replay_and_prunes() {
        let st = EntraState::default();
        assert!(st.record_jti("App", "j1", 100, 50));
        assert!(!st.record_jti("app", "j1", 100, 60));
        assert!(st.record_jti("app", "j2", 100, 60));
        assert_eq!(st.remembered_assertions(), 2);
        // Past their expiry both are forgotten, so the cache does not grow without bound.
        assert!(st.record_jti("app", "j3", 300, 200));
        assert_eq!(st.remembered_assertions(), 1);
    }

    #[test]
    fn invalid_client_is_401_everything_else_400() {
        assert_eq!(neither_credential().status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            Failure::missing("grant_type").status,
            StatusCode::BAD_REQUEST
        );
    }
}
