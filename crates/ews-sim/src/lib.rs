//! `ews-gateway sim`: a strict simulated Exchange Online.
//!
//! One HTTP(S) listener serves the Entra token endpoint (`/{tenant}/oauth2/...`), its signing keys,
//! EWS (`/EWS/Exchange.asmx`) and Microsoft Graph (`/v1.0/...`, see [`graph`]) over one in-memory
//! mailbox store, and a small admin API under `/_sim/` (request log, fault injection). It accepts
//! what Exchange Online and Entra ID accept and refuses what they refuse, with the same status
//! codes, headers and fault texts, so that tests of the gateway prove something.
#![forbid(unsafe_code)]

pub mod directory;
pub mod entra;
pub mod ews;
pub mod faults;
pub mod federation;
pub mod graph;
pub mod identity;
pub mod mailbox;
pub mod ops;
pub mod tokens;
pub mod xml;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use directory::Directory;
use ews_http::http_util::{self, Body, ConnInfo, ServeOptions};
use faults::Faults;

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Tenants, apps and mailboxes.
    pub directory: Directory,
    /// Lifetime of issued access tokens (`expires_in`).
    pub token_lifetime: Duration,
    /// Refuse EWS requests whose `X-AnchorMailbox` is missing or names another mailbox.
    pub strict_anchor: bool,
    /// Serve HTTPS with a generated CA.
    pub https: bool,
    /// Put a `nonce` in issued token headers, as Entra does for some resources.
    pub token_header_nonce: bool,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// How many body bytes each request-log entry keeps (the hash covers all of it).
    pub log_body_limit: usize,
    /// Interval between keep-alive notifications on streaming subscriptions.
    pub streaming_heartbeat: Duration,
    /// Faults injected from the start.
    pub faults: Faults,
    /// The `X-IDENTITY-HEADER` value the App Service identity endpoint requires.
    pub identity_header: String,
    /// EWS is switched off for good, as in Exchange Online after 2027-04-01: every request
    /// under `/EWS/` gets HTTP 403 (see [`ews::RETIRED_BODY`]); Graph keeps working.
    pub ews_retired: bool,
    /// Microsoft Graph's limits.
    pub graph: graph::GraphLimits,
}

impl SimConfig {
    /// The built-in `contoso.example` tenant with Exchange Online's defaults.
    pub fn builtin() -> Result<Self, directory::SeedError> {
        Ok(Self::with_directory(Directory::builtin()?))
    }

    /// Exchange Online's defaults around a given directory.
    pub fn with_directory(directory: Directory) -> Self {
        Self {
            directory,
            token_lifetime: Duration::from_secs(3599),
            strict_anchor: true,
            https: false,
            token_header_nonce: false,
            max_request_bytes: 200 * 1024 * 1024,
            log_body_limit: 4 * 1024 * 1024,
            streaming_heartbeat: Duration::from_secs(45),
            faults: Faults::default(),
            identity_header: "sim-identity-header-0001".to_owned(),
            ews_retired: false,
            graph: graph::GraphLimits::default(),
        }
    }
}

/// One request as it arrived at the simulator.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// Arrival order, from 1; never reused, not even after the log is cleared (a recorder
    /// tells what one request caused by the entries after the last `seq` it saw).
    pub seq: u64,
    /// Method.
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// Headers in arrival order (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body bytes, cut at the configured log limit.
    #[serde(serialize_with = "serialize_lossy")]
    pub body: Bytes,
    /// Full body length.
    pub body_len: usize,
    /// SHA-256 of the full body, hex.
    pub body_sha256: String,
    /// Graph requests: the mailbox the request addressed (primary address, lower case), once
    /// the face resolved it (upload-session PUTs: the session's mailbox).
    pub mailbox: Option<String>,
    /// Graph requests: the client id of the app whose token it carried (upload-session PUTs:
    /// the app that created the session).
    pub app_id: Option<String>,
}

fn serialize_lossy<S: serde::Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

impl LoggedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether this is a request to the Graph face (`/v1.0/...` or an upload-session URL).
    pub fn is_graph(&self) -> bool {
        let path = self.path.split('?').next().unwrap_or_default();
        path.starts_with("/v1.0/") || path.starts_with(graph::UPLOAD_PATH_PREFIX)
    }

    /// Whether this is a request to the EWS endpoint.
    pub fn is_ews(&self) -> bool {
        self.path
            .split('?')
            .next()
            .is_some_and(|p| p.eq_ignore_ascii_case("/EWS/Exchange.asmx"))
    }
}

/// The log of what arrived, for tests and `GET /_sim/requests`.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// The entries and the last `seq` handed out.
    entries: Mutex<(Vec<LoggedRequest>, u64)>,
}

impl RequestLog {
    fn push(&self, mut entry: LoggedRequest) -> u64 {
        if let Ok(mut guard) = self.entries.lock() {
            let (entries, last) = &mut *guard;
            *last += 1;
            entry.seq = *last;
            entries.push(entry);
            return *last;
        }
        0
    }

    /// Records which mailbox and app request `seq` was for (Graph learns them after arrival).
    pub fn annotate(&self, seq: u64, mailbox: &str, app_id: &str) {
        if let Ok(mut guard) = self.entries.lock()
            && let Some(entry) = guard.0.iter_mut().rev().find(|e| e.seq == seq)
        {
            entry.mailbox = Some(mailbox.to_ascii_lowercase());
            entry.app_id = Some(app_id.to_owned());
        }
    }

    /// A copy of every entry so far.
    pub fn snapshot(&self) -> Vec<LoggedRequest> {
        self.entries.lock().map(|e| e.0.clone()).unwrap_or_default()
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        if let Ok(mut guard) = self.entries.lock() {
            guard.0.clear();
        }
    }
}

/// Everything the simulator's handlers share.
#[derive(Debug)]
pub struct SimState {
    /// The configuration it started with.
    pub config: SimConfig,
    /// Tenants, apps, mailboxes (identities and policy).
    pub directory: RwLock<Directory>,
    /// Token issuing and validation.
    pub tokens: tokens::TokenService,
    /// Token endpoint state (assertion replay cache).
    pub entra: entra::EntraState,
    /// Mailbox contents.
    pub mailboxes: mailbox::Store,
    /// Faults injected now.
    pub faults: RwLock<Faults>,
    /// What arrived.
    pub log: RequestLog,
    /// Base URL the simulator is reachable at (`http(s)://127.0.0.1:port`).
    pub base_url: String,
    /// Bearer tokens Exchange refuses from now on (as after a revocation or key rollover).
    pub revoked_tokens: Mutex<std::collections::HashSet<String>>,
    /// The emulated Kubernetes OIDC issuer for workload identity federation.
    pub federation: federation::FederationIssuer,
    /// Graph face state: per app+mailbox limits and accounting, upload sessions.
    pub graph: Arc<graph::GraphState>,
}

impl SimState {
    /// A copy of the current faults.
    pub fn faults(&self) -> Faults {
        self.faults.read().map(|f| f.clone()).unwrap_or_default()
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Shared state (request log, directory, mailboxes, faults).
    pub state: Arc<SimState>,
    /// PEM of the CA that signed the HTTPS certificate, when serving HTTPS.
    pub ca_pem: Option<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Errors while starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be made.
    #[error(transparent)]
    Tls(#[from] ews_http::tls::TlsError),
    /// Signing keys could not be made.
    #[error("token signing key: {0}")]
    Keys(String),
}

impl SimHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The Microsoft Graph base URL (what replaces `https://graph.microsoft.com`; requests go to
    /// `{graph_url}/v1.0/...`).
    pub fn graph_url(&self) -> String {
        self.base_url().to_owned()
    }

    /// Only the Graph requests that arrived so far (upload-session PUTs included).
    pub fn graph_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_graph())
            .collect()
    }

    /// The most Graph requests of `app_id` for `mailbox` that were ever in flight at once (only
    /// admitted requests count; refused ones are in [`graph::LaneStats::throttled`]).
    pub fn graph_high_water(&self, app_id: &str, mailbox: &str) -> usize {
        self.graph_stats(app_id, mailbox).high_water
    }

    /// Graph accounting of `app_id` for `mailbox`.
    pub fn graph_stats(&self, app_id: &str, mailbox: &str) -> graph::LaneStats {
        self.state.graph.stats(app_id, mailbox)
    }

    /// Forgets Graph accounting (high-water marks, windows), e.g. between test phases.
    pub fn reset_graph_stats(&self) {
        self.state.graph.reset();
    }

    /// The EWS endpoint URL.
    pub fn ews_url(&self) -> String {
        format!("{}/EWS/Exchange.asmx", self.base_url())
    }

    /// The v2 token endpoint of `tenant` (id or domain).
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base_url())
    }

    /// The authority host URL (what replaces `https://login.microsoftonline.com`).
    pub fn authority_url(&self) -> String {
        self.base_url().to_owned()
    }

    /// Everything that arrived so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.log.snapshot()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        self.state.log.clear();
    }

    /// Only the EWS requests that arrived so far.
    pub fn ews_requests(&self) -> Vec<LoggedRequest> {
        self.requests().into_iter().filter(|r| r.is_ews()).collect()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.state.faults.write() {
            *f = faults;
        }
    }

    /// A service account token from the emulated cluster issuer (workload identity federation).
    pub fn federation_token(&self, subject: &str) -> String {
        self.state
            .federation
            .token(subject, "api://AzureADTokenExchange")
            .unwrap_or_default()
    }

    /// Makes EWS refuse `bearer` from now on (401 `invalid_token`).
    pub fn revoke_token(&self, bearer: &str) {
        if let Ok(mut revoked) = self.state.revoked_tokens.lock() {
            revoked.insert(bearer.to_owned());
        }
    }

    /// Stops the listener and waits for open connections to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator on `addr` (use port 0 in tests).
pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimError::Bind { addr, source })?;
    let (tls, ca_pem) = if config.https {
        let pki = ews_http::tls::generate_pki(&["localhost".to_owned(), addr.ip().to_string()])?;
        let certs = ews_http::tls::certs_from_pem(pki.server_cert_pem.as_bytes(), "generated")?;
        let key = ews_http::tls::key_from_pem(pki.server_key_pem.as_bytes(), "generated")?;
        let server = ews_http::tls::server_config(certs, key)?;
        (
            Some(tokio_rustls::TlsAcceptor::from(server)),
            Some(pki.ca_cert_pem),
        )
    } else {
        (None, None)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = format!("{scheme}://{addr}");
    let tokens = tokens::TokenService::new(&config).map_err(|e| SimError::Keys(e.to_string()))?;
    let state = Arc::new(SimState {
        directory: RwLock::new(config.directory.clone()),
        entra: entra::EntraState::default(),
        mailboxes: mailbox::Store::from_directory(&config.directory),
        faults: RwLock::new(config.faults.clone()),
        log: RequestLog::default(),
        tokens,
        base_url,
        config,
        revoked_tokens: Mutex::new(std::collections::HashSet::new()),
        federation: federation::FederationIssuer::new()
            .map_err(|e| SimError::Keys(e.to_string()))?,
        graph: Arc::default(),
    });
    let shutdown = CancellationToken::new();
    let handler_state = Arc::clone(&state);
    let task = tokio::spawn(http_util::serve(
        listener,
        tls,
        ServeOptions::default(),
        shutdown.clone(),
        move |req, info| route(Arc::clone(&handler_state), req, info),
    ));
    Ok(SimHandle {
        addr,
        state,
        ca_pem,
        shutdown,
        task,
    })
}

/// A buffered request as the simulator's handlers see it.
#[derive(Debug)]
pub struct SimRequest {
    /// Method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Connection facts.
    pub conn: ConnInfo,
}

/// A plain response with a content type.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(http_util::full(body));
    *resp.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

async fn route(state: Arc<SimState>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let limited = Limited::new(body, state.config.max_request_bytes);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            let too_large = err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain",
                    "Request body too large",
                )
            } else {
                respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "Request body could not be read",
                )
            };
        }
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        headers.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    // Upload-session chunks are logged without their bytes: a log entry keeps its body's buffer
    // alive, and a 150 MB upload must not stay in memory twice.
    let log_cut = if path_and_query.starts_with(graph::UPLOAD_PATH_PREFIX) {
        0
    } else {
        body.len().min(state.config.log_body_limit)
    };
    let mut seq = 0;
    // The admin API is the observer, not traffic: it is not logged.
    if !path_and_query.starts_with("/_sim/") {
        seq = state.log.push(LoggedRequest {
            seq: 0,
            method: parts.method.to_string(),
            path: path_and_query.clone(),
            headers,
            body: body.slice(..log_cut),
            body_len: body.len(),
            body_sha256: hex::encode(Sha256::digest(&body)),
            mailbox: None,
            app_id: None,
        });
    }

    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path_and_query.clone(), None),
    };
    let request = SimRequest {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        body,
        conn,
    };
    dispatch(&state, request, seq).await
}

async fn dispatch(state: &Arc<SimState>, req: SimRequest, seq: u64) -> Response<Body> {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let lower = req.path.to_ascii_lowercase();
    if lower.starts_with("/ews/") {
        return ews::handle(state, req).await;
    }
    if req.path.starts_with("/v1.0/") || req.path == "/v1.0" {
        return graph::handle(state, req, seq).await;
    }
    if req.path.starts_with(graph::UPLOAD_PATH_PREFIX) {
        return graph::upload_chunk(state, req, seq).await;
    }
    match segments.as_slice() {
        ["_sim", "requests"] => admin_requests(state, &req),
        ["_sim", "faults"] => admin_faults(state, &req),
        ["_sim", "health"] => respond(StatusCode::OK, "text/plain", "ok"),
        ["_sim", "federation", "token"] => {
            let params: Vec<(String, String)> = req
                .query
                .as_deref()
                .and_then(|q| serde_urlencoded::from_str(q).ok())
                .unwrap_or_default();
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let subject = get("subject").unwrap_or_default();
            let audience =
                get("audience").unwrap_or_else(|| "api://AzureADTokenExchange".to_owned());
            match state.federation.token(&subject, &audience) {
                Ok(token) => respond(StatusCode::OK, "application/jwt", token),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        [tenant, "oauth2", "v2.0", "token"] => {
            let tenant = (*tenant).to_owned();
            entra::handle_token(state, &tenant, entra::TokenApi::V2, req).await
        }
        [tenant, "oauth2", "token"] => {
            let tenant = (*tenant).to_owned();
            entra::handle_token(state, &tenant, entra::TokenApi::V1, req).await
        }
        ["metadata", "identity", "oauth2", "token"] => identity::imds(state, &req).await,
        ["msi", "token"] => identity::app_service(state, &req).await,
        [_, "discovery", "keys"] | [_, "discovery", "v2.0", "keys"] => respond(
            StatusCode::OK,
            "application/json; charset=utf-8",
            state.tokens.jwks().to_string(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/html", "<h1>404 Not Found</h1>"),
    }
}

fn admin_requests(state: &SimState, req: &SimRequest) -> Response<Body> {
    match req.method {
        Method::GET => match serde_json::to_string(&state.log.snapshot()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(err) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                err.to_string(),
            ),
        },
        Method::DELETE => {
            state.log.clear();
            respond(StatusCode::NO_CONTENT, "text/plain", "")
        }
        _ => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or DELETE",
        ),
    }
}

fn admin_faults(state: &SimState, req: &SimRequest) -> Response<Body> {
    match req.method {
        Method::GET => match serde_json::to_string(&state.faults()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(err) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                err.to_string(),
            ),
        },
        Method::PUT => match serde_json::from_slice::<Faults>(&req.body) {
            Ok(faults) => {
                if let Ok(mut f) = state.faults.write() {
                    *f = faults;
                }
                respond(StatusCode::NO_CONTENT, "text/plain", "")
            }
            Err(err) => respond(StatusCode::BAD_REQUEST, "text/plain", err.to_string()),
        },
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET or PUT"),
    }
}
