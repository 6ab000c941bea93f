//! Simulated Microsoft Graph v1.0 mail face (`/v1.0/users/{m}/...`) over the same mailbox store
//! as the EWS face, so what one face writes the other reads.
//!
//! Owns: bearer validation for the Graph audience and application roles (403 without the
//! role), user addressing (UPN, primary SMTP, alias or object id), Graph's per app+mailbox limits
//! as errors (4 in flight, 10,000 requests per 10 minutes, 150 MB uploads per 5 minutes, 4 MB
//! request bodies, 3 MB inline attachments), the JSON shapes of users, mail folders, messages and
//! attachments, sendMail / drafts / send / move / copy, attachment upload sessions with
//! pre-authenticated URLs, MIME in (`text/plain` base64) and out (`$value`), and the accounting
//! tests read (in-flight high-water marks per app+mailbox).
//!
//! Ids are the store's EwsIds in the URL-safe alphabet. Where Graph's behaviour is unverified
//! and security depends on it, the face is permissive on purpose (an id of mailbox B under
//! `/users/A/` is served from B), so gateway tests prove the gateway's own checks.

// Early answers are whole error values here; the simulator is not a hot path worth boxing them for.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use super::directory::{App, Mailbox as DirMailbox, Tenant};
use super::mailbox::{
    Address, Attachment, BodyType, Data, IdKind, Item, Message, from_graph_id, mime, to_graph_id,
    user_object_id,
};
use super::tokens::{GRAPH_AUDIENCES, now_unix};
use super::{SimRequest, SimState, respond};
use ews_http::http_util::Body;

/// Path prefix of pre-authenticated upload-session URLs (served on the same listener; the
/// session id and an opaque `authtoken` query parameter name the session, as Outlook's
/// `.../AttachmentSessions('...')?authtoken=...` URLs do).
pub const UPLOAD_PATH_PREFIX: &str = "/upload/AttachmentSessions/";

/// Graph's limits, per app and mailbox unless said otherwise. Defaults are Graph's documented
/// values; tests may lower them.
#[derive(Debug, Clone)]
pub struct GraphLimits {
    /// Requests in flight at once (429 `ApplicationThrottled` beyond).
    pub max_concurrent: usize,
    /// Requests per [`Self::window`].
    pub requests_per_window: u64,
    /// Window of the request budget.
    pub window: Duration,
    /// Bytes uploaded (POST/PATCH/PUT bodies) per [`Self::upload_window`].
    pub upload_bytes_per_window: u64,
    /// Window of the upload budget.
    pub upload_window: Duration,
    /// Largest request body (413 beyond).
    pub max_request_bytes: usize,
    /// Largest attachment sent inline as `contentBytes` (400 beyond).
    pub max_inline_attachment: usize,
    /// Largest upload-session chunk.
    pub max_upload_chunk: usize,
    /// Chunks other than the last must be a multiple of this.
    pub upload_chunk_multiple: usize,
    /// Smallest attachment an upload session is for (Graph: 3 MB).
    pub min_upload_session: u64,
    /// Largest attachment an upload session is for (Graph: 150 MB).
    pub max_upload_session: u64,
    /// How long an upload URL stays valid.
    pub upload_session_lifetime: Duration,
    /// `Retry-After` seconds of a concurrency refusal.
    pub concurrency_retry_after: u64,
}

impl Default for GraphLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            requests_per_window: 10_000,
            window: Duration::from_secs(600),
            upload_bytes_per_window: 150 * 1024 * 1024,
            upload_window: Duration::from_secs(300),
            max_request_bytes: 4 * 1024 * 1024,
            max_inline_attachment: 3 * 1024 * 1024,
            max_upload_chunk: 4 * 1024 * 1024,
            upload_chunk_multiple: 320 * 1024,
            min_upload_session: 3 * 1024 * 1024,
            max_upload_session: 150 * 1024 * 1024,
            upload_session_lifetime: Duration::from_secs(6 * 3600),
            concurrency_retry_after: 1,
        }
    }
}

/// Accounting of one app+mailbox pair, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Requests in flight now.
    pub in_flight: usize,
    /// Most requests ever in flight at once.
    pub high_water: usize,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused with 429.
    pub throttled: u64,
}

#[derive(Debug)]
struct Lane {
    stats: LaneStats,
    window_start: Instant,
    window_count: u64,
    upload_start: Instant,
    upload_bytes: u64,
}

impl Lane {
    fn new(now: Instant) -> Self {
        Self {
            stats: LaneStats::default(),
            window_start: now,
            window_count: 0,
            upload_start: now,
            upload_bytes: 0,
        }
    }
}

/// An attachment upload in progress.
#[derive(Debug)]
struct UploadSession {
    secret: String,
    app_id: String,
    mailbox: String,
    item_id: String,
    name: String,
    content_type: String,
    is_inline: bool,
    content_id: Option<String>,
    size: u64,
    /// Bytes received so far (capacity reserved once: chunks are appended, never re-copied).
    received: Vec<u8>,
    expires: Instant,
    expires_at: OffsetDateTime,
}

/// The Graph face's state.
#[derive(Debug, Default)]
pub struct GraphState {
    lanes: Mutex<HashMap<(String, String), Lane>>,
    uploads: Mutex<HashMap<String, UploadSession>>,
}

impl GraphState {
    /// Accounting of `app_id` for `mailbox` (primary address).
    pub fn stats(&self, app_id: &str, mailbox: &str) -> LaneStats {
        self.lanes
            .lock()
            .ok()
            .and_then(|l| l.get(&lane_key(app_id, mailbox)).map(|l| l.stats))
            .unwrap_or_default()
    }

    /// Forgets all accounting and windows.
    pub fn reset(&self) {
        if let Ok(mut lanes) = self.lanes.lock() {
            lanes.clear();
        }
    }

    /// Admits a request or says why not.
    fn admit(
        self: &Arc<Self>,
        limits: &GraphLimits,
        app_id: &str,
        mailbox: &str,
        upload: u64,
    ) -> Result<InFlight, GraphError> {
        let key = lane_key(app_id, mailbox);
        let now = Instant::now();
        let mut lanes = self
            .lanes
            .lock()
            .map_err(|_| GraphError::internal("lane lock"))?;
        let lane = lanes.entry(key.clone()).or_insert_with(|| Lane::new(now));
        if now.duration_since(lane.window_start) >= limits.window {
            lane.window_start = now;
            lane.window_count = 0;
        }
        if now.duration_since(lane.upload_start) >= limits.upload_window {
            lane.upload_start = now;
            lane.upload_bytes = 0;
        }
        if lane.stats.in_flight >= limits.max_concurrent {
            lane.stats.throttled += 1;
            return Err(GraphError::throttled(
                "Application is over its MailboxConcurrency limit.",
                limits.concurrency_retry_after,
            ));
        }
        if lane.window_count >= limits.requests_per_window {
            lane.stats.throttled += 1;
            let left = limits
                .window
                .saturating_sub(now.duration_since(lane.window_start));
            return Err(GraphError::throttled(
                "Application is over its MailboxRequests limit.",
                left.as_secs().max(1),
            ));
        }
        if upload > 0 && lane.upload_bytes.saturating_add(upload) > limits.upload_bytes_per_window {
            lane.stats.throttled += 1;
            let left = limits
                .upload_window
                .saturating_sub(now.duration_since(lane.upload_start));
            return Err(GraphError::throttled(
                "Application is over its MailboxUpload limit.",
                left.as_secs().max(1),
            ));
        }
        lane.window_count += 1;
        lane.upload_bytes = lane.upload_bytes.saturating_add(upload);
        lane.stats.admitted += 1;
        lane.stats.in_flight += 1;
        lane.stats.high_water = lane.stats.high_water.max(lane.stats.in_flight);
        Ok(InFlight {
            state: Arc::clone(self),
            key,
        })
    }
}

fn lane_key(app_id: &str, mailbox: &str) -> (String, String) {
    (app_id.to_ascii_lowercase(), mailbox.to_ascii_lowercase())
}

/// A request counted as in flight until dropped (also when the client goes away mid-request).
struct InFlight {
    state: Arc<GraphState>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut lanes) = self.state.lanes.lock()
            && let Some(lane) = lanes.get_mut(&self.key)
        {
            lane.stats.in_flight = lane.stats.in_flight.saturating_sub(1);
        }
    }
}

/// A Graph error answer: `{"error":{"code","message","innerError":{...}}}`.
#[derive(Debug)]
pub struct GraphError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    www_authenticate: bool,
}

impl GraphError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: false,
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal(what: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UnknownError",
            format!("internal simulator error: {what}"),
        )
    }

    fn unauthenticated(message: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        );
        e.www_authenticate = true;
        e
    }

    fn throttled(message: &str, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    fn access_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    fn malformed_id() -> Self {
        Self::bad("ErrorInvalidIdMalformed", "Id is malformed.")
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    fn body_read(message: impl Into<String>) -> Self {
        Self::bad("RequestBodyRead", message)
    }

    fn into_response(self) -> Response<Body> {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": now_text(),
                    "request-id": uuid::Uuid::new_v4().to_string(),
                },
            }
        });
        let mut resp = respond(self.status, JSON_CT, body.to_string());
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.www_authenticate {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
                ),
            );
        }
        resp
    }
}

const JSON_CT: &str = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";

type GraphResult = Result<Response<Body>, GraphError>;

fn now_text() -> String {
    time_text(OffsetDateTime::now_utc())
}

fn time_text(t: OffsetDateTime) -> String {
    // Graph renders whole seconds with a `Z`.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, JSON_CT, value.to_string())
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(ews_http::http_util::empty());
    *resp.status_mut() = status;
    resp
}

/// Who is calling.
#[derive(Debug)]
struct Caller {
    tenant: Tenant,
    app: App,
    roles: Vec<String>,
}

impl Caller {
    fn has(&self, any_of: &[&str]) -> bool {
        self.roles.iter().any(|r| any_of.contains(&r.as_str()))
    }
}

fn authenticate(state: &SimState, headers: &HeaderMap) -> Result<Caller, GraphError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| GraphError::unauthenticated("Access token is empty."))?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| GraphError::unauthenticated("Access token is empty."))?;
    if state
        .revoked_tokens
        .lock()
        .map(|r| r.contains(token))
        .unwrap_or(false)
    {
        return Err(GraphError::unauthenticated(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    let claims = state
        .tokens
        .validate_for(token, now_unix(), &GRAPH_AUDIENCES)
        .map_err(|e| {
            use super::tokens::BearerError as B;
            GraphError::unauthenticated(match e {
                B::Malformed => "IDX14100: JWT is not well formed.",
                B::BadSignature => "Signing key is invalid.",
                B::WrongAudience { .. } => "Invalid audience.",
                B::Expired => "Lifetime validation failed, the token is expired.",
                B::NotYetValid => "Lifetime validation failed, the token is not yet valid.",
            })
        })?;
    let directory = state
        .directory
        .read()
        .map_err(|_| GraphError::internal("directory lock"))?;
    let tenant = directory
        .tenant(&claims.tid)
        .cloned()
        .ok_or_else(|| GraphError::unauthenticated("Invalid tenant."))?;
    let app = tenant
        .app(&claims.appid)
        .cloned()
        .ok_or_else(|| GraphError::unauthenticated("Invalid application."))?;
    Ok(Caller {
        tenant,
        app,
        roles: claims.roles,
    })
}

/// `/users/{x}`: UPN, primary SMTP, proxy address or object id, case-insensitive.
fn resolve_user<'a>(tenant: &'a Tenant, segment: &str) -> Option<&'a DirMailbox> {
    tenant.mailboxes.iter().find(|m| {
        m.upn().eq_ignore_ascii_case(segment)
            || m.smtp.eq_ignore_ascii_case(segment)
            || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(segment))
            || user_object_id(&m.smtp).eq_ignore_ascii_case(segment)
    })
}

/// Percent-decodes one path segment; `None` if it is not valid UTF-8 afterwards.
fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query options of a request, checked against what its route accepts.
#[derive(Debug, Default)]
struct Query {
    select: Option<Vec<String>>,
    top: Option<usize>,
    skip: usize,
}

fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<Query, GraphError> {
    let pairs: Vec<(String, String)> = match raw {
        Some(q) if !q.is_empty() => serde_urlencoded::from_str(q)
            .map_err(|_| GraphError::bad("BadRequest", "The query string is malformed."))?,
        _ => Vec::new(),
    };
    let mut query = Query::default();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(GraphError::bad(
                "BadRequest",
                format!(
                    "Query option '{name}' was specified more than once, but it must be specified at most once."
                ),
            ));
        }
        seen.push(lower.clone());
        if !allowed.contains(&lower.as_str()) {
            return Err(GraphError::bad(
                "BadRequest",
                format!("The query parameter '{name}' is not supported."),
            ));
        }
        match lower.as_str() {
            "$select" => {
                let fields: Vec<String> = value
                    .split(',')
                    .map(|f| f.trim().to_owned())
                    .filter(|f| !f.is_empty())
                    .collect();
                if fields.is_empty() {
                    return Err(GraphError::bad("BadRequest", "$select is empty."));
                }
                query.select = Some(fields);
            }
            "$top" => {
                let n: usize = value.parse().map_err(|_| {
                    GraphError::bad("BadRequest", format!("Invalid value '{value}' for $top."))
                })?;
                if !(1..=1000).contains(&n) {
                    return Err(GraphError::bad(
                        "ErrorInvalidArgument",
                        "The value of $top must be between 1 and 1000.",
                    ));
                }
                query.top = Some(n);
            }
            "$skip" => {
                query.skip = value.parse().map_err(|_| {
                    GraphError::bad("BadRequest", format!("Invalid value '{value}' for $skip."))
                })?;
            }
            "includehiddenfolders" if value != "true" && value != "false" => {
                return Err(GraphError::bad(
                    "BadRequest",
                    "includeHiddenFolders must be true or false.",
                ));
            }
            _ => {}
        }
    }
    Ok(query)
}

/// Well-known folder names of Graph that the store's distinguished folders carry.
const WELL_KNOWN: &[&str] = &[
    "inbox",
    "drafts",
    "sentitems",
    "deleteditems",
    "junkemail",
    "outbox",
    "msgfolderroot",
    "archive",
    "conversationhistory",
    "searchfolders",
    "clutter",
    "conflicts",
    "localfailures",
    "serverfailures",
    "syncissues",
    "recoverableitemsdeletions",
    "scheduled",
];

/// Mail permissions that allow reading.
const READ: &[&str] = &["Mail.Read", "Mail.ReadWrite"];
/// Mail permissions that allow folder metadata.
const READ_BASIC: &[&str] = &[
    "Mail.ReadBasic",
    "Mail.ReadBasic.All",
    "Mail.Read",
    "Mail.ReadWrite",
];
/// Mail permission that allows writing.
const WRITE: &[&str] = &["Mail.ReadWrite"];
/// Mail permission that allows sending.
const SEND: &[&str] = &["Mail.Send"];

/// Handles a request under `/v1.0/`.
pub async fn handle(state: &Arc<SimState>, req: SimRequest, seq: u64) -> Response<Body> {
    let resp = match handle_inner(state, &req, seq).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    finish(&req.headers, resp)
}

fn finish(request: &HeaderMap, mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    if let Some(id) = request.get("client-request-id") {
        h.insert("client-request-id", id.clone());
    }
    resp
}

async fn handle_inner(state: &Arc<SimState>, req: &SimRequest, seq: u64) -> GraphResult {
    let limits = &state.config.graph;
    if req.body.len() > limits.max_request_bytes {
        // Graph's front door refuses before anything else looks at the request.
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The maximum request length supported is 4MB.",
        ));
    }
    let caller = authenticate(state, &req.headers)?;
    let raw: Vec<&str> = req.path.trim_start_matches("/v1.0/").split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    for s in raw {
        segs.push(
            decode_segment(s)
                .ok_or_else(|| GraphError::bad("BadRequest", "The URL is malformed."))?,
        );
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.first().copied() {
        Some("users") => {}
        Some("me") => {
            return Err(GraphError::bad(
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            ));
        }
        other => {
            return Err(GraphError::bad(
                "BadRequest",
                format!(
                    "Resource not found for the segment '{}'.",
                    other.unwrap_or_default()
                ),
            ));
        }
    }
    let Some(user) = segs.get(1).copied().filter(|u| !u.is_empty()) else {
        return Err(GraphError::bad(
            "BadRequest",
            "Listing users is not simulated.",
        ));
    };
    let route = Route::parse(&req.method, &segs[2..])?;
    let Some(mailbox) = resolve_user(&caller.tenant, user).cloned() else {
        return Err(if matches!(route, Route::User) {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "Request_ResourceNotFound",
                format!(
                    "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
                ),
            )
        } else {
            GraphError::new(
                StatusCode::NOT_FOUND,
                "ErrorInvalidUser",
                format!("The requested user '{user}' is invalid."),
            )
        });
    };
    let smtp = mailbox.smtp.to_ascii_lowercase();
    state.log.annotate(seq, &smtp, &caller.app.client_id);
    let query = parse_query(req.query.as_deref(), route.query_options())?;
    let upload = match req.method {
        Method::POST | Method::PATCH | Method::PUT => req.body.len() as u64,
        _ => 0,
    };
    let _slot = state_admit(state, &caller.app.client_id, &smtp, upload)?;
    let latency = state.faults().graph_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if !caller.has(route.permissions()) {
        return Err(if matches!(route, Route::User) {
            GraphError::new(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        } else {
            GraphError::access_denied()
        });
    }
    let ctx = Ctx {
        state,
        caller: &caller,
        mailbox: &mailbox,
        smtp: &smtp,
        query: &query,
        req,
        base: format!("{}/v1.0/users/{}", state.base_url, user),
    };
    ctx.run(route)
}

fn state_admit(
    state: &Arc<SimState>,
    app_id: &str,
    mailbox: &str,
    upload: u64,
) -> Result<InFlight, GraphError> {
    state
        .graph
        .admit(&state.config.graph, app_id, mailbox, upload)
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    User,
    Folders,
    Folder(&'a str),
    ChildFolders(&'a str),
    FolderMessages(&'a str),
    CreateInFolder(&'a str),
    Messages,
    CreateDraft,
    SendMail,
    GetMessage(&'a str),
    PatchMessage(&'a str),
    DeleteMessage(&'a str),
    MessageValue(&'a str),
    Send(&'a str),
    Move(&'a str),
    Copy(&'a str),
    Attachments(&'a str),
    AddAttachment(&'a str),
    GetAttachment(&'a str, &'a str),
    DeleteAttachment(&'a str, &'a str),
    AttachmentValue(&'a str, &'a str),
    CreateUploadSession(&'a str),
}

impl<'a> Route<'a> {
    fn parse(method: &Method, rest: &[&'a str]) -> Result<Self, GraphError> {
        use Method as M;
        let not_allowed = || {
            GraphError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                format!("The HTTP method '{method}' is not allowed for this resource."),
            )
        };
        let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let route = match (l.as_slice(), rest) {
            ([], _) => match *method {
                M::GET => Self::User,
                _ => return Err(not_allowed()),
            },
            (["sendmail"], _) => match *method {
                M::POST => Self::SendMail,
                _ => return Err(not_allowed()),
            },
            (["mailfolders"], _) => match *method {
                M::GET => Self::Folders,
                _ => return Err(not_allowed()),
            },
            (["mailfolders", _], [_, f]) => match *method {
                M::GET => Self::Folder(f),
                _ => return Err(not_allowed()),
            },
            (["mailfolders", _, "childfolders"], [_, f, _]) => match *method {
                M::GET => Self::ChildFolders(f),
                _ => return Err(not_allowed()),
            },
            (["mailfolders", _, "messages"], [_, f, _]) => match *method {
                M::GET => Self::FolderMessages(f),
                M::POST => Self::CreateInFolder(f),
                _ => return Err(not_allowed()),
            },
            (["messages"], _) => match *method {
                M::GET => Self::Messages,
                M::POST => Self::CreateDraft,
                _ => return Err(not_allowed()),
            },
            (["messages", _], [_, id]) => match *method {
                M::GET => Self::GetMessage(id),
                M::PATCH => Self::PatchMessage(id),
                M::DELETE => Self::DeleteMessage(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "$value"], [_, id, _]) => match *method {
                M::GET => Self::MessageValue(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "send"], [_, id, _]) => match *method {
                M::POST => Self::Send(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "move"], [_, id, _]) => match *method {
                M::POST => Self::Move(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "copy"], [_, id, _]) => match *method {
                M::POST => Self::Copy(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "attachments"], [_, id, _]) => match *method {
                M::GET => Self::Attachments(id),
                M::POST => Self::AddAttachment(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "attachments", "createuploadsession"], [_, id, _, _]) => match *method
            {
                M::POST => Self::CreateUploadSession(id),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "attachments", _], [_, id, _, aid]) => match *method {
                M::GET => Self::GetAttachment(id, aid),
                M::DELETE => Self::DeleteAttachment(id, aid),
                _ => return Err(not_allowed()),
            },
            (["messages", _, "attachments", _, "$value"], [_, id, _, aid, _]) => match *method {
                M::GET => Self::AttachmentValue(id, aid),
                _ => return Err(not_allowed()),
            },
            _ => {
                return Err(GraphError::bad(
                    "BadRequest",
                    format!(
                        "Resource not found for the segment '{}'.",
                        rest.last().copied().unwrap_or_default()
                    ),
                ));
            }
        };
        Ok(route)
    }

    fn permissions(&self) -> &'static [&'static str] {
        match self {
            Self::User => &["User.Read.All", "User.ReadBasic.All", "Directory.Read.All"],
            Self::Folders | Self::Folder(_) | Self::ChildFolders(_) => READ_BASIC,
            Self::FolderMessages(_)
            | Self::Messages
            | Self::GetMessage(_)
            | Self::MessageValue(_)
            | Self::Attachments(_)
            | Self::GetAttachment(..)
            | Self::AttachmentValue(..) => READ,
            Self::SendMail | Self::Send(_) => SEND,
            Self::CreateInFolder(_)
            | Self::CreateDraft
            | Self::PatchMessage(_)
            | Self::DeleteMessage(_)
            | Self::Move(_)
            | Self::Copy(_)
            | Self::AddAttachment(_)
            | Self::DeleteAttachment(..)
            | Self::CreateUploadSession(_) => WRITE,
        }
    }

    fn query_options(&self) -> &'static [&'static str] {
        match self {
            Self::User | Self::Folder(_) | Self::GetMessage(_) | Self::GetAttachment(..) => {
                &["$select"]
            }
            Self::Folders | Self::ChildFolders(_) => {
                &["$select", "$top", "$skip", "includehiddenfolders"]
            }
            Self::FolderMessages(_) | Self::Messages => &["$select", "$top", "$skip"],
            Self::Attachments(_) => &["$select"],
            _ => &[],
        }
    }
}

/// One request being served.
struct Ctx<'a> {
    state: &'a Arc<SimState>,
    caller: &'a Caller,
    mailbox: &'a DirMailbox,
    smtp: &'a str,
    query: &'a Query,
    req: &'a SimRequest,
    /// `{graph}/v1.0/users/{segment as sent}`, for links.
    base: String,
}

/// An object an id names: (owner mailbox, EwsId).
type Located = (String, String);

impl Ctx<'_> {
    fn run(&self, route: Route<'_>) -> GraphResult {
        match route {
            Route::User => self.user(),
            Route::Folders => self.list_folders(None),
            Route::Folder(f) => self.folder(f),
            Route::ChildFolders(f) => self.list_folders(Some(f)),
            Route::FolderMessages(f) => self.list_messages(Some(f)),
            Route::Messages => self.list_messages(None),
            Route::CreateInFolder(f) => self.create_draft(Some(f)),
            Route::CreateDraft => self.create_draft(None),
            Route::SendMail => self.send_mail(),
            Route::GetMessage(id) => self.get_message(id),
            Route::PatchMessage(id) => self.patch_message(id),
            Route::DeleteMessage(id) => self.delete_message(id),
            Route::MessageValue(id) => self.message_value(id),
            Route::Send(id) => self.send_draft(id),
            Route::Move(id) => self.move_or_copy(id, false),
            Route::Copy(id) => self.move_or_copy(id, true),
            Route::Attachments(id) => self.list_attachments(id),
            Route::AddAttachment(id) => self.add_attachment(id),
            Route::GetAttachment(id, aid) => self.get_attachment(id, aid, false),
            Route::AttachmentValue(id, aid) => self.get_attachment(id, aid, true),
            Route::DeleteAttachment(id, aid) => self.delete_attachment(id, aid),
            Route::CreateUploadSession(id) => self.create_upload_session(id),
        }
    }

    fn context(&self, what: &str) -> String {
        format!(
            "{}/v1.0/$metadata#users('{}')/{what}",
            self.state.base_url, self.smtp
        )
    }

    fn user(&self) -> GraphResult {
        let m = self.mailbox;
        let full = json!({
            "@odata.context": format!("{}/v1.0/$metadata#users/$entity", self.state.base_url),
            "id": user_object_id(&m.smtp),
            "displayName": m.display_name,
            "mail": m.smtp,
            "userPrincipalName": m.upn(),
            "businessPhones": [],
            "givenName": Value::Null,
            "surname": Value::Null,
            "jobTitle": Value::Null,
            "mobilePhone": Value::Null,
            "officeLocation": Value::Null,
            "preferredLanguage": Value::Null,
        });
        Ok(json_response(
            StatusCode::OK,
            &select(full, self.query.select.as_deref(), "microsoft.graph.user")?,
        ))
    }

    /// Resolves a folder reference (well-known name or Graph id) to (owner, folder EwsId).
    fn locate_folder(&self, data: &mut Data, key: &str) -> Result<Located, GraphError> {
        data.ensure_mailbox(self.smtp, &self.mailbox.display_name);
        if WELL_KNOWN.iter().any(|w| w.eq_ignore_ascii_case(key)) {
            return data
                .mailbox_ref(self.smtp)
                .and_then(|m| m.distinguished(key))
                .map(|id| (self.smtp.to_owned(), id.to_owned()))
                .ok_or_else(|| {
                    GraphError::new(
                        StatusCode::NOT_FOUND,
                        "ErrorFolderNotFound",
                        "The specified folder could not be found in the store.",
                    )
                });
        }
        locate(data, key, IdKind::Folder, |m, id| m.folder(id).is_some())
    }

    fn locate_item(&self, data: &Data, key: &str) -> Result<Located, GraphError> {
        locate(data, key, IdKind::Item, |m, id| m.item(id).is_some())
    }

    fn folder(&self, key: &str) -> GraphResult {
        let value = self.state.mailboxes.with(|data| {
            let (owner, id) = self.locate_folder(data, key)?;
            folder_json(data, &owner, &id).ok_or_else(GraphError::not_found)
        })?;
        let mut value = select(
            value,
            self.query.select.as_deref(),
            "microsoft.graph.mailFolder",
        )?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "@odata.context".into(),
                Value::String(self.context("mailFolders/$entity")),
            );
        }
        Ok(json_response(StatusCode::OK, &value))
    }

    fn list_folders(&self, parent: Option<&str>) -> GraphResult {
        let all = self.state.mailboxes.with(|data| {
            let (owner, id) = self.locate_folder(data, parent.unwrap_or("msgfolderroot"))?;
            let mbx = data.mailbox_ref(&owner).ok_or_else(GraphError::not_found)?;
            Ok::<_, GraphError>(
                mbx.children(&id)
                    .filter(|f| is_mail_folder(f))
                    .filter_map(|f| folder_json(data, &owner, &f.id))
                    .collect::<Vec<_>>(),
            )
        })?;
        let what = match parent {
            Some(p) => format!("mailFolders('{p}')/childFolders"),
            None => "mailFolders".to_owned(),
        };
        self.page(all, &what, "microsoft.graph.mailFolder")
    }

    /// A page of `all` per `$top`/`$skip`, with `@odata.nextLink` when more follow.
    fn page(&self, all: Vec<Value>, what: &str, type_name: &str) -> GraphResult {
        let top = self.query.top.unwrap_or(10);
        let skip = self.query.skip;
        let total = all.len();
        let mut value = Vec::new();
        for v in all.into_iter().skip(skip).take(top) {
            value.push(select(v, self.query.select.as_deref(), type_name)?);
        }
        let mut body = Map::new();
        body.insert("@odata.context".into(), Value::String(self.context(what)));
        body.insert("value".into(), Value::Array(value));
        if skip + top < total {
            let mut link = format!(
                "{}{}?%24top={top}&%24skip={}",
                self.base,
                self.req
                    .path
                    .split_once(self.mailbox_segment())
                    .map_or("", |(_, r)| r),
                skip + top
            );
            if let Some(sel) = &self.query.select {
                link.push_str("&%24select=");
                link.push_str(&sel.join(","));
            }
            body.insert("@odata.nextLink".into(), Value::String(link));
        }
        Ok(json_response(StatusCode::OK, &Value::Object(body)))
    }

    /// The user segment exactly as the request path carried it.
    fn mailbox_segment(&self) -> &str {
        self.req
            .path
            .trim_start_matches("/v1.0/users/")
            .split('/')
            .next()
            .unwrap_or_default()
    }

    fn list_messages(&self, folder: Option<&str>) -> GraphResult {
        let all = self.state.mailboxes.with(|data| {
            let (owner, fid) = match folder {
                Some(f) => {
                    let (o, id) = self.locate_folder(data, f)?;
                    (o, Some(id))
                }
                None => {
                    data.ensure_mailbox(self.smtp, &self.mailbox.display_name);
                    (self.smtp.to_owned(), None)
                }
            };
            let mbx = data.mailbox_ref(&owner).ok_or_else(GraphError::not_found)?;
            let mut items: Vec<&Item> = mbx
                .items
                .iter()
                .filter(|i| fid.as_ref().is_none_or(|f| &i.folder == f))
                .filter(|i| {
                    // `/messages` spans the mail folders, not calendar or contacts.
                    mbx.folder(&i.folder).is_some_and(is_mail_folder)
                })
                .collect();
            // Graph's default order: newest first.
            items.sort_by_key(|i| std::cmp::Reverse(i.msg.received));
            Ok::<_, GraphError>(items.into_iter().map(message_json).collect::<Vec<_>>())
        })?;
        let what = match folder {
            Some(f) => format!("mailFolders('{f}')/messages"),
            None => "messages".to_owned(),
        };
        self.page(all, &what, "microsoft.graph.message")
    }

    fn get_message(&self, id: &str) -> GraphResult {
        let value = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            data.mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .map(message_json)
                .ok_or_else(GraphError::not_found)
        })?;
        let mut value = select(
            value,
            self.query.select.as_deref(),
            "microsoft.graph.message",
        )?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "@odata.context".into(),
                Value::String(self.context("messages/$entity")),
            );
        }
        Ok(json_response(StatusCode::OK, &value))
    }

    fn message_value(&self, id: &str) -> GraphResult {
        let mime = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            data.mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .map(|i| mime::render(&i.msg))
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(respond(StatusCode::OK, "text/plain", mime))
    }

    /// The body as a message: JSON (`application/json`) or base64 MIME (`text/plain`).
    fn message_from_body(&self, allow_attachments: bool) -> Result<Message, GraphError> {
        let mut msg = Message::new(OffsetDateTime::now_utc());
        match body_kind(&self.req.headers)? {
            BodyKind::Mime => {
                let raw = decode_mime(&self.req.body)?;
                apply_mime(&mut msg, raw);
            }
            BodyKind::Json => {
                let obj = json_object(&self.req.body)?;
                apply_message_json(&mut msg, &obj, allow_attachments, &self.state.config.graph)?;
            }
        }
        Ok(msg)
    }

    fn create_draft(&self, folder: Option<&str>) -> GraphResult {
        let mut msg = self.message_from_body(true)?;
        msg.is_draft = true;
        msg.is_read = true;
        if msg.from.is_none() {
            msg.from = Some(self.own_address());
        }
        msg.sender = msg.from.clone();
        let value = self.state.mailboxes.with(|data| {
            let (owner, fid) = self.locate_folder(data, folder.unwrap_or("drafts"))?;
            let (id, _) = data.insert_item(&owner, &fid, msg, false);
            data.mailbox_ref(&owner)
                .and_then(|m| m.item(&id))
                .map(message_json)
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(json_response(StatusCode::CREATED, &value))
    }

    fn own_address(&self) -> Address {
        Address {
            name: self.mailbox.display_name.clone(),
            email: self.mailbox.smtp.clone(),
        }
    }

    fn send_mail(&self) -> GraphResult {
        let (mut msg, save) = match body_kind(&self.req.headers)? {
            BodyKind::Mime => {
                let raw = decode_mime(&self.req.body)?;
                let mut msg = Message::new(OffsetDateTime::now_utc());
                apply_mime(&mut msg, raw);
                (msg, true)
            }
            BodyKind::Json => {
                let obj = json_object(&self.req.body)?;
                for key in obj.keys() {
                    if key != "message" && key != "saveToSentItems" {
                        return Err(unknown_property(key, "sendMail"));
                    }
                }
                let message = obj
                    .get("message")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        GraphError::bad(
                            "ErrorInvalidParameter",
                            "The value of the parameter 'Message' is empty.",
                        )
                    })?;
                let save = match obj.get("saveToSentItems") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
                    Some(_) => {
                        return Err(GraphError::body_read(
                            "Cannot convert the literal to the expected type 'Edm.Boolean'.",
                        ));
                    }
                };
                let mut msg = Message::new(OffsetDateTime::now_utc());
                apply_message_json(&mut msg, message, true, &self.state.config.graph)?;
                (msg, save)
            }
        };
        self.prepare_send(&mut msg)?;
        self.state.mailboxes.with(|data| {
            deliver(data, &self.caller.tenant, &msg);
            if save {
                data.ensure_mailbox(self.smtp, &self.mailbox.display_name);
                if let Some(sent) = data
                    .mailbox_ref(self.smtp)
                    .and_then(|m| m.distinguished("sentitems"))
                    .map(str::to_owned)
                {
                    let mut copy = msg;
                    copy.is_read = true;
                    data.insert_item(self.smtp, &sent, copy, false);
                }
            }
        });
        Ok(empty(StatusCode::ACCEPTED))
    }

    /// Fills what a submission sets; refuses a `from` the mailbox may not send as.
    fn prepare_send(&self, msg: &mut Message) -> Result<(), GraphError> {
        match &msg.from {
            None => msg.from = Some(self.own_address()),
            Some(from) => {
                let allowed = from.email.eq_ignore_ascii_case(&self.mailbox.smtp)
                    || resolve_user(&self.caller.tenant, &from.email)
                        .is_some_and(|m| m.grants_access_to(&self.mailbox.smtp));
                if !allowed {
                    return Err(GraphError::new(
                        StatusCode::FORBIDDEN,
                        "ErrorSendAsDenied",
                        "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
                    ));
                }
            }
        }
        if msg.to.is_empty() && msg.cc.is_empty() && msg.bcc.is_empty() {
            return Err(GraphError::bad(
                "ErrorInvalidRecipients",
                "At least one recipient is required, but none were found.",
            ));
        }
        let now = OffsetDateTime::now_utc();
        msg.sender = msg.from.clone();
        msg.sent = Some(now);
        msg.received = now;
        msg.is_draft = false;
        if msg.internet_message_id.is_empty() {
            let domain = self
                .mailbox
                .smtp
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            msg.internet_message_id = format!("<{}@{domain}>", uuid::Uuid::new_v4().simple());
        }
        Ok(())
    }

    fn send_draft(&self, id: &str) -> GraphResult {
        if !self.req.body.is_empty() {
            return Err(GraphError::bad(
                "BadRequest",
                "The send action takes no request body.",
            ));
        }
        self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let item = data
                .mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .ok_or_else(GraphError::not_found)?;
            if !item.msg.is_draft {
                return Err(GraphError::bad(
                    "ErrorInvalidOperation",
                    "Only draft messages can be sent.",
                ));
            }
            let mut msg = item.msg.clone();
            self.prepare_send(&mut msg)?;
            deliver(data, &self.caller.tenant, &msg);
            // `/send` always files the message in Sent Items (of the mailbox holding it).
            let sent = data
                .mailbox_ref(&owner)
                .and_then(|m| m.distinguished("sentitems"))
                .map(str::to_owned)
                .ok_or_else(GraphError::not_found)?;
            msg.is_read = true;
            let (new_id, _) = data
                .move_item(&owner, &eid, &sent)
                .ok_or_else(GraphError::not_found)?;
            data.update_item(&owner, &new_id, |m| *m = msg);
            Ok(())
        })?;
        Ok(empty(StatusCode::ACCEPTED))
    }

    fn patch_message(&self, id: &str) -> GraphResult {
        if body_kind(&self.req.headers)? != BodyKind::Json {
            return Err(unsupported_media());
        }
        let obj = json_object(&self.req.body)?;
        // Validate on a scratch copy first, so a bad request changes nothing.
        let limits = self.state.config.graph.clone();
        let value = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let mut msg = data
                .mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .ok_or_else(GraphError::not_found)?
                .msg
                .clone();
            let draft = msg.is_draft;
            apply_message_json(&mut msg, &obj, false, &limits)?;
            msg.is_draft = draft;
            let (new_id, _) = data
                .update_item(&owner, &eid, |m| *m = msg)
                .ok_or_else(GraphError::not_found)?;
            data.mailbox_ref(&owner)
                .and_then(|m| m.item(&new_id))
                .map(message_json)
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(json_response(StatusCode::OK, &value))
    }

    fn delete_message(&self, id: &str) -> GraphResult {
        self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            data.remove_item(&owner, &eid)
                .map(|_| ())
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(empty(StatusCode::NO_CONTENT))
    }

    fn move_or_copy(&self, id: &str, copy: bool) -> GraphResult {
        if body_kind(&self.req.headers)? != BodyKind::Json {
            return Err(unsupported_media());
        }
        let obj = json_object(&self.req.body)?;
        for key in obj.keys() {
            if key != "destinationId" {
                return Err(unknown_property(key, "move"));
            }
        }
        let dest = obj
            .get("destinationId")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                GraphError::bad(
                    "ErrorInvalidParameter",
                    "The value of the parameter 'DestinationId' is empty.",
                )
            })?;
        let value = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let (dest_owner, fid) = self.locate_folder(data, dest)?;
            let msg = data
                .mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .ok_or_else(GraphError::not_found)?
                .msg
                .clone();
            let new_id = if copy || dest_owner != owner {
                let (new_id, _) = data.insert_item(&dest_owner, &fid, msg, false);
                if !copy {
                    data.remove_item(&owner, &eid);
                }
                new_id
            } else {
                data.move_item(&owner, &eid, &fid)
                    .ok_or_else(GraphError::not_found)?
                    .0
            };
            data.mailbox_ref(&dest_owner)
                .and_then(|m| m.item(&new_id))
                .map(message_json)
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(json_response(StatusCode::CREATED, &value))
    }

    fn list_attachments(&self, id: &str) -> GraphResult {
        let all = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            data.mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .map(|i| {
                    i.msg
                        .attachments
                        .iter()
                        .map(|a| attachment_json(a, true))
                        .collect::<Vec<_>>()
                })
                .ok_or_else(GraphError::not_found)
        })?;
        let mut value = Vec::with_capacity(all.len());
        for v in all {
            value.push(select(
                v,
                self.query.select.as_deref(),
                "microsoft.graph.attachment",
            )?);
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "@odata.context": self.context(&format!("messages('{id}')/attachments")),
                "value": value,
            }),
        ))
    }

    fn get_attachment(&self, id: &str, aid: &str, raw: bool) -> GraphResult {
        let out = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let (_, aeid) = attachment_key(aid)?;
            let item = data
                .mailbox_ref(&owner)
                .and_then(|m| m.item(&eid))
                .ok_or_else(GraphError::not_found)?;
            let att = item
                .msg
                .attachments
                .iter()
                .find(|a| a.id == aeid)
                .ok_or_else(GraphError::not_found)?;
            Ok::<_, GraphError>(if raw {
                Err((att.content_type.clone(), att.content.clone()))
            } else {
                Ok(attachment_json(att, true))
            })
        })?;
        match out {
            Ok(value) => {
                let mut value = select(
                    value,
                    self.query.select.as_deref(),
                    "microsoft.graph.attachment",
                )?;
                if let Some(obj) = value.as_object_mut() {
                    obj.insert(
                        "@odata.context".into(),
                        Value::String(
                            self.context(&format!("messages('{id}')/attachments/$entity")),
                        ),
                    );
                }
                Ok(json_response(StatusCode::OK, &value))
            }
            Err((ct, bytes)) => Ok(respond(StatusCode::OK, &ct, bytes)),
        }
    }

    fn delete_attachment(&self, id: &str, aid: &str) -> GraphResult {
        self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let (_, aeid) = attachment_key(aid)?;
            let holder = data
                .mailbox_ref(&owner)
                .and_then(|m| m.attachment(&aeid))
                .map(|(i, _)| i.id.clone())
                .ok_or_else(GraphError::not_found)?;
            if holder != eid {
                return Err(GraphError::not_found());
            }
            data.remove_attachment(&owner, &aeid)
                .map(|_| ())
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(empty(StatusCode::NO_CONTENT))
    }

    fn add_attachment(&self, id: &str) -> GraphResult {
        if body_kind(&self.req.headers)? != BodyKind::Json {
            return Err(unsupported_media());
        }
        let obj = json_object(&self.req.body)?;
        let att = parse_file_attachment(&obj, &self.state.config.graph)?;
        let value = self.state.mailboxes.with(|data| {
            let (owner, eid) = self.locate_item(data, id)?;
            let (aid, _) = data
                .add_attachment(&owner, &eid, att)
                .ok_or_else(GraphError::not_found)?;
            data.mailbox_ref(&owner)
                .and_then(|m| m.attachment(&aid))
                .map(|(_, a)| attachment_json(a, true))
                .ok_or_else(GraphError::not_found)
        })?;
        Ok(json_response(StatusCode::CREATED, &value))
    }

    fn create_upload_session(&self, id: &str) -> GraphResult {
        if body_kind(&self.req.headers)? != BodyKind::Json {
            return Err(unsupported_media());
        }
        let obj = json_object(&self.req.body)?;
        for key in obj.keys() {
            if key != "AttachmentItem" {
                return Err(unknown_property(key, "createUploadSession"));
            }
        }
        let item = obj
            .get("AttachmentItem")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                GraphError::bad(
                    "ErrorInvalidParameter",
                    "The value of the parameter 'AttachmentItem' is empty.",
                )
            })?;
        for key in item.keys() {
            if ![
                "attachmentType",
                "name",
                "size",
                "contentType",
                "isInline",
                "contentId",
            ]
            .contains(&key.as_str())
            {
                return Err(unknown_property(key, "attachmentItem"));
            }
        }
        if item.get("attachmentType").and_then(Value::as_str) != Some("file") {
            return Err(GraphError::bad(
                "ErrorInvalidParameter",
                "attachmentType must be 'file'.",
            ));
        }
        let name = required_str(item, "name")?;
        let size = item
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| GraphError::bad("ErrorInvalidParameter", "size is required."))?;
        let limits = &self.state.config.graph;
        if size < limits.min_upload_session {
            return Err(GraphError::bad(
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            ));
        }
        if size > limits.max_upload_session {
            return Err(GraphError::bad(
                "ErrorAttachmentSizeLimitExceeded",
                "The attachment exceeds the maximum supported size.",
            ));
        }
        let content_type = optional_str(item, "contentType")?
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let is_inline = optional_bool(item, "isInline")?.unwrap_or(false);
        let content_id = optional_str(item, "contentId")?;
        let (owner, eid) = self
            .state
            .mailboxes
            .with(|data| self.locate_item(data, id))?;
        let capacity = usize::try_from(size).map_err(|_| GraphError::internal("size"))?;
        let session_id = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
        let secret = URL_SAFE_NO_PAD.encode(
            [
                uuid::Uuid::new_v4().as_bytes().as_slice(),
                uuid::Uuid::new_v4().as_bytes().as_slice(),
            ]
            .concat(),
        );
        let expires_at = OffsetDateTime::now_utc() + limits.upload_session_lifetime;
        let session = UploadSession {
            secret: secret.clone(),
            app_id: self.caller.app.client_id.clone(),
            mailbox: owner,
            item_id: eid,
            name,
            content_type,
            is_inline,
            content_id,
            size,
            received: Vec::with_capacity(capacity),
            expires: Instant::now() + limits.upload_session_lifetime,
            expires_at,
        };
        self.state
            .graph
            .uploads
            .lock()
            .map_err(|_| GraphError::internal("upload lock"))?
            .insert(session_id.clone(), session);
        let url = format!(
            "{}{UPLOAD_PATH_PREFIX}{session_id}?authtoken={secret}",
            self.state.base_url
        );
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "@odata.context": format!("{}/v1.0/$metadata#microsoft.graph.uploadSession", self.state.base_url),
                "uploadUrl": url,
                "expirationDateTime": time_text(expires_at),
                "nextExpectedRanges": ["0-"],
            }),
        ))
    }
}

/// Finds the object a Graph id names; permissive across mailboxes (see the module docs).
fn locate(
    data: &Data,
    key: &str,
    kind: IdKind,
    exists: impl Fn(&super::mailbox::MailboxData, &str) -> bool,
) -> Result<Located, GraphError> {
    let (ews, decoded) = from_graph_id(key).ok_or_else(GraphError::malformed_id)?;
    if decoded.kind != kind {
        return Err(GraphError::malformed_id());
    }
    let mbx = data
        .mailbox_by_guid(&decoded.guid)
        .ok_or_else(GraphError::not_found)?;
    if !exists(mbx, &ews) {
        return Err(GraphError::not_found());
    }
    Ok((mbx.smtp.clone(), ews))
}

fn attachment_key(aid: &str) -> Result<Located, GraphError> {
    let (ews, decoded) = from_graph_id(aid).ok_or_else(GraphError::malformed_id)?;
    if decoded.kind != IdKind::Attachment {
        return Err(GraphError::malformed_id());
    }
    Ok((decoded.guid, ews))
}

/// Folders Graph lists as mail folders (calendar, contacts, tasks are other resources).
fn is_mail_folder(f: &super::mailbox::Folder) -> bool {
    f.kind == super::mailbox::FolderKind::Generic
        && f.class.as_deref().is_none_or(|c| c.starts_with("IPF.Note"))
}

fn folder_json(data: &Data, owner: &str, id: &str) -> Option<Value> {
    let mbx = data.mailbox_ref(owner)?;
    let f = mbx.folder(id)?;
    let items: Vec<&Item> = mbx.items_in(id).collect();
    Some(json!({
        "id": to_graph_id(&f.id),
        "displayName": f.display_name,
        "parentFolderId": f.parent.as_deref().map(to_graph_id),
        "childFolderCount": mbx.children(id).filter(|c| is_mail_folder(c)).count(),
        "unreadItemCount": items.iter().filter(|i| !i.msg.is_read).count(),
        "totalItemCount": items.len(),
        "sizeInBytes": items.iter().map(|i| i.msg.body.len() + i.msg.attachments.iter().map(|a| a.content.len()).sum::<usize>()).sum::<usize>(),
        "isHidden": false,
    }))
}

fn recipient(a: &Address) -> Value {
    json!({"emailAddress": {"name": a.name, "address": a.email}})
}

fn message_json(item: &Item) -> Value {
    let m = &item.msg;
    let ck = item.change_key();
    let preview: String = match m.body_type {
        BodyType::Text => m.body.chars().take(255).collect(),
        BodyType::Html => strip_tags(&m.body).chars().take(255).collect(),
    };
    json!({
        "@odata.etag": format!("W/\"{ck}\""),
        "id": to_graph_id(&item.id),
        "createdDateTime": time_text(item.created),
        "lastModifiedDateTime": time_text(item.modified),
        "changeKey": ck,
        "categories": m.categories,
        "receivedDateTime": time_text(m.received),
        "sentDateTime": m.sent.map(time_text),
        "hasAttachments": m.attachments.iter().any(|a| !a.is_inline),
        "internetMessageId": m.internet_message_id,
        "subject": m.subject,
        "bodyPreview": preview,
        "importance": m.importance.to_ascii_lowercase(),
        "parentFolderId": to_graph_id(&item.folder),
        "conversationId": m.conversation_id(),
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": false,
        "isRead": m.is_read,
        "isDraft": m.is_draft,
        "inferenceClassification": "focused",
        "body": {
            "contentType": match m.body_type { BodyType::Text => "text", BodyType::Html => "html" },
            "content": m.body,
        },
        "sender": m.sender.as_ref().map(recipient),
        "from": m.from.as_ref().map(recipient),
        "toRecipients": m.to.iter().map(recipient).collect::<Vec<_>>(),
        "ccRecipients": m.cc.iter().map(recipient).collect::<Vec<_>>(),
        "bccRecipients": m.bcc.iter().map(recipient).collect::<Vec<_>>(),
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
    })
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn attachment_json(a: &Attachment, with_content: bool) -> Value {
    let mut v = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": to_graph_id(&a.id),
        "lastModifiedDateTime": time_text(a.modified),
        "name": a.name,
        "contentType": a.content_type,
        "size": a.content.len(),
        "isInline": a.is_inline,
        "contentId": a.content_id,
        "contentLocation": Value::Null,
    });
    if with_content && let Some(obj) = v.as_object_mut() {
        obj.insert(
            "contentBytes".into(),
            Value::String(STANDARD.encode(&a.content)),
        );
    }
    v
}

/// Applies `$select` (ids and etags always stay); an unknown property is a 400 as in Graph.
fn select(value: Value, fields: Option<&[String]>, type_name: &str) -> Result<Value, GraphError> {
    let Some(fields) = fields else {
        return Ok(value);
    };
    let Value::Object(obj) = value else {
        return Ok(value);
    };
    for f in fields {
        if !obj.contains_key(f.as_str()) {
            return Err(GraphError::bad(
                "RequestBroker--ParseUri",
                format!("Could not find a property named '{f}' on type '{type_name}'."),
            ));
        }
    }
    let kept = obj
        .into_iter()
        .filter(|(k, _)| k == "id" || k.starts_with('@') || fields.iter().any(|f| f == k))
        .collect();
    Ok(Value::Object(kept))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Mime,
}

fn unsupported_media() -> GraphError {
    GraphError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        "The content type of the request is not supported; use application/json.",
    )
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, GraphError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "text/plain" => Ok(BodyKind::Mime),
        _ => Err(unsupported_media()),
    }
}

fn decode_mime(body: &[u8]) -> Result<Vec<u8>, GraphError> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = STANDARD.decode(&compact).map_err(|_| {
        GraphError::bad(
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        )
    })?;
    if raw.is_empty() {
        return Err(GraphError::bad(
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        ));
    }
    Ok(raw)
}

fn apply_mime(msg: &mut Message, raw: Vec<u8>) {
    let p = mime::parse(&raw);
    msg.subject = p.subject;
    msg.from = p.from;
    msg.sender = msg.from.clone();
    msg.to = p.to;
    msg.cc = p.cc;
    msg.bcc = p.bcc;
    if let Some(date) = p.date {
        msg.sent = Some(date);
    }
    msg.internet_message_id = p.message_id.unwrap_or_default();
    if let Some((body, kind)) = p.body {
        msg.body = body;
        msg.body_type = kind;
    }
    msg.attachments = p.attachments;
    msg.mime = Some(raw);
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(GraphError::bad(
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )),
    }
}

fn unknown_property(key: &str, type_name: &str) -> GraphError {
    GraphError::body_read(format!(
        "The property '{key}' does not exist on type 'microsoft.graph.{type_name}'. Make sure to only use property names that are defined by the type or mark the type as open type."
    ))
}

fn required_str(obj: &Map<String, Value>, key: &str) -> Result<String, GraphError> {
    optional_str(obj, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| GraphError::bad("ErrorInvalidParameter", format!("{key} is required.")))
}

fn optional_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, GraphError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(GraphError::body_read(format!(
            "Cannot convert the value of '{key}' to the expected type 'Edm.String'."
        ))),
    }
}

fn optional_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, GraphError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(GraphError::body_read(format!(
            "Cannot convert the value of '{key}' to the expected type 'Edm.Boolean'."
        ))),
    }
}

fn parse_recipients(value: &Value, key: &str) -> Result<Vec<Address>, GraphError> {
    let bad = || {
        GraphError::body_read(format!(
            "Cannot read '{key}': expected an array of recipients {{\"emailAddress\":{{\"address\",\"name\"}}}}."
        ))
    };
    let Value::Array(list) = value else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let obj = r.as_object().ok_or_else(bad)?;
        if obj.keys().any(|k| k != "emailAddress") {
            return Err(bad());
        }
        let email = obj
            .get("emailAddress")
            .and_then(Value::as_object)
            .ok_or_else(bad)?;
        if email.keys().any(|k| k != "address" && k != "name") {
            return Err(bad());
        }
        let address = optional_str(email, "address")?.unwrap_or_default();
        if !address.contains('@') {
            return Err(GraphError::bad(
                "ErrorInvalidRecipients",
                format!("The recipient '{address}' is not a valid SMTP address."),
            ));
        }
        let name = optional_str(email, "name")?.unwrap_or_else(|| address.clone());
        out.push(Address {
            name,
            email: address,
        });
    }
    Ok(out)
}

/// Message properties a request may set.
const SETTABLE: &[&str] = &[
    "subject",
    "body",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "from",
    "sender",
    "importance",
    "isRead",
    "categories",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "internetMessageId",
];

/// Message properties Graph computes.
const READ_ONLY: &[&str] = &[
    "id",
    "changeKey",
    "isDraft",
    "parentFolderId",
    "createdDateTime",
    "lastModifiedDateTime",
    "receivedDateTime",
    "sentDateTime",
    "conversationId",
    "hasAttachments",
    "bodyPreview",
];

fn apply_message_json(
    msg: &mut Message,
    obj: &Map<String, Value>,
    allow_attachments: bool,
    limits: &GraphLimits,
) -> Result<(), GraphError> {
    for (key, value) in obj {
        if key.starts_with('@') {
            continue;
        }
        if key == "attachments" && allow_attachments {
            let Value::Array(list) = value else {
                return Err(GraphError::body_read("'attachments' must be an array."));
            };
            let mut atts = Vec::with_capacity(list.len());
            for a in list {
                let a = a
                    .as_object()
                    .ok_or_else(|| GraphError::body_read("An attachment must be an object."))?;
                atts.push(parse_file_attachment(a, limits)?);
            }
            msg.attachments = atts;
            msg.mime = None;
            continue;
        }
        if READ_ONLY.contains(&key.as_str()) {
            return Err(GraphError::bad(
                "ErrorInvalidPropertyUpdate",
                format!("The property '{key}' is read-only and cannot be set."),
            ));
        }
        if !SETTABLE.contains(&key.as_str()) {
            return Err(unknown_property(key, "message"));
        }
        match key.as_str() {
            "subject" => msg.subject = optional_str(obj, key)?.unwrap_or_default(),
            "body" => {
                let body = value
                    .as_object()
                    .ok_or_else(|| GraphError::body_read("'body' must be an itemBody object."))?;
                for k in body.keys() {
                    if k != "contentType" && k != "content" {
                        return Err(unknown_property(k, "itemBody"));
                    }
                }
                msg.body_type = match optional_str(body, "contentType")?
                    .map(|s| s.to_ascii_lowercase())
                    .as_deref()
                {
                    None | Some("text") => BodyType::Text,
                    Some("html") => BodyType::Html,
                    Some(other) => {
                        return Err(GraphError::body_read(format!(
                            "The value '{other}' is not valid for 'bodyType' (text or html)."
                        )));
                    }
                };
                msg.body = optional_str(body, "content")?.unwrap_or_default();
            }
            "toRecipients" => msg.to = parse_recipients(value, key)?,
            "ccRecipients" => msg.cc = parse_recipients(value, key)?,
            "bccRecipients" => msg.bcc = parse_recipients(value, key)?,
            // The store keeps no Reply-To; the value is checked and dropped (a documented gap).
            "replyTo" => {
                parse_recipients(value, key)?;
            }
            "from" | "sender" => {
                let list = parse_recipients(&Value::Array(vec![value.clone()]), key)?;
                if key == "from" {
                    msg.from = list.into_iter().next();
                }
            }
            "importance" => {
                msg.importance = match optional_str(obj, key)?
                    .map(|s| s.to_ascii_lowercase())
                    .as_deref()
                {
                    Some("low") => "Low",
                    Some("normal") | None => "Normal",
                    Some("high") => "High",
                    Some(other) => {
                        return Err(GraphError::body_read(format!(
                            "The value '{other}' is not valid for 'importance'."
                        )));
                    }
                }
                .to_owned();
            }
            "isRead" => msg.is_read = optional_bool(obj, key)?.unwrap_or(false),
            "categories" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| GraphError::body_read("'categories' must be an array."))?;
                msg.categories = list
                    .iter()
                    .map(|c| c.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| GraphError::body_read("categories must be strings."))?;
            }
            "isDeliveryReceiptRequested" | "isReadReceiptRequested" => {
                optional_bool(obj, key)?;
            }
            "internetMessageId" => {
                msg.internet_message_id = optional_str(obj, key)?.unwrap_or_default();
            }
            _ => {}
        }
        if key != "isRead" && key != "categories" {
            msg.mime = None;
        }
    }
    Ok(())
}

fn parse_file_attachment(
    obj: &Map<String, Value>,
    limits: &GraphLimits,
) -> Result<Attachment, GraphError> {
    match obj.get("@odata.type").and_then(Value::as_str) {
        Some("#microsoft.graph.fileAttachment") => {}
        Some(other) => {
            return Err(GraphError::bad(
                "ErrorInvalidParameter",
                format!("The attachment type '{other}' is not supported by the simulator."),
            ));
        }
        None => {
            return Err(GraphError::bad(
                "ErrorInvalidParameter",
                "An attachment needs '@odata.type' (#microsoft.graph.fileAttachment).",
            ));
        }
    }
    for key in obj.keys() {
        if ![
            "@odata.type",
            "name",
            "contentType",
            "contentBytes",
            "isInline",
            "contentId",
            "contentLocation",
            "size",
        ]
        .contains(&key.as_str())
        {
            return Err(unknown_property(key, "fileAttachment"));
        }
    }
    let name = required_str(obj, "name")?;
    let bytes = optional_str(obj, "contentBytes")?
        .ok_or_else(|| GraphError::bad("ErrorInvalidParameter", "contentBytes is required."))?;
    // Checked on the encoded length first, so an oversized body is refused before decoding.
    if bytes.len() / 4 * 3 > limits.max_inline_attachment + 3 {
        return Err(inline_too_large());
    }
    let content = STANDARD
        .decode(bytes.as_bytes())
        .map_err(|_| GraphError::body_read("contentBytes is not valid base64 (Edm.Binary)."))?;
    if content.len() > limits.max_inline_attachment {
        return Err(inline_too_large());
    }
    Ok(Attachment {
        id: String::new(),
        name,
        content_type: optional_str(obj, "contentType")?
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        content_id: optional_str(obj, "contentId")?,
        is_inline: optional_bool(obj, "isInline")?.unwrap_or(false),
        content,
        modified: OffsetDateTime::now_utc(),
    })
}

fn inline_too_large() -> GraphError {
    GraphError::bad(
        "ErrorAttachmentSizeLimitExceeded",
        "The attachment is larger than 3 MB; use an upload session (createUploadSession).",
    )
}

/// Delivers a copy into the inbox of each recipient that is a mailbox of the tenant.
fn deliver(data: &mut Data, tenant: &Tenant, msg: &Message) {
    let mut seen = std::collections::HashSet::new();
    for a in msg.to.iter().chain(&msg.cc).chain(&msg.bcc) {
        let Some(mbx) = resolve_user(tenant, &a.email) else {
            continue;
        };
        let key = mbx.smtp.to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            continue;
        }
        data.ensure_mailbox(&key, &mbx.display_name);
        let Some(inbox) = data
            .mailbox_ref(&key)
            .and_then(|m| m.distinguished("inbox"))
            .map(str::to_owned)
        else {
            continue;
        };
        let mut copy = msg.clone();
        copy.is_read = false;
        copy.is_draft = false;
        copy.bcc.clear();
        data.insert_item(&key, &inbox, copy, true);
    }
}

/// Handles a `PUT` (or `DELETE`) of an upload-session URL: pre-authenticated by the opaque
/// token in its query, so an `Authorization` header is refused.
pub async fn upload_chunk(state: &Arc<SimState>, req: SimRequest, seq: u64) -> Response<Body> {
    let resp = match upload_inner(state, &req, seq).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    finish(&req.headers, resp)
}

async fn upload_inner(state: &Arc<SimState>, req: &SimRequest, seq: u64) -> GraphResult {
    let limits = &state.config.graph;
    let session_id = req
        .path
        .strip_prefix(UPLOAD_PATH_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let token = req
        .query
        .as_deref()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "authtoken")
                .map(|(_, v)| v)
        })
        .unwrap_or_default();
    // Who the session belongs to; the token is compared in constant time.
    let (app_id, mailbox) = {
        let uploads = state
            .graph
            .uploads
            .lock()
            .map_err(|_| GraphError::internal("upload lock"))?;
        let session = uploads.get(&session_id).filter(|s| {
            use subtle::ConstantTimeEq as _;
            bool::from(s.secret.as_bytes().ct_eq(token.as_bytes()))
        });
        match session {
            Some(s) => (s.app_id.clone(), s.mailbox.clone()),
            None => {
                return Err(GraphError::new(
                    StatusCode::NOT_FOUND,
                    "ErrorItemNotFound",
                    "The upload session was not found or its token is invalid.",
                ));
            }
        }
    };
    state.log.annotate(seq, &mailbox, &app_id);
    if req.headers.contains_key(header::AUTHORIZATION) {
        // Graph: "Do not specify an Authorization request header ... it can result in 401".
        return Err(GraphError::unauthenticated(
            "An upload URL is pre-authenticated; the request must not carry an Authorization header.",
        ));
    }
    if req.body.len() > limits.max_request_bytes {
        return Err(GraphError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The maximum request length supported is 4MB.",
        ));
    }
    let upload = if req.method == Method::PUT {
        req.body.len() as u64
    } else {
        0
    };
    let _slot = state_admit(state, &app_id, &mailbox, upload)?;
    let latency = state.faults().graph_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut uploads = state
        .graph
        .uploads
        .lock()
        .map_err(|_| GraphError::internal("upload lock"))?;
    let expired = uploads
        .get(&session_id)
        .is_none_or(|s| Instant::now() >= s.expires);
    if expired {
        uploads.remove(&session_id);
        return Err(GraphError::new(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The upload session has expired.",
        ));
    }
    match req.method {
        Method::DELETE => {
            uploads.remove(&session_id);
            return Ok(empty(StatusCode::NO_CONTENT));
        }
        Method::PUT => {}
        _ => {
            return Err(GraphError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "Use PUT to upload, DELETE to cancel.",
            ));
        }
    }
    let session = uploads
        .get_mut(&session_id)
        .ok_or_else(GraphError::not_found)?;
    let (start, end, total) = content_range(&req.headers)?;
    let len = req.body.len() as u64;
    if total != session.size {
        return Err(GraphError::bad(
            "ErrorInvalidRange",
            format!(
                "The total in Content-Range ({total}) differs from the size declared for the upload session ({}).",
                session.size
            ),
        ));
    }
    if end - start + 1 != len {
        return Err(GraphError::bad(
            "ErrorInvalidRange",
            "The Content-Range length differs from the request body length.",
        ));
    }
    if start != session.received.len() as u64 || end >= total {
        return Err(GraphError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "ErrorInvalidRange",
            format!(
                "The range {start}-{end} is not the next expected range {}-.",
                session.received.len()
            ),
        ));
    }
    let last = end + 1 == total;
    let chunk_ok = len as usize <= limits.max_upload_chunk
        && (last || (len as usize).is_multiple_of(limits.upload_chunk_multiple));
    if !chunk_ok {
        return Err(GraphError::bad(
            "ErrorInvalidRange",
            "A chunk must be at most 4 MB and, except the last, a multiple of 320 KiB.",
        ));
    }
    session.received.extend_from_slice(&req.body);
    if !last {
        let body = json!({
            "expirationDateTime": time_text(session.expires_at),
            "nextExpectedRanges": [format!("{}-", session.received.len())],
        });
        return Ok(json_response(StatusCode::OK, &body));
    }
    let Some(session) = uploads.remove(&session_id) else {
        return Err(GraphError::not_found());
    };
    drop(uploads);
    let att = Attachment {
        id: String::new(),
        name: session.name,
        content_type: session.content_type,
        content_id: session.content_id,
        is_inline: session.is_inline,
        // Moved, not copied: the store keeps the buffer the chunks were appended to.
        content: session.received,
        modified: OffsetDateTime::now_utc(),
    };
    let aid = state
        .mailboxes
        .with(|data| data.add_attachment(&session.mailbox, &session.item_id, att))
        .map(|(aid, _)| aid)
        .ok_or_else(GraphError::not_found)?;
    let mut resp = empty(StatusCode::CREATED);
    let location = format!(
        "{}/v1.0/users/{}/messages/{}/attachments/{}",
        state.base_url,
        session.mailbox,
        to_graph_id(&session.item_id),
        to_graph_id(&aid)
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `Content-Range: bytes a-b/total`.
fn content_range(headers: &HeaderMap) -> Result<(u64, u64, u64), GraphError> {
    let bad = || {
        GraphError::bad(
            "ErrorInvalidRange",
            "Content-Range must be 'bytes start-end/total'.",
        )
    };
    let value = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?;
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let (a, b, total) = (parse(a)?, parse(b)?, parse(total)?);
    if b < a {
        return Err(bad());
    }
    Ok((a, b, total))
}
