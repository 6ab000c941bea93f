//! Simulated EWS endpoint: bearer validation, the envelope and its headers, impersonation,
//! policy, routing headers, faults and the response envelope.
//!
//! Rules follow Exchange Online: an app-only token must carry `full_access_as_app` (or an
//! RBAC-for-Applications assignment), must come with exactly one `ExchangeImpersonation`, the
//! app must be on `EWSAllowedAppIDs` and the mailbox in its scope (403 otherwise), and in strict
//! mode `X-AnchorMailbox` must name the impersonated mailbox. Operations run in `ops`.

// Early answers are whole responses here; the simulator is not a hot path worth boxing them for.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::directory::{App, IdKind, Mailbox, Tenant};
use super::ops::{self, OpContext, OpOutcome};
use super::tokens::{AccessClaims, now_unix};
use super::xml::{self, Element, XmlError};
use super::{SimRequest, SimState, respond};
use ews_gateway_core::soap::{self, NS_MESSAGES, NS_SOAP, NS_TYPES};
use ews_http::http_util::{Body, BoxError};

/// The challenge Exchange Online sends without a usable bearer token (Basic is switched off).
pub const BEARER_CHALLENGE: &str = "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", token_types=\"app_asserted_user_v1 service_asserted_app_v1\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\",Basic Realm=\"\"";

/// `RequestServerVersion` values Exchange Online accepts.
pub const ACCEPTED_VERSIONS: &[&str] = &[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
];

/// Header elements an app-only caller may not use.
const PRIVILEGED: &[&str] = &[
    "SerializedSecurityContext",
    "OpenAsAdminOrSystemService",
    "ManagementRole",
    "SharingSecurity",
    "ProxySecurityContext",
    "ProxySuggesterSid",
    "ProxyPartnerToken",
];

/// Header elements EWS knows.
const KNOWN_HEADERS: &[&str] = &[
    "RequestServerVersion",
    "ExchangeImpersonation",
    "MailboxCulture",
    "TimeZoneContext",
    "DateTimePrecision",
];

/// The `ServerVersionInfo` header element every successful response carries.
pub fn server_version_info() -> String {
    format!(
        "<h:ServerVersionInfo MajorVersion=\"15\" MinorVersion=\"20\" MajorBuildNumber=\"7452\" MinorBuildNumber=\"28\" Version=\"V2018_01_08\" xmlns:h=\"{NS_TYPES}\" xmlns=\"{NS_TYPES}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/>"
    )
}

/// A complete success envelope around `body` (one element declaring its own prefixes).
pub fn success_envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{NS_SOAP}\"><s:Header>{}</s:Header><s:Body xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{body}</s:Body></s:Envelope>",
        server_version_info()
    )
}

fn xml_response(status: StatusCode, body: String) -> Response<Body> {
    respond(status, soap::CONTENT_TYPE_XML, body)
}

fn fault(code: &str, message: &str, message_xml: &[(&str, &str)]) -> Response<Body> {
    xml_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        soap::fault_envelope(code, message, message_xml),
    )
}

fn invalid_request() -> Response<Body> {
    fault("ErrorInvalidRequest", "The request is invalid.", &[])
}

fn schema_violation(violation: &str) -> Response<Body> {
    fault(
        "ErrorSchemaValidation",
        "The request failed schema validation.",
        &[
            ("LineNumber", "1"),
            ("LinePosition", "1"),
            ("Violation", violation),
        ],
    )
}

fn challenge(error: Option<&str>) -> Response<Body> {
    let mut resp = respond(StatusCode::UNAUTHORIZED, "text/html", "");
    let value = match error {
        Some(_) => BEARER_CHALLENGE.replacen(
            "authorization_uri",
            "error=\"invalid_token\", authorization_uri",
            1,
        ),
        None => BEARER_CHALLENGE.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(diag) = error.and_then(|d| HeaderValue::from_str(d).ok()) {
        resp.headers_mut().insert("x-ms-diagnostics", diag);
    }
    resp
}

/// What the retired EWS endpoint answers (HTTP 403), whoever asks. Exchange Online has not said
/// what it will send after 2027-04-01; this is the simulator's choice: a refusal that names the
/// reason, before any authentication, like the `EwsEnabled=False` block.
pub const RETIRED_BODY: &str =
    "Exchange Web Services (EWS) has been retired in Exchange Online. Use Microsoft Graph.";

/// Handles a request under `/EWS/`.
pub async fn handle(state: &Arc<SimState>, req: SimRequest) -> Response<Body> {
    let lower = req.path.to_ascii_lowercase();
    if state.config.ews_retired {
        let mut resp = respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            RETIRED_BODY,
        );
        resp.headers_mut().insert(
            "x-ews-policy-reason",
            HeaderValue::from_static("EwsRetired"),
        );
        finish_headers(&req.headers, &mut resp);
        return resp;
    }
    let mut resp = match (lower.as_str(), &req.method) {
        ("/ews/exchange.asmx", &Method::POST) => post(state, &req).await,
        ("/ews/exchange.asmx", &Method::GET) => match authenticate(state, &req.headers) {
            Ok(_) => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<html><body>Exchange Web Services</body></html>",
            ),
            Err(resp) => resp,
        },
        ("/ews/services.wsdl" | "/ews/messages.xsd" | "/ews/types.xsd", &Method::GET) => {
            match authenticate(state, &req.headers) {
                Ok(_) => xml_response(StatusCode::OK, service_document(&lower)),
                Err(resp) => resp,
            }
        }
        (
            "/ews/exchange.asmx" | "/ews/services.wsdl" | "/ews/messages.xsd" | "/ews/types.xsd",
            _,
        ) => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/html",
            "<h1>405 Method Not Allowed</h1>",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/html", "<h1>404 Not Found</h1>"),
    };
    finish_headers(&req.headers, &mut resp);
    resp
}

fn finish_headers(request: &HeaderMap, resp: &mut Response<Body>) {
    let status = resp.status().as_u16().to_string();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&status) {
        h.insert("x-backendhttpstatus", v);
    }
    h.insert("x-feserver", HeaderValue::from_static("SIM01FE"));
    h.insert("x-beserver", HeaderValue::from_static("SIM01BE"));
    if let Some(id) = request.get("client-request-id")
        && request
            .get("return-client-request-id")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        h.insert("client-request-id", id.clone());
    }
    let cookies = request
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if !cookies.contains("exchangecookie=")
        && let Ok(v) = HeaderValue::from_str(&format!(
            "exchangecookie={}; path=/; HttpOnly",
            uuid::Uuid::new_v4().simple()
        ))
    {
        h.append(header::SET_COOKIE, v);
    }
    let affinity = request
        .get("x-preferserveraffinity")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if affinity
        && !cookies.contains("X-BackEndOverrideCookie=")
        && let Ok(v) = HeaderValue::from_str(&format!(
            "X-BackEndOverrideCookie=SIM01BE.sim.example~{}; path=/; secure; HttpOnly",
            rand::random::<u32>()
        ))
    {
        h.append(header::SET_COOKIE, v);
    }
}

fn service_document(path: &str) -> String {
    let name = path.trim_start_matches("/ews/");
    if name.ends_with(".wsdl") {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><wsdl:definitions xmlns:wsdl=\"http://schemas.xmlsoap.org/wsdl/\" xmlns:tns=\"{NS_MESSAGES}\" targetNamespace=\"{NS_MESSAGES}\"><wsdl:documentation>Simulated Exchange Web Services ({name})</wsdl:documentation></wsdl:definitions>"
        )
    } else {
        let target = if name.starts_with("messages") {
            NS_MESSAGES
        } else {
            NS_TYPES
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" targetNamespace=\"{target}\" elementFormDefault=\"qualified\"/>"
        )
    }
}

/// Who is calling: the tenant, the app and the token's claims.
pub struct Caller {
    /// The token's tenant.
    pub tenant: Tenant,
    /// The app registration.
    pub app: App,
    /// The validated claims.
    pub claims: AccessClaims,
}

/// Validates the bearer token; the error is the 401 to send.
pub fn authenticate(state: &SimState, headers: &HeaderMap) -> Result<Caller, Response<Body>> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(challenge(None));
    };
    let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
        // Basic authentication is switched off in Exchange Online.
        return Err(challenge(None));
    };
    if state
        .revoked_tokens
        .lock()
        .map(|r| r.contains(token))
        .unwrap_or(false)
    {
        return Err(challenge(Some(
            "2000001;reason=\"The token has been revoked.\";error_category=\"invalid_token\"",
        )));
    }
    let claims = state
        .tokens
        .validate(token, now_unix())
        .map_err(|e| challenge(Some(&e.diagnostics())))?;
    let directory = state.directory.read().map_err(|_| challenge(None))?;
    let tenant = directory.tenant(&claims.tid).cloned().ok_or_else(|| {
        challenge(Some("2000001;reason=\"The token's tenant is not known to this organization.\";error_category=\"invalid_token\""))
    })?;
    let app = tenant.app(&claims.appid).cloned().ok_or_else(|| {
        challenge(Some("2000001;reason=\"The token's application is not registered in the tenant.\";error_category=\"invalid_token\""))
    })?;
    if state.faults().ews_require_certificate_auth && claims.appidacr != "2" {
        return Err(challenge(Some(
            "2000010;reason=\"The access token is acquired using an authentication method that is too weak to allow access for this application. Presented auth strength was 1, required is 2.\";error_category=\"insufficient_auth_strength\"",
        )));
    }
    let granted =
        claims.roles.iter().any(|r| r == "full_access_as_app") || app.rbac_scope.is_some();
    if !granted {
        return Err(challenge(Some(
            "2000008;reason=\"The token contains no permissions, or permissions can not be understood.\";error_category=\"invalid_grant\"",
        )));
    }
    Ok(Caller {
        tenant,
        app,
        claims,
    })
}

async fn post(state: &Arc<SimState>, req: &SimRequest) -> Response<Body> {
    let caller = match authenticate(state, &req.headers) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let faults = state.faults();
    if faults.ews_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.ews_latency_ms)).await;
    }
    if faults.ews_unavailable {
        let mut resp = respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/html",
            "<h1>Service Unavailable</h1>",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    if let Some(backoff) = faults.ews_server_busy_backoff_ms {
        return fault(
            "ErrorServerBusy",
            "The server cannot service this request right now. Try again later.",
            &[("BackOffMilliseconds", &backoff.to_string())],
        );
    }
    let resp = match envelope(state, req, caller).await {
        Ok(resp) => resp,
        Err(resp) => resp,
    };
    if faults.ews_drop_mid_response {
        return drop_mid_body(resp).await;
    }
    resp
}

async fn drop_mid_body(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    // Let the head and the first half go out before the connection breaks.
    let frames = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(half))]).chain(
        futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err::<Frame<Bytes>, BoxError>("connection dropped by fault injection".into())
        }),
    );
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(frames)))
}

/// Checks the envelope, impersonation, policy and routing, then runs the operation.
async fn envelope(
    state: &Arc<SimState>,
    req: &SimRequest,
    caller: Caller,
) -> Result<Response<Body>, Response<Body>> {
    let root = match xml::parse(&req.body) {
        Ok(root) => root,
        Err(XmlError::Doctype | XmlError::Malformed(_) | XmlError::Empty) => {
            return Err(invalid_request());
        }
    };
    if let Some(bad) = https_namespace(&root) {
        return Err(schema_violation(&format!(
            "The namespace '{bad}' is not a valid Exchange Web Services namespace."
        )));
    }
    if !root.is(NS_SOAP, "Envelope") {
        return Err(invalid_request());
    }
    let mut headers = Vec::new();
    let mut bodies = Vec::new();
    for child in root.elements() {
        if child.is(NS_SOAP, "Header") {
            headers.push(child);
        } else if child.is(NS_SOAP, "Body") {
            bodies.push(child);
        } else {
            return Err(schema_violation(&format!(
                "The element 'Envelope' has invalid child element '{}'.",
                child.local
            )));
        }
    }
    if headers.len() > 1 {
        return Err(schema_violation(
            "The element 'Envelope' has more than one 'Header' child element.",
        ));
    }
    if bodies.len() != 1 {
        return Err(schema_violation(
            "The element 'Envelope' must have exactly one 'Body' child element.",
        ));
    }
    let header_el = headers.first().copied();
    let mut impersonations = Vec::new();
    let mut version = None;
    for h in header_el.into_iter().flat_map(Element::elements) {
        let local = h.local.as_str();
        if h.ns.as_deref() == Some(NS_TYPES)
            && (PRIVILEGED.contains(&local) || local.starts_with("Proxy"))
        {
            return Err(fault(
                "ErrorAccessDenied",
                &format!(
                    "Access is denied. The header {local} cannot be used with this type of OAuth token."
                ),
                &[],
            ));
        }
        if h.ns.as_deref() != Some(NS_TYPES) || !KNOWN_HEADERS.contains(&local) {
            return Err(schema_violation(&format!(
                "The element 'Header' has invalid child element '{local}' in namespace '{}'.",
                h.ns.as_deref().unwrap_or("")
            )));
        }
        match local {
            "ExchangeImpersonation" => impersonations.push(h),
            "RequestServerVersion" => {
                version = Some(h.attr("Version").unwrap_or_default().to_owned())
            }
            _ => {}
        }
    }
    if let Some(v) = &version
        && !ACCEPTED_VERSIONS.contains(&v.as_str())
    {
        return Err(invalid_request());
    }
    let acting = match impersonations.as_slice() {
        [] => {
            return Err(fault(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
                &[],
            ));
        }
        [one] => resolve_impersonation(&caller.tenant, one)?,
        _ => {
            return Err(schema_violation(
                "The element 'Header' has more than one 'ExchangeImpersonation' child element.",
            ));
        }
    };
    if let Some(reason) = caller.tenant.ews_policy_block(&caller.app, &acting) {
        let mut resp = respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "Access to EWS is blocked by policy.",
        );
        if let Ok(v) = HeaderValue::from_str(&reason) {
            resp.headers_mut().insert("x-ews-policy-reason", v);
        }
        return Err(resp);
    }
    if state.config.strict_anchor {
        check_anchor(&caller.tenant, &acting, &req.headers)?;
    }
    let Some(op) = bodies[0].elements().next() else {
        return Err(schema_violation(
            "The element 'Body' is empty; an operation element was expected.",
        ));
    };
    let ctx = OpContext {
        app_id: caller.app.client_id.to_ascii_lowercase(),
        tenant: caller.tenant,
        acting,
        server_version: version.unwrap_or_else(|| "Exchange2013_SP1".to_owned()),
    };
    Ok(match ops::dispatch(state, ctx, op).await {
        OpOutcome::Body(body) => xml_response(StatusCode::OK, success_envelope(&body)),
        OpOutcome::Fault {
            code,
            message,
            message_xml,
        } => {
            let pairs: Vec<(&str, &str)> = message_xml
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            fault(&code, &message, &pairs)
        }
        OpOutcome::Stream(stream) => {
            let frames = stream.map(|chunk| Ok::<_, BoxError>(Frame::data(chunk)));
            let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(soap::CONTENT_TYPE_XML),
            );
            resp
        }
    })
}

fn https_namespace(el: &Element) -> Option<String> {
    if let Some(ns) = &el.ns
        && ns.starts_with("https://schemas.microsoft.com/exchange/services")
    {
        return Some(ns.clone());
    }
    el.elements().find_map(https_namespace)
}

fn resolve_impersonation(tenant: &Tenant, imp: &Element) -> Result<Mailbox, Response<Body>> {
    let malformed = || {
        fault(
            "ErrorInvalidExchangeImpersonationHeaderData",
            "The ExchangeImpersonation SOAP header data is invalid.",
            &[],
        )
    };
    let sids: Vec<&Element> = imp.elements().collect();
    let [sid] = sids.as_slice() else {
        return Err(malformed());
    };
    if !sid.is(NS_TYPES, "ConnectingSID") {
        return Err(malformed());
    }
    let ids: Vec<&Element> = sid.elements().collect();
    let [id] = ids.as_slice() else {
        return Err(malformed());
    };
    let kind = match (id.ns.as_deref(), id.local.as_str()) {
        (Some(NS_TYPES), "SmtpAddress") => IdKind::SmtpAddress,
        (Some(NS_TYPES), "PrimarySmtpAddress") => IdKind::PrimarySmtpAddress,
        (Some(NS_TYPES), "PrincipalName") => IdKind::PrincipalName,
        (Some(NS_TYPES), "SID") => IdKind::Sid,
        _ => return Err(malformed()),
    };
    let value = id.text();
    if value.is_empty() {
        return Err(malformed());
    }
    tenant.resolve(kind, &value).cloned().ok_or_else(|| {
        let name = match kind {
            IdKind::SmtpAddress | IdKind::PrimarySmtpAddress => "SmtpAddress",
            IdKind::PrincipalName => "PrincipalName",
            IdKind::Sid => "SID",
        };
        fault(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
            &[(name, &value)],
        )
    })
}

fn check_anchor(
    tenant: &Tenant,
    acting: &Mailbox,
    headers: &HeaderMap,
) -> Result<(), Response<Body>> {
    let no_cas = || {
        fault(
            "ErrorNoRespondingCASInDestinationSite",
            "Exchange Web Services are not currently available for this request because none of the Client Access Servers in the destination site could process the request.",
            &[],
        )
    };
    let anchor = headers
        .get("x-anchormailbox")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(no_cas)?;
    let names_acting = anchor.eq_ignore_ascii_case(&acting.smtp)
        || anchor.eq_ignore_ascii_case(acting.upn())
        || acting
            .aliases
            .iter()
            .any(|a| a.eq_ignore_ascii_case(anchor));
    if names_acting {
        return Ok(());
    }
    let affinity = headers
        .get("x-preferserveraffinity")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if affinity && tenant.resolve(IdKind::SmtpAddress, anchor).is_some() {
        return Ok(());
    }
    Err(no_cas())
}
