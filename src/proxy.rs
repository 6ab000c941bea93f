//! The request pipeline: authenticate -> throttle -> scan -> authorise -> choose backend ->
//! call -> respond -> audit, each step a named function below.
//!
//! Nothing reaches a backend before the caller is authenticated, the envelope head scanned and
//! the mailbox decided; every refusal becomes an answer through
//! [`GatewayError::into_response`], the one place errors are mapped. The request context
//! ([`RequestAudit`]) is filled in as the steps learn things and finished, with the audit line,
//! when the response body ends. Autodiscover and the GET probe are answered in `local`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AuditLog, RequestAudit};
use crate::auth::{CredentialStore, Principal, parse_basic};
use crate::autodiscover;
use crate::backend::{
    AuthorisedCall, Backends, Chosen, DocumentRequest, RequestBody, forwardable_request_headers,
};
use crate::error::GatewayError;
use crate::http_util::{self, Body, BoxError, ConnInfo, DeadlineBody};
use crate::limits::{MailboxSlots, PrincipalRate};
use crate::lockout::Lockout;
use crate::policy;
use crate::rewrite::{HeadInfo, PrefixScanner, RewriteLimits, ScannedHead};
use crate::soap::ConnectingSid;
use crate::telemetry;
use crate::token::TokenSource;
use crate::tracked::{CloseOnDrain, OnEnd, Tracked};

/// Largest unauthenticated body the gateway reads and discards to keep the connection usable.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// A client request body: hyper's in production, any body in tests.
pub trait ClientBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> ClientBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Everything the request path needs; shared by all connections. A reload builds a new one;
/// the fields that must outlive a reload (lockouts, limits in flight, the audit writer, cached
/// tokens, the drain signal) are shared `Arc`s carried over.
pub struct Gateway {
    /// Realm of the Basic challenge.
    pub realm: String,
    /// Users and their policy; swapped whole on reload.
    pub users: ArcSwap<CredentialStore>,
    /// Failed-login tracking and lockouts.
    pub lockout: Arc<Lockout>,
    /// Where clients reach the gateway, for Autodiscover answers.
    pub public_url: Option<String>,
    /// Tenants and their tokens (by resource).
    pub tokens: Arc<TokenSource>,
    /// Which backend serves which mailbox.
    pub backends: Backends,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Largest envelope head.
    pub max_envelope_head_bytes: usize,
    /// Time a request body has to arrive in full, counted from its head.
    pub body_read_timeout: Duration,
    /// Concurrent requests per acted-as mailbox.
    pub mailbox_slots: Arc<MailboxSlots>,
    /// Request rate per principal.
    pub principal_rate: Arc<PrincipalRate>,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Cancelled when the gateway drains for shutdown: streaming responses then close cleanly.
    pub draining: CancellationToken,
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
pub async fn handle<B: ClientBody>(
    gw: Arc<Gateway>,
    mut req: Request<B>,
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

async fn serve_request<B: ClientBody>(
    gw: Arc<Gateway>,
    req: Request<B>,
    conn: ConnInfo,
) -> Response<Body> {
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut audit = RequestAudit::start(
        req.method().clone(),
        req.uri().path().to_owned(),
        conn.peer.ip(),
        client_request_id,
    );
    let result = dispatch(&gw, req, conn, &mut audit).await;
    respond(&gw, result, audit)
}

/// Which step sequence a request takes, by path and method.
async fn dispatch<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    audit: &mut RequestAudit,
) -> Result<Response<Body>, GatewayError> {
    if let Some(flavor) = autodiscover::flavor(req.uri().path()) {
        return crate::local::autodiscover(gw, req, conn, flavor, audit).await;
    }
    match (route(req.uri().path()), req.method()) {
        (Some(Route::Ews), &Method::POST) => ews_call(gw, req, conn, audit).await,
        (Some(Route::Ews), &Method::GET) => crate::local::ews_probe(gw, req, conn, audit).await,
        (Some(Route::Document(path)), &Method::GET) => document(gw, req, conn, path, audit).await,
        (Some(Route::Ews), _) => Err(GatewayError::MethodNotAllowed { allow: "POST, GET" }),
        (Some(Route::Document(_)), _) => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
        (None, _) => Err(GatewayError::NotFound),
    }
}

/// Respond: the answer or the error's SOAP fault, its body tracked so that the request
/// context is finished (audit) when it ends, and a streaming one closed when the gateway drains.
fn respond(
    gw: &Gateway,
    result: Result<Response<Body>, GatewayError>,
    mut audit: RequestAudit,
) -> Response<Body> {
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
    let on_end: OnEnd = Box::new(move |bytes_out, completed| {
        audit.finish(&sink, status, bytes_out, completed);
    });
    Response::from_parts(parts, Tracked::new(body, on_end, close).boxed_unsync())
}

/// An EWS SOAP call, step by step.
async fn ews_call<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    audit: &mut RequestAudit,
) -> Result<Response<Body>, GatewayError> {
    let (principal, req) = match authenticate_or_challenge(gw, req, conn, audit).await {
        Ok(authenticated) => authenticated,
        Err(challenge) => return Ok(challenge),
    };
    throttle(gw, &principal)?;
    let (parts, body) = req.into_parts();
    let body = DeadlineBody::new(body, gw.body_read_timeout);
    let body = scan(gw, body, audit).await?;
    let content_type = framing(&parts.headers, body.info())?;
    let decided = authorise(&principal, body.info(), &gw.users.load())?;
    audit.mailbox = Some(decided.mailbox.value.clone());
    audit.slot = Some(take_mailbox_slot(gw, &decided.mailbox.value)?);
    let chosen = choose_backend(gw, &decided.mailbox.value)?;
    audit.tenant = Some(chosen.tenant.tenant_id.clone());
    let call = AuthorisedCall {
        anchor: choose_anchor(&principal, &parts.headers, &decided.mailbox.value),
        headers: upstream_headers(&principal, &parts.headers, content_type),
        principal,
        mailbox: decided.mailbox,
        tenant: chosen.tenant,
        operation: decided.operation,
        body,
    };
    let answer = chosen.backend.call(call).await?;
    audit.upstream_request_id = answer.upstream_request_id;
    audit.streaming = answer.streaming;
    Ok(answer.response)
}

/// Step "authenticate" for a request that gets a challenge (not a fault) when it fails: the
/// principal and the request, or the challenge to send.
pub(crate) async fn authenticate_or_challenge<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    audit: &mut RequestAudit,
) -> Result<(Arc<Principal>, Request<B>), Response<Body>> {
    match authenticate_request(gw, req.headers(), conn, audit).await {
        Ok(principal) => Ok((principal, req)),
        Err(_) => {
            audit.outcome = GatewayError::Unauthenticated.kind();
            Err(challenge(req, &gw.realm).await)
        }
    }
}

/// Step "authenticate" against the current users, recording the principal.
pub(crate) async fn authenticate_request(
    gw: &Gateway,
    headers: &HeaderMap,
    conn: ConnInfo,
    audit: &mut RequestAudit,
) -> Result<Arc<Principal>, GatewayError> {
    let users = gw.users.load_full();
    let principal = authenticate(&users, &gw.lockout, headers, conn.peer.ip()).await?;
    audit.principal = Some(principal.name.clone());
    Ok(principal)
}

/// Step "throttle": the principal's request rate.
fn throttle(gw: &Gateway, principal: &Principal) -> Result<(), GatewayError> {
    gw.principal_rate.check(&principal.name).map_err(|wait| {
        throttled(
            "principal_rate",
            format!(
                "{} is sending requests faster than the gateway allows; retry after the back-off.",
                principal.name
            ),
            wait,
        )
    })
}

/// Step "scan": the body's declared size, then its envelope head, read with bounded memory.
async fn scan<B: ClientBody>(
    gw: &Gateway,
    body: B,
    audit: &mut RequestAudit,
) -> Result<RequestBody, GatewayError> {
    let declared = body.size_hint().exact();
    if let Some(len) = declared
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
    let rest = rest.map(|body| {
        let counter = Arc::new(AtomicU64::new(0));
        audit.streamed_in = Some(Arc::clone(&counter));
        counted(body, counter)
    });
    Ok(RequestBody::new(head, rest, declared, consumed))
}

/// Holds one of the mailbox's concurrent-request slots until the response body ends.
fn take_mailbox_slot(
    gw: &Gateway,
    mailbox: &str,
) -> Result<crate::limits::MailboxSlot, GatewayError> {
    gw.mailbox_slots.try_acquire(mailbox).ok_or_else(|| {
        throttled(
            "mailbox_concurrency",
            format!(
                "{mailbox} already has {} requests in flight through the gateway, its limit; retry when one ends.",
                gw.mailbox_slots.max()
            ),
            Duration::from_secs(1),
        )
    })
}

/// Step "choose backend": the backend and tenant serving the acted-as mailbox.
fn choose_backend(gw: &Gateway, mailbox: &str) -> Result<Chosen, GatewayError> {
    gw.backends.choose(mailbox).ok_or_else(|| GatewayError::Refused {
        code: "ErrorNonExistentMailbox",
        message: format!(
            "No Entra tenant is configured for the domain of {mailbox}; add it to a [[tenant]] domains list."
        ),
    })
}

/// The client headers that may go to a backend, plus `X-PublicFolderMailbox` when the
/// principal may act as that mailbox.
fn upstream_headers(
    principal: &Principal,
    client: &HeaderMap,
    content_type: &'static str,
) -> HeaderMap {
    let mut headers = forwardable_request_headers(client);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(pf) = client.get("x-publicfoldermailbox")
        && pf.to_str().is_ok_and(|v| policy::may_act_as(principal, v))
    {
        headers.insert("x-publicfoldermailbox", pf.clone());
    }
    headers
}

/// A WSDL/XSD document, from the backend serving the principal's own mailbox.
async fn document<B: ClientBody>(
    gw: &Gateway,
    req: Request<B>,
    conn: ConnInfo,
    path: &'static str,
    audit: &mut RequestAudit,
) -> Result<Response<Body>, GatewayError> {
    let principal = authenticate_request(gw, req.headers(), conn, audit).await?;
    let chosen = gw
        .backends
        .choose(&principal.mailbox)
        .ok_or(GatewayError::NotFound)?;
    let answer = chosen
        .backend
        .document(DocumentRequest {
            path,
            tenant: chosen.tenant,
            anchor: principal.mailbox.clone(),
            headers: forwardable_request_headers(req.headers()),
        })
        .await?;
    audit.upstream_request_id = answer.upstream_request_id;
    Ok(answer.response)
}

/// Step "authenticate": who is calling. No credentials, malformed ones, wrong ones and locked accounts
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
async fn challenge<B: ClientBody>(req: Request<B>, realm: &str) -> Response<Body> {
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
async fn scan_head<B: ClientBody>(
    mut body: B,
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
                        Some(body.map_err(Into::into).boxed_unsync())
                    };
                    return Ok((head, rest, consumed));
                }
            }
            Some(Err(err)) => {
                let err: BoxError = err.into();
                if let Some(timeout) = http_util::body_read_timeout(&*err) {
                    return Err(GatewayError::BodyTimeout {
                        seconds: timeout.seconds,
                    });
                }
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

/// What step "authorise" decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The mailbox the call acts as, in the one canonical form sent upstream
    /// (`PrimarySmtpAddress` of the decided mailbox, whatever form the client used; see
    /// [`policy::Decision::connecting_sid`]).
    pub mailbox: ConnectingSid,
    /// The EWS operation it calls.
    pub operation: String,
}

/// Step "authorise": whether the principal may call this operation, and the mailbox the call
/// acts as, from the principal's policy and the client's own impersonation header, if any
/// (a `PrincipalName` is mapped through the users file's `upn`).
pub fn authorise(
    principal: &Principal,
    info: &HeadInfo,
    users: &CredentialStore,
) -> Result<Decided, GatewayError> {
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
    Ok(Decided {
        mailbox: decision.connecting_sid(),
        operation: operation.to_owned(),
    })
}

/// Part of step "scan": the client's Content-Type, Content-Encoding and SOAPAction must agree
/// with the envelope read; returns the canonical Content-Type to send upstream (see
/// `canonical` in the core crate).
fn framing(headers: &HeaderMap, info: &HeadInfo) -> Result<&'static str, GatewayError> {
    let values = |name: header::HeaderName| -> Vec<&[u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    };
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine;
    use http_body_util::Full;

    use super::*;
    use crate::audit::AuditConfig;
    use crate::auth::{NameOptions, StoreOptions};
    use crate::backend::{Backend, BackendFuture, BackendResponse};
    use crate::lockout::LockoutPolicy;
    use crate::token::{FetchedToken, Tenant, TokenEndpoint, TokenError};

    const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
    const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
    const FIND: &str = "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem>";

    /// What the fake backend was handed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        principal: String,
        mailbox: String,
        tenant: String,
        operation: String,
        anchor: String,
        authorization: bool,
    }

    /// A backend that records each call and answers 200.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<Seen>>,
    }

    impl Fake {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn call(&self, call: AuthorisedCall) -> BackendFuture<'_> {
            self.seen.lock().unwrap().push(Seen {
                principal: call.principal.name.clone(),
                mailbox: call.mailbox.value.clone(),
                tenant: call.tenant.tenant_id.clone(),
                operation: call.operation.clone(),
                anchor: call.anchor.clone(),
                authorization: call.headers.contains_key(header::AUTHORIZATION),
            });
            Box::pin(async {
                Ok(BackendResponse {
                    response: Response::new(crate::http_util::full("<ok/>")),
                    upstream_request_id: Some("fake-1".to_owned()),
                    streaming: false,
                })
            })
        }
    }

    /// The fake never needs a token; asking for one is a failure the test would see.
    struct NoTokens;

    impl TokenEndpoint for NoTokens {
        fn fetch(
            &self,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<FetchedToken, TokenError>> + Send + '_>,
        > {
            Box::pin(async { Err(TokenError::BadResponse("no tokens in this test".into())) })
        }

        fn describe(&self) -> String {
            "none".to_owned()
        }
    }

    fn users() -> CredentialStore {
        let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
        let text = format!(
            r#"
[[user]]
name = "alice@contoso.example"
password_hash = "{}"
[[user]]
name = "archiver@contoso.example"
password_hash = "{}"
may_impersonate = ["*@contoso.example", "orphan@nowhere.example"]
[[user]]
name = "scanner@contoso.example"
password_hash = "{}"
operations = ["CreateItem"]
"#,
            hash("alice-pw"),
            hash("archiver-pw"),
            hash("scanner-pw"),
        );
        let options = StoreOptions {
            names: NameOptions {
                default_domain: None,
                netbios_domains: Default::default(),
            },
            cache_ttl: Duration::from_secs(60),
        };
        CredentialStore::from_toml(&text, options).unwrap()
    }

    fn gateway_with(fake: &Arc<Fake>, rate: PrincipalRate, max_body: u64) -> Arc<Gateway> {
        let tenant = Tenant::with_endpoints(
            "contoso-tenant",
            Box::new(|_: &str| Box::new(NoTokens) as Box<dyn TokenEndpoint>),
            Duration::from_secs(300),
        );
        let tokens = Arc::new(TokenSource::new(vec![(
            vec!["contoso.example".to_owned()],
            Arc::new(tenant),
        )]));
        let backend: Arc<dyn Backend> = Arc::clone(fake) as Arc<dyn Backend>;
        Arc::new(Gateway {
            realm: "test".to_owned(),
            users: ArcSwap::from_pointee(users()),
            lockout: Arc::new(Lockout::new(LockoutPolicy::default())),
            public_url: None,
            backends: Backends::single(Arc::clone(&tokens), backend),
            tokens,
            max_body_bytes: max_body,
            max_envelope_head_bytes: 64 * 1024,
            mailbox_slots: Arc::new(MailboxSlots::new(8)),
            body_read_timeout: Duration::from_secs(900),
            principal_rate: Arc::new(rate),
            audit: Arc::new(AuditLog::open(&AuditConfig::default()).unwrap()),
            draining: CancellationToken::new(),
        })
    }

    fn gateway(fake: &Arc<Fake>) -> Arc<Gateway> {
        gateway_with(fake, PrincipalRate::new(1000, 1000), 1024 * 1024)
    }

    fn envelope(header: &str, body: &str) -> String {
        format!(
            "<s:Envelope xmlns:s=\"{SOAP}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
    }

    fn impersonating(address: &str) -> String {
        format!(
            "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>{address}</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        )
    }

    fn post(user: Option<(&str, &str)>, body: String) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/EWS/Exchange.asmx")
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8");
        if let Some((u, p)) = user {
            let creds = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req = req.header(header::AUTHORIZATION, format!("Basic {creds}"));
        }
        req.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:443".parse().unwrap(),
            tls: true,
        }
    }

    async fn send(gw: &Arc<Gateway>, req: Request<Full<Bytes>>) -> (u16, String) {
        let resp = handle(Arc::clone(gw), req, conn()).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const ALICE: Option<(&str, &str)> = Some(("alice@contoso.example", "alice-pw"));
    const ARCHIVER: Option<(&str, &str)> = Some(("archiver@contoso.example", "archiver-pw"));
    const SCANNER: Option<(&str, &str)> = Some(("scanner@contoso.example", "scanner-pw"));

    #[tokio::test]
    async fn the_backend_sees_the_decided_principal_mailbox_tenant_and_operation() {
        let fake = Arc::new(Fake::default());
        let gw = gateway(&fake);
        let (status, _) = send(&gw, post(ALICE, envelope("", FIND))).await;
        assert_eq!(status, 200);
        let (status, _) = send(
            &gw,
            post(
                ARCHIVER,
                envelope(&impersonating("Bob@contoso.example"), FIND),
            ),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            fake.seen(),
            [
                Seen {
                    principal: "alice@contoso.example".into(),
                    mailbox: "alice@contoso.example".into(),
                    tenant: "contoso-tenant".into(),
                    operation: "FindItem".into(),
                    anchor: "alice@contoso.example".into(),
                    authorization: false,
                },
                Seen {
                    principal: "archiver@contoso.example".into(),
                    // The canonical decided mailbox, not the client's spelling of it.
                    mailbox: "bob@contoso.example".into(),
                    tenant: "contoso-tenant".into(),
                    operation: "FindItem".into(),
                    anchor: "bob@contoso.example".into(),
                    authorization: false,
                },
            ]
        );
    }

    #[tokio::test]
    async fn every_refusal_leaves_the_backend_untouched() {
        let fake = Arc::new(Fake::default());
        let gw = gateway(&fake);
        let privileged = "<t:SerializedSecurityContext><t:UserSid>S-1-5-18</t:UserSid></t:SerializedSecurityContext>";
        let cases: Vec<(&str, Request<Full<Bytes>>, u16, &str)> = vec![
            ("no credentials", post(None, envelope("", FIND)), 401, ""),
            (
                "wrong password",
                post(Some(("alice@contoso.example", "nope")), envelope("", FIND)),
                401,
                "",
            ),
            (
                "unknown user",
                post(
                    Some(("eve@contoso.example", "alice-pw")),
                    envelope("", FIND),
                ),
                401,
                "",
            ),
            (
                "another mailbox without a grant",
                post(ALICE, envelope(&impersonating("bob@contoso.example"), FIND)),
                500,
                "ErrorImpersonateUserDenied",
            ),
            (
                "an operation outside the principal's list",
                post(SCANNER, envelope("", FIND)),
                500,
                "ErrorAccessDenied",
            ),
            (
                "a mailbox no tenant serves",
                post(
                    ARCHIVER,
                    envelope(&impersonating("orphan@nowhere.example"), FIND),
                ),
                500,
                "ErrorNonExistentMailbox",
            ),
            (
                "a privileged header",
                post(ARCHIVER, envelope(privileged, FIND)),
                500,
                "",
            ),
            (
                "a DOCTYPE",
                post(ALICE, format!("<!DOCTYPE x []>{}", envelope("", FIND))),
                500,
                "",
            ),
            ("not XML", post(ALICE, "<s:Envelope".to_owned()), 500, ""),
            (
                "no operation",
                post(ALICE, envelope("", "")),
                500,
                "ErrorInvalidRequest",
            ),
        ];
        for (what, req, status, code) in cases {
            let (got, body) = send(&gw, req).await;
            assert_eq!(got, status, "{what}: {body}");
            assert!(body.contains(code), "{what}: {code} expected in {body}");
            assert!(fake.seen().is_empty(), "{what} reached the backend");
        }
    }

    #[tokio::test]
    async fn size_and_rate_refusals_leave_the_backend_untouched() {
        let fake = Arc::new(Fake::default());
        let gw = gateway_with(&fake, PrincipalRate::per_minute(1, 1), 512);
        let big = envelope("", &format!("{FIND}<!--{}-->", "x".repeat(1024)));
        let (status, body) = send(&gw, post(ALICE, big)).await;
        assert_eq!(status, 500, "a body over the limit: {body}");
        assert!(body.contains("ErrorMessageSizeExceeded"), "{body}");
        assert!(fake.seen().is_empty());
        // The oversized request spent alice's one request of the minute.
        let (status, body) = send(&gw, post(ALICE, envelope("", FIND))).await;
        assert_ne!(status, 200, "throttled: {body}");
        assert!(body.contains("ErrorServerBusy"), "{body}");
        assert!(
            fake.seen().is_empty(),
            "a throttled request reached the backend"
        );
        let (status, _) = send(&gw, post(ARCHIVER, envelope("", FIND))).await;
        assert_eq!(status, 200, "another principal has its own budget");
        assert_eq!(fake.seen().len(), 1);
    }

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
