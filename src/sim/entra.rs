//! Simulated Entra ID token endpoint: the client-credentials grant, v1 and v2.
//!
//! Accepts a client secret (form field or `Authorization: Basic`) or a JWT client assertion
//! signed by a certificate registered for the app (PS256 with `x5t#S256`, RS256 with `x5t`),
//! and answers with Entra's response shapes and AADSTS errors (401 for `invalid_client`, else
//! 400). Replayed assertion `jti`s are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, Response, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha1::Digest as _;

use super::directory::{App, Tenant};
use super::tokens::{EXCHANGE_AUDIENCES, now_unix};
use super::{SimRequest, SimState, respond};
use crate::http_util::Body;

/// The client assertion type for certificate credentials.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Which token API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenApi {
    /// `/{tenant}/oauth2/token` with `resource=`.
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope=`.
    V2,
}

/// Token endpoint state: assertion ids already used, with their expiry.
#[derive(Debug, Default)]
pub struct EntraState {
    used_jtis: Mutex<HashMap<String, i64>>,
}

#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
}

/// An Entra error: code, OAuth error, description.
struct Aadsts {
    code: u64,
    error: &'static str,
    description: String,
}

impl Aadsts {
    fn new(code: u64, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            error,
            description: description.into(),
        }
    }

    fn into_response(self) -> Response<Body> {
        let trace_id = uuid::Uuid::new_v4();
        let correlation_id = uuid::Uuid::new_v4();
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default();
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id.to_string(),
            "correlation_id": correlation_id.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let status = if self.error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        json_response(status, &body)
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = respond(status, "application/json; charset=utf-8", body.to_string());
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-ms-request-id", v);
    }
    resp
}

fn looks_like_tenant_id(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
        || (text.contains('.')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
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
    if faults.token_unavailable {
        let body = serde_json::json!({
            "error": "temporarily_unavailable",
            "error_description": "AADSTS90033: A transient error has occurred. Please try again.",
            "error_codes": [90033],
        });
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    if req.method != http::Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only");
    }
    match issue(state, tenant, api, &req) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(err) => err.into_response(),
    }
}

fn issue(
    state: &SimState,
    tenant_ref: &str,
    api: TokenApi,
    req: &SimRequest,
) -> Result<serde_json::Value, Aadsts> {
    let mut form: TokenForm = serde_urlencoded::from_bytes(&req.body).unwrap_or_default();
    if let Some((id, secret)) = basic_client_credentials(req) {
        form.client_id.get_or_insert(id);
        form.client_secret.get_or_insert(secret);
    }
    if !looks_like_tenant_id(tenant_ref) {
        return Err(Aadsts::new(
            900023,
            "invalid_request",
            format!(
                "Specified tenant identifier '{tenant_ref}' is neither a valid DNS name, nor a valid external domain."
            ),
        ));
    }
    let directory = state.directory.read().map_err(|_| {
        Aadsts::new(
            90033,
            "temporarily_unavailable",
            "A transient error has occurred.",
        )
    })?;
    let tenant = directory.tenant(tenant_ref).ok_or_else(|| {
        Aadsts::new(
            90002,
            "invalid_request",
            format!("Tenant '{tenant_ref}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        )
    })?;
    let grant_type = form.grant_type.as_deref().ok_or_else(|| {
        Aadsts::new(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'grant_type'.",
        )
    })?;
    if grant_type != "client_credentials" {
        return Err(Aadsts::new(
            70003,
            "unsupported_grant_type",
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = form.client_id.as_deref().unwrap_or_default();
    if client_id.is_empty() {
        return Err(Aadsts::new(
            900144,
            "invalid_request",
            "The request body must contain the following parameter: 'client_id'.",
        ));
    }
    let app = tenant.app(client_id).ok_or_else(|| {
        Aadsts::new(
            700016,
            "unauthorized_client",
            format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", tenant.name),
        )
    })?;
    let audience = requested_audience(api, &form, tenant)?;
    let appidacr = match (&form.client_secret, &form.client_assertion) {
        (Some(secret), _) => {
            check_secret(app, secret)?;
            "1"
        }
        (None, Some(assertion)) => {
            if form.client_assertion_type.as_deref() != Some(JWT_BEARER) {
                return Err(Aadsts::new(
                    700027,
                    "invalid_client",
                    "Client assertion failed validation. [Reason - client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.]",
                ));
            }
            check_assertion(state, tenant, app, assertion, req)?;
            "2"
        }
        (None, None) => {
            return Err(Aadsts::new(
                7000218,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };
    let claims = state.tokens.claims_for(tenant, app, &audience, appidacr);
    let token = state.tokens.sign(&claims).map_err(|_| {
        Aadsts::new(
            90033,
            "temporarily_unavailable",
            "A transient error has occurred.",
        )
    })?;
    let expires_in = state.tokens.lifetime().as_secs();
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
            "resource": audience,
            "access_token": token,
        }),
    })
}

fn basic_client_credentials(req: &SimRequest) -> Option<(String, String)> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
            .ok()?
            .pop()
            .map(|(_, v)| v)
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// The `aud` of the token to issue, from `scope` (v2) or `resource` (v1).
fn requested_audience(api: TokenApi, form: &TokenForm, tenant: &Tenant) -> Result<String, Aadsts> {
    match api {
        TokenApi::V2 => {
            let scope = form.scope.as_deref().unwrap_or_default().trim();
            if scope.is_empty() {
                return Err(Aadsts::new(
                    900144,
                    "invalid_request",
                    "The request body must contain the following parameter: 'scope'.",
                ));
            }
            if scope.split_whitespace().count() != 1 {
                return Err(Aadsts::new(
                    70011,
                    "invalid_scope",
                    format!(
                        "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                    ),
                ));
            }
            let Some(resource) = scope.strip_suffix("/.default") else {
                return Err(Aadsts::new(
                    1002012,
                    "invalid_scope",
                    format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                ));
            };
            let known = EXCHANGE_AUDIENCES
                .iter()
                .any(|a| a.trim_end_matches('/') == resource);
            if !known {
                return Err(unknown_resource(resource, tenant));
            }
            Ok(resource.to_owned())
        }
        TokenApi::V1 => {
            let resource = form.resource.as_deref().unwrap_or_default().trim();
            if resource.is_empty() {
                return Err(Aadsts::new(
                    900144,
                    "invalid_request",
                    "The request body must contain the following parameter: 'resource'.",
                ));
            }
            if !EXCHANGE_AUDIENCES.contains(&resource) {
                return Err(unknown_resource(resource, tenant));
            }
            Ok(resource.to_owned())
        }
    }
}

fn unknown_resource(resource: &str, tenant: &Tenant) -> Aadsts {
    Aadsts::new(
        500011,
        "invalid_resource",
        format!(
            "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            tenant.name
        ),
    )
}

fn check_secret(app: &App, presented: &str) -> Result<(), Aadsts> {
    use subtle::ConstantTimeEq;
    let matching = app
        .secrets
        .iter()
        .find(|s| bool::from(s.value.as_bytes().ct_eq(presented.as_bytes())));
    match matching {
        None => Err(Aadsts::new(
            7000215,
            "invalid_client",
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                app.client_id
            ),
        )),
        Some(s) if s.expires_at.is_some_and(|exp| exp <= now_unix()) => Err(Aadsts::new(
            7000222,
            "invalid_client",
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    aud: serde_json::Value,
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

fn assertion_failed(reason: &str) -> Aadsts {
    Aadsts::new(
        700027,
        "invalid_client",
        format!("Client assertion failed signature validation. [Reason - {reason}]"),
    )
}

fn check_assertion(
    state: &SimState,
    tenant: &Tenant,
    app: &App,
    assertion: &str,
    req: &SimRequest,
) -> Result<(), Aadsts> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| Aadsts::new(700027, "invalid_client", "Client assertion failed validation. [Reason - Invalid JWT token. The token is malformed.]"))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(Aadsts::new(
            700027,
            "invalid_client",
            "Client assertion failed validation. [Reason - Invalid JWT token. Unsupported asymmetric signing algorithm.]",
        ));
    }
    // Find the registered certificate the header names by thumbprint.
    let mut key = None;
    for pem in &app.certificates {
        let Ok(certs) = crate::tls::certs_from_pem(pem.as_bytes(), "registered certificate") else {
            continue;
        };
        let Some(cert) = certs.first() else { continue };
        let der = cert.as_ref();
        let s1 = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der));
        let s256 = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der));
        let named = header.x5t_s256.as_deref() == Some(s256.as_str())
            || header.x5t.as_deref() == Some(s1.as_str());
        if named && let Ok((n, e)) = super::tokens::rsa_components(der) {
            key = Some(DecodingKey::from_rsa_raw_components(&n, &e));
            break;
        }
    }
    let key = key.ok_or_else(|| assertion_failed("The key was not found."))?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
            Aadsts::new(700027, "invalid_client", "Client assertion contains an invalid signature. [Reason - The key used is not the one that signed the assertion.]")
        }
        _ => Aadsts::new(700027, "invalid_client", "Client assertion failed validation. [Reason - Invalid JWT token. The token is malformed.]"),
    })?;
    let c = data.claims;
    let accepted_aud = accepted_audiences(state, tenant, req);
    let aud_ok = match &c.aud {
        serde_json::Value::String(a) => accepted_aud.iter().any(|x| x.eq_ignore_ascii_case(a)),
        serde_json::Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .any(|a| accepted_aud.iter().any(|x| x.eq_ignore_ascii_case(a))),
        _ => false,
    };
    if !aud_ok {
        return Err(Aadsts::new(
            700027,
            "invalid_client",
            "Client assertion failed validation. [Reason - The audience claim is not the token endpoint of this tenant.]",
        ));
    }
    if c.iss != app.client_id || c.sub != app.client_id {
        return Err(Aadsts::new(
            700027,
            "invalid_client",
            "Client assertion failed validation. [Reason - The iss and sub claims must both be the client id.]",
        ));
    }
    let now = now_unix();
    const SKEW: i64 = 300;
    if now > c.exp + SKEW || c.nbf.is_some_and(|nbf| nbf > now + SKEW) {
        return Err(Aadsts::new(
            700024,
            "invalid_client",
            "Client assertion is not within its valid time range.",
        ));
    }
    let jti = c
        .jti
        .ok_or_else(|| assertion_failed("The assertion has no jti claim."))?;
    let mut used = state.entra.used_jtis.lock().map_err(|_| {
        Aadsts::new(
            90033,
            "temporarily_unavailable",
            "A transient error has occurred.",
        )
    })?;
    used.retain(|_, exp| *exp + SKEW >= now);
    if used
        .insert(format!("{}:{jti}", app.client_id), c.exp)
        .is_some()
    {
        return Err(Aadsts::new(
            700027,
            "invalid_client",
            "Client assertion failed validation. [Reason - The jti has already been used (replay).]",
        ));
    }
    Ok(())
}

fn accepted_audiences(state: &SimState, tenant: &Tenant, req: &SimRequest) -> Vec<String> {
    let mut out = Vec::new();
    let mut refs = vec![tenant.id.clone()];
    refs.extend(tenant.domains.iter().cloned());
    for base in [
        "https://login.microsoftonline.com".to_owned(),
        state.base_url.clone(),
    ] {
        for t in &refs {
            out.push(format!("{base}/{t}/oauth2/v2.0/token"));
            out.push(format!("{base}/{t}/oauth2/token"));
        }
    }
    out.push(format!("{}{}", state.base_url, req.path));
    out
}
