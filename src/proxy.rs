//! The request path: authenticate -> authorise -> (token -> rewrite -> forward, in the upstream)
//! -> respond -> audit.
//!
//! Each phase is a plain function. Nothing reaches the upstream before the caller is
//! authenticated and the mailbox decided; every refusal becomes an answer through
//! [`GatewayError::into_response`], the one place errors are mapped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::{CredentialStore, Principal, parse_basic};
use crate::autodiscover::{self, Flavor};
use crate::error::GatewayError;
use crate::http_util::{self, Body, ConnInfo};
use crate::limits::{MailboxSlot, MailboxSlots, PrincipalRate};
use crate::lockout::Lockout;
use crate::policy;
use crate::rewrite::{PrefixScanner, RewriteLimits, ScannedHead};
use crate::soap::ConnectingSid;
use crate::telemetry;
use crate::token::TokenSource;
use crate::tracked::{CloseOnDrain, OnEnd, Tracked};
use crate::upstream::{DocumentCall, EwsCall, Upstream, forwardable_request_headers};

/// Largest unauthenticated body the gateway reads and discards to keep the connection usable.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Everything the request path needs; shared by all connections. A reload builds a new one;
/// the fields that must outlive a reload (lockouts, limits in flight, the audit writer, the
/// drain signal) are shared `Arc`s carried over.
pub struct Gateway<U> {
    /// Realm of the Basic challenge.
    pub realm: String,
    /// Users and their policy; swapped whole on reload.
    pub users: ArcSwap<CredentialStore>,
    /// Failed-login tracking and lockouts.
    pub lockout: Arc<Lockout>,
    /// Where clients reach the gateway, for Autodiscover answers.
    pub public_url: Option<String>,
    /// Tokens per tenant.
    pub tokens: Arc<TokenSource>,
    /// The backend.
    pub upstream: U,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Largest envelope head.
    pub max_envelope_head_bytes: usize,
    /// Concurrent requests per acted-as mailbox.
    pub mailbox_slots: Arc<MailboxSlots>,
    /// Request rate per principal.
    pub principal_rate: Arc<PrincipalRate>,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Cancelled when the gateway drains for shutdown: streaming responses then close cleanly.
    pub draining: CancellationToken,
}

/// What the gateway served, for the audit line.
#[derive(Default)]
struct Audit {
    principal: Option<String>,
    mailbox: Option<String>,
    tenant: Option<String>,
    operation: Option<String>,
    upstream_request_id: Option<String>,
    outcome: &'static str,
    /// Request body bytes read before forwarding started.
    bytes_in: u64,
    /// Request body bytes streamed upstream after the head.
    streamed_in: Option<Arc<AtomicU64>>,
    /// The mailbox's concurrency slot, held until the response body ends.
    slot: Option<MailboxSlot>,
    /// A streaming-notification response.
    streaming: bool,
}

/// Which local resource a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/EWS/Exchange.asmx`.
    Ews,
    /// `/EWS/Services.wsdl`, `/EWS/messages.xsd`, `/EWS/types.xsd`.
    Document(&'static str),
}

/// Matches a request path against the allow-list (case-insensitive, exact; no dot segments,
/// percent-encoding, empty segments or parameters).
pub fn route(path: &str) -> Option<Route> {
    const DOCS: [&str; 3] = ["/EWS/Services.wsdl", "/EWS/messages.xsd", "/EWS/types.xsd"];
    if path.eq_ignore_ascii_case("/EWS/Exchange.asmx") {
        return Some(Route::Ews);
    }
    DOCS.iter()
        .find(|d| path.eq_ignore_ascii_case(d))
        .map(|d| Route::Document(d))
}

/// Entry point for every inbound request: runs it in a span named by its request id (the
/// client's `client-request-id`, or one the gateway makes up and sends upstream, so the
/// gateway's log, the audit line and Exchange's logs share one id).
pub async fn handle<U: Upstream>(
    gw: Arc<Gateway<U>>,
    mut req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<Body> {
    let given = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned);
    let request_id = match given {
        Some(id) => id,
        None => {
            // The thread-local generator: no system call per request.
            let id = uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                req.headers_mut().insert("client-request-id", value);
            }
            id
        }
    };
    let span = tracing::info_span!("request", id = %request_id);
    serve_request(gw, req, conn).instrument(span).await
}

async fn serve_request<U: Upstream>(
    gw: Arc<Gateway<U>>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<Body> {
    let started = Instant::now();
    let wall = std::time::SystemTime::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let in_flight = metrics::gauge!(telemetry::IN_FLIGHT);
    in_flight.increment(1.0);
    let mut audit = Audit::default();
    let result = if let Some(flavor) = autodiscover::flavor(req.uri().path()) {
        autodiscover_request(&gw, req, conn, flavor, &mut audit).await
    } else {
        match (route(req.uri().path()), &method) {
            (Some(Route::Ews), &Method::POST) => ews_post(&gw, req, conn, &mut audit).await,
            (Some(Route::Ews), &Method::GET) => ews_get(&gw, req, conn, &mut audit).await,
            (Some(Route::Document(path)), &Method::GET) => {
                document_get(&gw, req, conn, path, &mut audit).await
            }
            (Some(Route::Ews), _) => Err(GatewayError::MethodNotAllowed { allow: "POST, GET" }),
            (Some(Route::Document(_)), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (None, _) => Err(GatewayError::NotFound),
        }
    };
    let response = match result {
        Ok(resp) => {
            // A challenge answered without an error sets its own outcome.
            if audit.outcome.is_empty() {
                audit.outcome = "forwarded";
            }
            resp
        }
        Err(err) => {
            audit.outcome = err.kind();
            audit.streaming = false;
            if let GatewayError::Throttled { .. } = &err {
                tracing::info!(principal = audit.principal.as_deref().unwrap_or("-"), reason = %err, "throttled");
            }
            err.into_response(&gw.realm)
        }
    };
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let close = audit
        .streaming
        .then(|| CloseOnDrain::new(gw.draining.clone()));
    if audit.streaming {
        metrics::gauge!(telemetry::STREAMING).increment(1.0);
    }
    let sink = Arc::clone(&gw.audit);
    let peer = conn.peer.ip().to_string();
    let on_end: OnEnd = Box::new(move |bytes_out, completed| {
        let Audit {
            principal,
            mailbox,
            tenant,
            operation,
            upstream_request_id,
            outcome,
            bytes_in,
            streamed_in,
            slot,
            streaming,
        } = audit;
        drop(slot);
        let bytes_in = bytes_in + streamed_in.map_or(0, |n| n.load(Ordering::Relaxed));
        let duration = started.elapsed();
        let outcome = if completed || outcome != "forwarded" {
            outcome
        } else {
            "client_gone"
        };
        let op_label = telemetry::operation_label(operation.as_deref());
        metrics::counter!(telemetry::REQUESTS, "operation" => op_label, "status" => status.to_string(), "outcome" => outcome).increment(1);
        metrics::histogram!(telemetry::REQUEST_DURATION, "operation" => op_label)
            .record(duration.as_secs_f64());
        metrics::counter!(telemetry::BYTES, "direction" => "in").increment(bytes_in);
        metrics::counter!(telemetry::BYTES, "direction" => "out").increment(bytes_out);
        in_flight.decrement(1.0);
        if streaming {
            metrics::gauge!(telemetry::STREAMING).decrement(1.0);
        }
        tracing::info!(
            target: "audit",
            peer = %peer,
            method = %method,
            principal = principal.as_deref().unwrap_or("-"),
            mailbox = mailbox.as_deref().unwrap_or("-"),
            tenant = tenant.as_deref().unwrap_or("-"),
            operation = operation.as_deref().unwrap_or("-"),
            status,
            outcome,
            bytes_in,
            bytes_out,
            duration_ms = duration.as_millis() as u64,
            client_request_id = client_request_id.as_deref().unwrap_or("-"),
            upstream_request_id = upstream_request_id.as_deref().unwrap_or("-"),
            "request"
        );
        if !sink.enabled() {
            return;
        }
        sink.record(&AuditRecord {
            event: "request".to_owned(),
            ts: crate::audit::timestamp(wall),
            principal,
            peer,
            tenant,
            mailbox,
            operation,
            method: method.to_string(),
            path,
            status,
            outcome: outcome.to_owned(),
            bytes_in,
            bytes_out,
            duration_ms: duration.as_millis() as u64,
            client_request_id,
            upstream_request_id,
        });
    });
    Response::from_parts(parts, Tracked::new(body, on_end, close).boxed_unsync())
}

/// Phase 1: who is calling. No credentials, malformed ones, wrong ones and locked accounts
/// all give the same challenge at the same cost; the body is not read. A request without
/// credentials is a challenge, never a counted failure.
pub async fn authenticate(
    users: &CredentialStore,
    lockout: &Lockout,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
) -> Result<Arc<Principal>, GatewayError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(GatewayError::Unauthenticated);
    };
    let policy = lockout.policy();
    // Keys are built only when they are used: in the steady state nothing was ever recorded.
    let source = Lockout::source_key(peer);
    let creds = match parse_basic(value.as_bytes()) {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(reason = %err, "malformed Basic credentials");
            auth_failed("malformed");
            let outcome = lockout
                .record_failure(&source, policy.max_failures_per_source)
                .await;
            count_lockout(outcome, "source");
            return Err(GatewayError::Unauthenticated);
        }
    };
    let name = users
        .canonical_name(&creds.username)
        .unwrap_or_else(|| creds.username.to_lowercase());
    let user = Lockout::user_key(&name);
    if lockout.is_locked(&[&user, &source]).await {
        users.spend_dummy_check().await;
        tracing::info!(user = %name, %peer, "login refused: locked");
        auth_failed("locked");
        return Err(GatewayError::Unauthenticated);
    }
    match users.verify(&creds).await {
        Ok(principal) => {
            lockout.record_success(&user).await;
            Ok(principal)
        }
        Err(err) => {
            tracing::info!(user = %name, %peer, reason = %err, "authentication failed");
            auth_failed("invalid_credentials");
            let outcome = lockout.record_failure(&user, policy.max_failures).await;
            count_lockout(outcome, "user");
            let outcome = lockout
                .record_failure(&source, policy.max_failures_per_source)
                .await;
            count_lockout(outcome, "source");
            Err(GatewayError::Unauthenticated)
        }
    }
}

fn auth_failed(reason: &'static str) {
    metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason).increment(1);
}

fn count_lockout(outcome: crate::lockout::FailureOutcome, kind: &'static str) {
    if let crate::lockout::FailureOutcome::LockedFor(_) = outcome {
        metrics::counter!(telemetry::LOCKOUTS, "kind" => kind).increment(1);
    }
}

/// Reads a small unauthenticated body so the connection can be reused (DavMail sends every call
/// unauthenticated first); a large one or one behind `Expect: 100-continue` is left unread and
/// the connection closed instead.
async fn challenge(req: Request<Incoming>, realm: &str) -> Response<Body> {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let small = req
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= DRAIN_LIMIT);
    let mut resp = GatewayError::Unauthenticated.into_response(realm);
    if small && !expects_continue {
        let drained = tokio::time::timeout(Duration::from_secs(5), req.into_body().collect()).await;
        if matches!(drained, Ok(Ok(_))) {
            return resp;
        }
    }
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn ews_post<U: Upstream>(
    gw: &Gateway<U>,
    req: Request<Incoming>,
    conn: ConnInfo,
    audit: &mut Audit,
) -> Result<Response<Body>, GatewayError> {
    let users = gw.users.load_full();
    let principal = match authenticate(&users, &gw.lockout, req.headers(), conn.peer.ip()).await {
        Ok(p) => p,
        Err(_) => {
            audit.outcome = GatewayError::Unauthenticated.kind();
            return Ok(challenge(req, &gw.realm).await);
        }
    };
    audit.principal = Some(principal.name.clone());
    gw.principal_rate.check(&principal.name).map_err(|wait| {
        throttled(
            "principal_rate",
            format!(
                "{} is sending requests faster than the gateway allows; retry after the back-off.",
                principal.name
            ),
            wait,
        )
    })?;
    let (parts, body) = req.into_parts();
    let client_content_length = body.size_hint().exact();
    if let Some(len) = client_content_length
        && len > gw.max_body_bytes
    {
        return Err(GatewayError::PayloadTooLarge {
            limit: gw.max_body_bytes,
        });
    }

    let (head, rest, consumed) =
        scan_head(body, gw.max_envelope_head_bytes, gw.max_body_bytes).await?;
    audit.bytes_in = consumed;
    audit.operation = head.info().operation.clone();

    // Phase 2: authorise, before any byte goes upstream.
    let act_as = authorise(&principal, &head, &users)?;
    let content_type = framing(&parts.headers, &head)?;
    audit.mailbox = Some(act_as.value.clone());
    let slot = gw.mailbox_slots.try_acquire(&act_as.value).ok_or_else(|| {
        throttled(
            "mailbox_concurrency",
            format!(
                "{} already has {} requests in flight through the gateway, its limit; retry when one ends.",
                act_as.value,
                gw.mailbox_slots.max()
            ),
            Duration::from_secs(1),
        )
    })?;
    audit.slot = Some(slot);
    let rest = rest.map(|body| {
        let counter = Arc::new(AtomicU64::new(0));
        audit.streamed_in = Some(Arc::clone(&counter));
        counted(body, counter)
    });
    let anchor = choose_anchor(&principal, &parts.headers, &act_as.value);
    let tenant = gw.tokens.for_mailbox(&act_as.value).ok_or_else(|| GatewayError::Refused {
        code: "ErrorNonExistentMailbox",
        message: format!(
            "No Entra tenant is configured for the domain of {}; add it to a [[tenant]] domains list.",
            act_as.value
        ),
    })?;
    audit.tenant = Some(tenant.tenant_id.clone());
    let mut headers = forwardable_request_headers(&parts.headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(pf) = parts.headers.get("x-publicfoldermailbox")
        && pf.to_str().is_ok_and(|v| policy::may_act_as(&principal, v))
    {
        headers.insert("x-publicfoldermailbox", pf.clone());
    }
    let call = EwsCall {
        principal,
        act_as,
        tenant: Arc::clone(tenant),
        head,
        rest,
        client_content_length,
        consumed,
        headers,
        anchor,
    };
    let streaming = audit.operation.as_deref() == Some("GetStreamingEvents");
    let answer = gw.upstream.call(call).await?;
    audit.upstream_request_id = answer.upstream_request_id;
    audit.streaming = streaming && answer.response.status().is_success();
    Ok(answer.response)
}

fn throttled(limit: &'static str, message: String, retry_after: Duration) -> GatewayError {
    metrics::counter!(telemetry::THROTTLED, "limit" => limit).increment(1);
    GatewayError::Throttled {
        message,
        retry_after,
    }
}

/// Counts the bytes of a request body as they stream through.
fn counted(body: Body, counter: Arc<AtomicU64>) -> Body {
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
    .boxed_unsync()
}

/// Reads the body until the envelope head is complete; returns the head, the unread rest (None
/// when the body ended) and how many bytes were consumed.
async fn scan_head(
    mut body: Incoming,
    max_head: usize,
    max_body: u64,
) -> Result<(ScannedHead, Option<Body>, u64), GatewayError> {
    let mut scanner = PrefixScanner::new(RewriteLimits {
        max_prefix_bytes: max_head,
    });
    let mut consumed: u64 = 0;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                consumed += data.len() as u64;
                if consumed > max_body {
                    return Err(GatewayError::PayloadTooLarge { limit: max_body });
                }
                if let Some(head) = scanner.push(&data).map_err(refused)? {
                    let rest = if body.is_end_stream() {
                        None
                    } else {
                        Some(
                            body.map_err(|e| -> http_util::BoxError { Box::new(e) })
                                .boxed_unsync(),
                        )
                    };
                    return Ok((head, rest, consumed));
                }
            }
            Some(Err(err)) => {
                return Err(GatewayError::Refused {
                    code: "ErrorInvalidRequest",
                    message: format!("The request body could not be read: {err}."),
                });
            }
            None => {
                let head = scanner.finish().map_err(refused)?;
                return Ok((head, None, consumed));
            }
        }
    }
}

fn refused(err: crate::rewrite::RewriteError) -> GatewayError {
    GatewayError::Refused {
        code: err.code(),
        message: err.to_string(),
    }
}

/// Phase 2: whether the principal may call this operation, and the mailbox the call acts as,
/// from the principal's policy and the client's own impersonation header, if any. The result is
/// the one canonical impersonation sent upstream (`PrimarySmtpAddress` of the decided mailbox,
/// whatever form the client used; see [`policy::Decision::connecting_sid`]).
pub fn authorise(
    principal: &Principal,
    head: &ScannedHead,
    users: &CredentialStore,
) -> Result<ConnectingSid, GatewayError> {
    let info = head.info();
    let Some(operation) = info.operation.as_deref() else {
        return Err(GatewayError::Refused {
            code: "ErrorInvalidRequest",
            message: "The request is invalid: the SOAP Body names no EWS operation.".to_owned(),
        });
    };
    policy::may_call(principal, operation).map_err(policy_refusal)?;
    let requested = info.client_impersonation.as_ref();
    let decision = policy::decide_mailbox(principal, requested, &|upn| users.mailbox_for_upn(upn))
        .map_err(policy_refusal)?;
    Ok(decision.connecting_sid())
}

/// The client's Content-Type, Content-Encoding and SOAPAction must agree with the envelope
/// read; returns the canonical Content-Type to send upstream (see [`crate::canonical`]).
fn framing(headers: &HeaderMap, head: &ScannedHead) -> Result<&'static str, GatewayError> {
    let values = |name: header::HeaderName| -> Vec<&[u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    };
    let info = head.info();
    crate::canonical::check_framing(
        &values(header::CONTENT_TYPE),
        &values(header::CONTENT_ENCODING),
        &values(header::HeaderName::from_static("soapaction")),
        info.soap_version,
        info.operation.as_deref().unwrap_or_default(),
    )
    .map_err(|err| GatewayError::Refused {
        code: "ErrorInvalidRequest",
        message: err.to_string(),
    })
}

fn policy_refusal(err: policy::PolicyError) -> GatewayError {
    GatewayError::Refused {
        code: err.code(),
        message: err.to_string(),
    }
}

/// The `X-AnchorMailbox` to send: the acted-as mailbox, or the client's group anchor for
/// streaming affinity when the principal may act as it.
fn choose_anchor(principal: &Principal, headers: &HeaderMap, mailbox: &str) -> String {
    let affinity = headers
        .get("x-preferserveraffinity")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if affinity
        && let Some(anchor) = headers.get("x-anchormailbox").and_then(|v| v.to_str().ok())
        && policy::may_act_as(principal, anchor)
    {
        return anchor.to_owned();
    }
    mailbox.to_owned()
}

/// The EWS URL Autodiscover hands out: the configured public URL, else this request's origin.
fn public_ews_url<U>(gw: &Gateway<U>, headers: &HeaderMap, conn: ConnInfo) -> String {
    if let Some(url) = &gw.public_url {
        return format!("{}/EWS/Exchange.asmx", url.trim_end_matches('/'));
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .map(str::to_owned)
        .unwrap_or_else(|| conn.local.to_string());
    format!("{scheme}://{host}/EWS/Exchange.asmx")
}

fn xml_ok(body: String, content_type: &'static str, status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(http_util::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Autodiscover, answered locally: nothing goes upstream.
async fn autodiscover_request<U: Upstream>(
    gw: &Gateway<U>,
    req: Request<Incoming>,
    conn: ConnInfo,
    flavor: Flavor,
    audit: &mut Audit,
) -> Result<Response<Body>, GatewayError> {
    audit.operation = Some(format!("Autodiscover{flavor:?}"));
    let url = public_ews_url(gw, req.headers(), conn);
    if flavor == Flavor::Json {
        if req.method() != Method::GET {
            return Err(GatewayError::MethodNotAllowed { allow: "GET" });
        }
        return Ok(match autodiscover::json(req.uri().query(), &url) {
            Ok(body) => xml_ok(body, "application/json; charset=utf-8", StatusCode::OK),
            Err(body) => xml_ok(
                body,
                "application/json; charset=utf-8",
                StatusCode::BAD_REQUEST,
            ),
        });
    }
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed { allow: "POST" });
    }
    let users = gw.users.load_full();
    let principal = match authenticate(&users, &gw.lockout, req.headers(), conn.peer.ip()).await {
        Ok(p) => p,
        Err(_) => {
            audit.outcome = GatewayError::Unauthenticated.kind();
            return Ok(challenge(req, &gw.realm).await);
        }
    };
    audit.principal = Some(principal.name.clone());
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let body = limited
        .collect()
        .await
        .map_err(|_| GatewayError::Refused {
            code: "ErrorInvalidRequest",
            message: "The Autodiscover request body could not be read or is larger than 64 KiB."
                .to_owned(),
        })?
        .to_bytes();
    audit.bytes_in = body.len() as u64;
    match flavor {
        Flavor::Pox => Ok(xml_ok(
            autodiscover::pox(&principal, &body, &url),
            "text/xml; charset=utf-8",
            StatusCode::OK,
        )),
        _ => autodiscover::soap(&principal, &body, &url)
            .map(|xml| xml_ok(xml, "text/xml; charset=utf-8", StatusCode::OK))
            .ok_or_else(|| GatewayError::Refused {
                code: "ErrorInvalidRequest",
                message: "The Autodiscover SOAP request is not a GetUserSettings request."
                    .to_owned(),
            }),
    }
}

/// `GET /EWS/Exchange.asmx`: DavMail probes it on every IMAP connection and needs 200 or 401.
/// Answered locally; nothing goes upstream.
async fn ews_get<U: Upstream>(
    gw: &Gateway<U>,
    req: Request<Incoming>,
    conn: ConnInfo,
    audit: &mut Audit,
) -> Result<Response<Body>, GatewayError> {
    let users = gw.users.load_full();
    let principal = authenticate(&users, &gw.lockout, req.headers(), conn.peer.ip()).await?;
    audit.principal = Some(principal.name.clone());
    let mut resp = Response::new(http_util::full(
        "ews-gateway: EWS is served here; send SOAP requests with POST.\n",
    ));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

async fn document_get<U: Upstream>(
    gw: &Gateway<U>,
    req: Request<Incoming>,
    conn: ConnInfo,
    path: &'static str,
    audit: &mut Audit,
) -> Result<Response<Body>, GatewayError> {
    let users = gw.users.load_full();
    let principal = authenticate(&users, &gw.lockout, req.headers(), conn.peer.ip()).await?;
    audit.principal = Some(principal.name.clone());
    let tenant = gw
        .tokens
        .for_mailbox(&principal.mailbox)
        .ok_or(GatewayError::NotFound)?;
    let answer = gw
        .upstream
        .document(DocumentCall {
            path: path.to_owned(),
            tenant: Arc::clone(tenant),
            anchor: principal.mailbox.clone(),
            headers: forwardable_request_headers(req.headers()),
        })
        .await?;
    audit.upstream_request_id = answer.upstream_request_id;
    Ok(answer.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_allow_list_is_exact_and_case_insensitive() {
        assert_eq!(route("/EWS/Exchange.asmx"), Some(Route::Ews));
        assert_eq!(route("/ews/exchange.asmx"), Some(Route::Ews));
        assert_eq!(
            route("/EWS/Services.wsdl"),
            Some(Route::Document("/EWS/Services.wsdl"))
        );
        for bad in [
            "/EWS/../owa",
            "/EWS//Exchange.asmx",
            "/EWS/Exchange.asmx;x",
            "/EWS/Exchange%2Easmx",
            "/EWS/Exchange.asmx/",
            "/owa/",
            "/EWS/mrsproxy.svc",
            "/",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }
}
