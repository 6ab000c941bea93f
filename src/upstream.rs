//! The upstream seam: where an authorised EWS call goes.
//!
//! [`Upstream`] is the one trait between the gateway's decision-making and a backend. Today's
//! backend, [`EwsPassthrough`], forwards EWS to Exchange Online or Exchange Server on-premises with
//! an app-only bearer token; a later backend may translate EWS operations to Microsoft Graph
//! behind the same trait. Phases inside the pass-through are plain steps: token -> rewrite ->
//! forward -> respond.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::Principal;
use crate::error::{GatewayError, Side};
use crate::http_util::{Body, BoxError};
use crate::rewrite::ScannedHead;
use crate::soap::ConnectingSid;
use crate::token::TenantTokens;

/// An EWS call the gateway has authenticated and authorised.
pub struct EwsCall {
    /// Who is calling.
    pub principal: Arc<Principal>,
    /// The mailbox the call acts as (the impersonation to inject).
    pub act_as: ConnectingSid,
    /// The tenant whose token is used.
    pub tenant: Arc<TenantTokens>,
    /// The scanned, not yet rewritten, envelope head.
    pub head: ScannedHead,
    /// The rest of the client's body, after the head.
    pub rest: Option<Body>,
    /// Total length of the client's body, when it sent `Content-Length`.
    pub client_content_length: Option<u64>,
    /// Bytes of the client's body consumed into the head.
    pub consumed: u64,
    /// Client headers already filtered to those that may go upstream.
    pub headers: HeaderMap,
    /// The `X-AnchorMailbox` to send.
    pub anchor: String,
}

/// A GET of a WSDL/XSD document on behalf of an authenticated principal.
#[derive(Debug)]
pub struct DocumentCall {
    /// Path below the EWS base, e.g. `/EWS/Services.wsdl`.
    pub path: String,
    /// The tenant whose token is used.
    pub tenant: Arc<TenantTokens>,
    /// The principal's own mailbox (anchor).
    pub anchor: String,
    /// Filtered client headers.
    pub headers: HeaderMap,
}

/// What the backend answered.
pub struct UpstreamResponse {
    /// Status, filtered headers and the streaming body.
    pub response: Response<Body>,
    /// Exchange's `request-id`, for the audit trail.
    pub upstream_request_id: Option<String>,
}

/// A backend for authorised EWS calls.
pub trait Upstream: Send + Sync + 'static {
    /// Carries out an EWS SOAP call.
    fn call(
        &self,
        call: EwsCall,
    ) -> impl Future<Output = Result<UpstreamResponse, GatewayError>> + Send;

    /// Fetches a service description document (WSDL/XSD).
    fn document(
        &self,
        call: DocumentCall,
    ) -> impl Future<Output = Result<UpstreamResponse, GatewayError>> + Send;
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// EWS pass-through to Exchange Online or Exchange Server.
pub struct EwsPassthrough {
    client: HttpsClient,
    ews_url: Uri,
    response_timeout: Duration,
    max_body_bytes: u64,
}

/// Errors building the pass-through.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// The EWS URL does not parse.
    #[error("upstream.ews_url: {0}")]
    Url(String),
    /// The CA file could not be used.
    #[error("upstream.ca_file: {0}")]
    Ca(String),
}

/// Request headers a client may send through to Exchange; everything else is dropped
/// (deny by default: the client's `Authorization`, spoofed `X-Forwarded-*`, ...).
/// `Content-Type` is set by the gateway to the canonical value and `SOAPAction` is checked and
/// dropped (see [`crate::canonical`]): neither is the client's to pass on.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "cookie",
    "client-request-id",
    "return-client-request-id",
    "x-preferserveraffinity",
    "x-backendoverridecookie",
    "x-clientstatistics",
    "prefer",
];

/// Response headers never passed back: hop-by-hop, challenges, and Exchange topology.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "www-authenticate",
    "x-beserver",
    "x-feserver",
    "x-calculatedbetarget",
    "x-calculatedfetarget",
    "x-diaginfo",
    "x-feproxyinfo",
    "x-proxy-routingcorrectness",
    "x-proxy-backendserverstatus",
    "x-backendhttpstatus",
    "x-powered-by",
];

/// Copies the client headers that may go upstream.
pub fn forwardable_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in client {
        if FORWARDED_REQUEST_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn filter_response_headers(headers: &mut HeaderMap) {
    for name in DROPPED_RESPONSE_HEADERS {
        headers.remove(*name);
    }
}

impl EwsPassthrough {
    /// A pooled client for `ews_url`, trusting the platform roots plus `extra_ca_pem`.
    pub fn new(
        ews_url: &str,
        extra_ca_pem: Option<&[u8]>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_body_bytes: u64,
    ) -> Result<Self, UpstreamSetupError> {
        crate::tls::install_crypto_provider();
        let ews_url: Uri = ews_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamSetupError::Url(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_ca_pem {
            let certs = crate::tls::certs_from_pem(pem, "upstream CA file")
                .map_err(|e| UpstreamSetupError::Ca(e.to_string()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| UpstreamSetupError::Ca(e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Self {
            client,
            ews_url,
            response_timeout,
            max_body_bytes,
        })
    }

    fn url_for(&self, base: &Uri, path: &str) -> Result<Uri, GatewayError> {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(path.parse().map_err(|_| GatewayError::NotFound)?);
        Uri::from_parts(parts).map_err(|_| GatewayError::NotFound)
    }

    async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let target = req.uri().clone();
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                metrics::histogram!(crate::telemetry::UPSTREAM_LATENCY)
                    .record(started.elapsed().as_secs_f64());
                Ok(resp)
            }
            // The client's chunked body crossed the limit while streaming: the client's fault,
            // not an outage (an ErrorServerBusy would make it retry the same upload).
            Ok(Err(err)) if body_too_large(&err).is_some() => Err(GatewayError::PayloadTooLarge {
                limit: body_too_large(&err).unwrap_or_default(),
            }),
            Ok(Err(err)) => Err(GatewayError::Unavailable {
                side: Side::Exchange,
                message: format!(
                    "the EWS endpoint {} could not be reached ({})",
                    target,
                    crate::error::error_chain(&err)
                ),
                retry_after: Duration::from_secs(5),
            }),
            Err(_) => Err(GatewayError::Unavailable {
                side: Side::Exchange,
                message: format!(
                    "the EWS endpoint {} did not answer within {} s",
                    target,
                    self.response_timeout.as_secs()
                ),
                retry_after: Duration::from_secs(5),
            }),
        }
    }

    fn build_request(
        &self,
        uri: Uri,
        method: Method,
        headers: &HeaderMap,
        bearer: &str,
        anchor: &str,
        body: Body,
    ) -> Result<Request<Body>, GatewayError> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        for (name, value) in headers {
            h.append(name.clone(), value.clone());
        }
        let bad_header = |what: &str| GatewayError::Refused {
            code: "ErrorInvalidRequest",
            message: format!("The {what} cannot be sent as an HTTP header."),
        };
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {bearer}")).map_err(|_| {
                GatewayError::Misconfigured {
                    side: Side::Entra,
                    message: "the access token is not a valid header value".to_owned(),
                }
            })?,
        );
        h.insert(
            HeaderName::from_static("x-anchormailbox"),
            HeaderValue::from_str(anchor).map_err(|_| bad_header("mailbox address"))?,
        );
        if !h.contains_key("client-request-id") {
            // A v4 UUID from the thread-local CSPRNG: no getrandom system call per request.
            let id = uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string();
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert(HeaderName::from_static("client-request-id"), v);
            }
        }
        Ok(req)
    }

    fn respond(&self, resp: Response<hyper::body::Incoming>) -> UpstreamResponse {
        let upstream_request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (mut parts, body) = resp.into_parts();
        filter_response_headers(&mut parts.headers);
        let body: Body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
        UpstreamResponse {
            response: Response::from_parts(parts, body),
            upstream_request_id,
        }
    }
}

/// Explains an upstream refusal that only the gateway's operator can fix.
fn refusal_from_status(resp: &Response<hyper::body::Incoming>) -> Option<GatewayError> {
    match resp.status() {
        StatusCode::UNAUTHORIZED => {
            let diag = resp
                .headers()
                .get("x-ms-diagnostics")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no x-ms-diagnostics header");
            Some(GatewayError::Misconfigured {
                side: Side::Exchange,
                message: format!("Exchange refused the gateway's access token ({diag})."),
            })
        }
        StatusCode::FORBIDDEN => {
            let reason = resp
                .headers()
                .get("x-ews-policy-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no X-EWS-Policy-Reason header");
            Some(GatewayError::Refused {
                code: "ErrorAccessDenied",
                message: format!(
                    "Exchange refused the gateway's application for this mailbox by policy: {reason}"
                ),
            })
        }
        _ => None,
    }
}

/// Where an EWS POST goes and what it carries besides the body.
struct Target<'a> {
    tenant: &'a TenantTokens,
    headers: &'a HeaderMap,
    anchor: &'a str,
}

impl EwsPassthrough {
    /// Sends one EWS POST for `tenant` with `token`.
    async fn post_ews(
        &self,
        target: &Target<'_>,
        token: &crate::token::AccessToken,
        body: Body,
        content_length: Option<u64>,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let url = target
            .tenant
            .ews_url
            .clone()
            .unwrap_or_else(|| self.ews_url.clone());
        let mut req = self.build_request(
            url,
            Method::POST,
            target.headers,
            token.bearer(),
            target.anchor,
            body,
        )?;
        set_content_length(&mut req, content_length);
        self.send(req).await
    }

    /// The client's answer: a refusal only the operator can fix becomes a fault, anything else
    /// streams back.
    fn answer(
        &self,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<UpstreamResponse, GatewayError> {
        match refusal_from_status(&resp) {
            Some(err) => Err(err),
            None => Ok(self.respond(resp)),
        }
    }
}

impl Upstream for EwsPassthrough {
    async fn call(&self, call: EwsCall) -> Result<UpstreamResponse, GatewayError> {
        let target = Target {
            tenant: &call.tenant,
            headers: &call.headers,
            anchor: &call.anchor,
        };
        // token
        let token = call.tenant.get().await?;
        // rewrite
        let prefix = call.head.rewrite(&call.act_as);
        let rest = call.rest;
        let replayable = rest.is_none();
        let content_length = call
            .client_content_length
            .map(|len| len - call.consumed.min(len) + prefix.len() as u64);
        // forward
        let body = limited_body(prefix.clone(), rest, self.max_body_bytes);
        let resp = self.post_ews(&target, &token, body, content_length).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Exchange says the token is bad: drop it, and try once more when the body can be
            // replayed (never more: a second refusal is the operator's to fix).
            call.tenant.invalidate(&token);
            if replayable {
                let token = call.tenant.get().await?;
                let body = limited_body(prefix, None, self.max_body_bytes);
                let resp = self.post_ews(&target, &token, body, content_length).await?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    call.tenant.invalidate(&token);
                }
                return self.answer(resp);
            }
        }
        self.answer(resp)
    }

    async fn document(&self, call: DocumentCall) -> Result<UpstreamResponse, GatewayError> {
        let token = call.tenant.get().await?;
        let base = call.tenant.ews_url.as_ref().unwrap_or(&self.ews_url);
        let uri = self.url_for(base, &call.path)?;
        let req = self.build_request(
            uri,
            Method::GET,
            &call.headers,
            token.bearer(),
            &call.anchor,
            crate::http_util::empty(),
        )?;
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            call.tenant.invalidate(&token);
        }
        self.answer(resp)
    }
}

fn set_content_length(req: &mut Request<Body>, length: Option<u64>) {
    if let Some(len) = length {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// The upstream body: the rewritten prefix, then the rest of the client's body unchanged,
/// failing (which aborts the upstream request) once more than `limit` bytes went through.
fn limited_body(prefix: Bytes, rest: Option<Body>, limit: u64) -> Body {
    let head = stream::once(async move { Ok::<_, BoxError>(prefix) });
    let tail = match rest {
        Some(body) => BodyStream::new(body)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
            .boxed(),
        None => stream::empty().boxed(),
    };
    let mut sent: u64 = 0;
    let frames = head.chain(tail).map(move |chunk| {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        if sent > limit {
            return Err::<Frame<Bytes>, BoxError>(Box::new(BodyTooLarge { limit }));
        }
        Ok(Frame::data(chunk))
    });
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

/// The limit of a [`BodyTooLarge`] anywhere in `err`'s source chain.
fn body_too_large(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(too_large) = e.downcast_ref::<BodyTooLarge>() {
            return Some(too_large.limit);
        }
        current = e.source();
    }
    None
}

/// The client's body grew past the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}
