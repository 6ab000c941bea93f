//! The EWS pass-through backend: the authorised call forwarded to Exchange Online or Exchange
//! Server with an app-only bearer token, the impersonation written into the envelope head, and
//! the answer streamed back. Steps: token -> rewrite -> forward -> respond.
//!
//! Also its business: the WSDL/XSD documents (fetched from the same Exchange) and streaming
//! notifications (`GetStreamingEvents` answers are marked long-lived).

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

use super::{AuthorisedCall, Backend, BackendFuture, BackendResponse, DocumentRequest};
use crate::config::Config;
use crate::error::{GatewayError, Side};
use crate::http_util::{Body, BoxError};
use crate::token::{AccessToken, Tenant, TenantTokens};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The HTTPS client all pass-through backends share (one connection pool).
#[derive(Clone)]
pub struct PassthroughClient {
    client: HttpsClient,
    default_ews_url: Uri,
    response_timeout: Duration,
    max_body_bytes: u64,
}

/// Where a pass-through sends EWS.
#[derive(Debug, Clone)]
enum Target {
    /// The tenant's own EWS URL, else the gateway's default, with the tenant's Exchange scope.
    ExchangeOnline,
    /// An Exchange Server on-premises.
    ExchangeServer { ews_url: Uri, scope: String },
}

/// EWS pass-through to Exchange Online or Exchange Server.
pub struct EwsPassthrough {
    http: PassthroughClient,
    target: Target,
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

fn filter_response_headers(headers: &mut HeaderMap) {
    for name in DROPPED_RESPONSE_HEADERS {
        headers.remove(*name);
    }
}

impl PassthroughClient {
    /// The client `[upstream]` and `[limits]` configure.
    pub fn new(config: &Config, extra_ca_pem: Option<&[u8]>) -> Result<Self, UpstreamSetupError> {
        Self::with(
            &config.upstream.ews_url,
            extra_ca_pem,
            Duration::from_secs(config.upstream.connect_timeout_seconds),
            Duration::from_secs(config.upstream.response_timeout_seconds),
            config.limits.max_body_bytes,
        )
    }

    /// A pooled client whose default EWS URL is `ews_url`, trusting the platform roots plus
    /// `extra_ca_pem`.
    pub fn with(
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
            default_ews_url: ews_url,
            response_timeout,
            max_body_bytes,
        })
    }

    /// The pass-through to Exchange Online (the tenant's EWS URL, else the default).
    pub fn exchange_online(&self) -> Result<EwsPassthrough, UpstreamSetupError> {
        Ok(EwsPassthrough {
            http: self.clone(),
            target: Target::ExchangeOnline,
        })
    }

    /// The pass-through to an Exchange Server at `ews_url`, with tokens for `scope` (default:
    /// the URL's origin with `/.default`).
    pub fn exchange_server(
        &self,
        ews_url: &str,
        scope: Option<&str>,
    ) -> Result<EwsPassthrough, UpstreamSetupError> {
        let url: Uri = ews_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamSetupError::Url(e.to_string()))?;
        let scope = match scope {
            Some(s) => s.to_owned(),
            None => {
                let (Some(scheme), Some(authority)) = (url.scheme_str(), url.authority()) else {
                    return Err(UpstreamSetupError::Url(format!(
                        "{ews_url} is not an absolute URL"
                    )));
                };
                format!("{scheme}://{}/.default", authority.host())
            }
        };
        Ok(EwsPassthrough {
            http: self.clone(),
            target: Target::ExchangeServer {
                ews_url: url,
                scope,
            },
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
            // The client stopped sending its body in time; the upstream request was aborted.
            Ok(Err(err)) if crate::http_util::body_read_timeout(&err).is_some() => {
                Err(GatewayError::BodyTimeout {
                    seconds: crate::http_util::body_read_timeout(&err).map_or(0, |t| t.seconds),
                })
            }
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

    fn respond(&self, resp: Response<hyper::body::Incoming>) -> BackendResponse {
        let upstream_request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (mut parts, body) = resp.into_parts();
        filter_response_headers(&mut parts.headers);
        let body: Body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
        BackendResponse {
            response: Response::from_parts(parts, body),
            upstream_request_id,
            streaming: false,
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

impl EwsPassthrough {
    /// The EWS URL for a call of `tenant`.
    fn ews_url<'a>(&'a self, tenant: &'a Tenant) -> &'a Uri {
        match &self.target {
            Target::ExchangeOnline => tenant
                .ews_url
                .as_ref()
                .unwrap_or(&self.http.default_ews_url),
            Target::ExchangeServer { ews_url, .. } => ews_url,
        }
    }

    /// The token state this backend uses for `tenant`: its resource, from the one token source.
    fn tokens(&self, tenant: &Tenant) -> Arc<TenantTokens> {
        match &self.target {
            Target::ExchangeOnline => tenant.ews_tokens(),
            Target::ExchangeServer { scope, .. } => tenant.tokens(scope),
        }
    }

    /// Sends one EWS POST with `token`.
    async fn post_ews(
        &self,
        call: &Posted<'_>,
        token: &AccessToken,
        body: Body,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let mut req = self.http.build_request(
            call.url.clone(),
            Method::POST,
            call.headers,
            token.bearer(),
            call.anchor,
            body,
        )?;
        set_content_length(&mut req, call.content_length);
        self.http.send(req).await
    }

    /// The client's answer: a refusal only the operator can fix becomes a fault, anything else
    /// streams back.
    fn answer(
        &self,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<BackendResponse, GatewayError> {
        match refusal_from_status(&resp) {
            Some(err) => Err(err),
            None => Ok(self.http.respond(resp)),
        }
    }

    async fn forward(&self, call: AuthorisedCall) -> Result<BackendResponse, GatewayError> {
        // token
        let tokens = self.tokens(&call.tenant);
        let token = tokens.get().await?;
        // rewrite
        let rewritten = call.body.rewrite(&call.mailbox);
        let prefix = rewritten.prefix;
        let replayable = rewritten.rest.is_none();
        let posted = Posted {
            url: self.ews_url(&call.tenant),
            headers: &call.headers,
            anchor: &call.anchor,
            content_length: rewritten.content_length,
        };
        // forward
        let limit = self.http.max_body_bytes;
        let body = limited_body(prefix.clone(), rewritten.rest, limit);
        let mut resp = self.post_ews(&posted, &token, body).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Exchange says the token is bad: drop it, and try once more when the body can be
            // replayed (never more: a second refusal is the operator's to fix).
            tokens.invalidate(&token);
            if replayable {
                let token = tokens.get().await?;
                let body = limited_body(prefix, None, limit);
                resp = self.post_ews(&posted, &token, body).await?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    tokens.invalidate(&token);
                }
            }
        }
        // respond
        let mut answer = self.answer(resp)?;
        // A streaming subscription stays open for up to 30 minutes: the gateway closes it
        // cleanly when it drains.
        answer.streaming =
            call.operation == "GetStreamingEvents" && answer.response.status().is_success();
        Ok(answer)
    }

    async fn fetch_document(
        &self,
        request: DocumentRequest,
    ) -> Result<BackendResponse, GatewayError> {
        let tokens = self.tokens(&request.tenant);
        let token = tokens.get().await?;
        let uri = self
            .http
            .url_for(self.ews_url(&request.tenant), request.path)?;
        let req = self.http.build_request(
            uri,
            Method::GET,
            &request.headers,
            token.bearer(),
            &request.anchor,
            crate::http_util::empty(),
        )?;
        let resp = self.http.send(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            tokens.invalidate(&token);
        }
        self.answer(resp)
    }
}

/// Where one EWS POST goes and what it carries besides the body.
struct Posted<'a> {
    url: &'a Uri,
    headers: &'a HeaderMap,
    anchor: &'a str,
    content_length: Option<u64>,
}

impl Backend for EwsPassthrough {
    fn name(&self) -> &'static str {
        match self.target {
            Target::ExchangeOnline => "exchange-online",
            Target::ExchangeServer { .. } => "exchange-server",
        }
    }

    fn call(&self, call: AuthorisedCall) -> BackendFuture<'_> {
        Box::pin(self.forward(call))
    }

    fn document(&self, request: DocumentRequest) -> BackendFuture<'_> {
        Box::pin(self.fetch_document(request))
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
