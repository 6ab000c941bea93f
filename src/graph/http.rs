//! [`GraphPort`] over reqwest: Bearer Graph token, `client-request-id`, JSON and MIME bodies,
//! upload-session chunks (PUT to the pre-authenticated URL with no Authorization header), and
//! the handling of 401 (drop the token, retry once), 429 (pause the mailbox's queue, retry
//! while the deadline allows) and 503/504 (one retry), each through the [`Shaper`] permit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::time::Instant;

use super::shaper::CallKind;
use super::{
    GraphBody, GraphError, GraphPort, GraphRequest, GraphResponse, Method, Shaper, UploadChunk,
};
use crate::token::{AccessToken, TenantTokens};

/// Characters of an address left as they are in the `/users/{mailbox}` segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'@')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// Where Graph tokens come from (a tenant's token state for scope
/// `https://graph.microsoft.com/.default`).
pub trait GraphTokens: Send + Sync {
    /// A valid bearer token.
    fn token(&self) -> impl Future<Output = Result<Arc<str>, GraphError>> + Send;
    /// Graph said this token is bad: drop it if it is still the current one.
    fn invalidate(&self, bearer: &str);
}

impl GraphTokens for Arc<TenantTokens> {
    async fn token(&self) -> Result<Arc<str>, GraphError> {
        self.get()
            .await
            .map(|t| Arc::from(t.bearer()))
            .map_err(|e| GraphError::Token(e.to_string()))
    }

    fn invalidate(&self, bearer: &str) {
        let current: Option<Arc<AccessToken>> = self.cached();
        if let Some(t) = current
            && t.bearer() == bearer
        {
            TenantTokens::invalidate(self, &t);
        }
    }
}

/// Settings of the HTTP port.
#[derive(Debug, Clone)]
pub struct HttpGraphConfig {
    /// Graph base URL, e.g. `https://graph.microsoft.com` (the simulator's base URL in tests).
    pub graph_url: String,
    /// How long one EWS call may spend on Graph, waits included.
    pub deadline: Duration,
    /// Longest `Retry-After` the port waits out itself before answering ErrorServerBusy.
    pub max_retry_wait: Duration,
}

impl Default for HttpGraphConfig {
    fn default() -> Self {
        Self {
            graph_url: "https://graph.microsoft.com".into(),
            deadline: Duration::from_secs(25),
            max_retry_wait: Duration::from_secs(5),
        }
    }
}

/// The reqwest Graph port.
pub struct HttpGraph<T, S> {
    http: reqwest::Client,
    config: HttpGraphConfig,
    tokens: T,
    shaper: S,
}

impl<T: GraphTokens, S: Shaper> HttpGraph<T, S> {
    /// A port with its HTTP client, token source and shaper.
    pub fn new(http: reqwest::Client, mut config: HttpGraphConfig, tokens: T, shaper: S) -> Self {
        config.graph_url = config.graph_url.trim_end_matches('/').to_owned();
        Self {
            http,
            config,
            tokens,
            shaper,
        }
    }

    /// The URL of a request for `mailbox`: always built here, from the decided mailbox.
    pub fn url(&self, mailbox: &str, path: &str) -> String {
        format!(
            "{}/v1.0/users/{}{}",
            self.config.graph_url,
            utf8_percent_encode(mailbox, SEGMENT),
            path
        )
    }

    /// Whether an upload URL Graph handed out may receive attachment bytes: HTTPS, or plain
    /// HTTP only when Graph itself is reached over plain HTTP (the simulator).
    fn upload_url_allowed(&self, url: &str) -> bool {
        url.starts_with("https://")
            || (url.starts_with("http://") && self.config.graph_url.starts_with("http://"))
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

async fn read_response(resp: reqwest::Response) -> Result<GraphResponse, GraphError> {
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry = retry_after(&resp);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| GraphError::Transport(crate::error::error_chain(&e)))?;
    let json: Option<serde_json::Value> = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    if (200..300).contains(&status) {
        return Ok(GraphResponse {
            status,
            json,
            location,
        });
    }
    let err = json.as_ref().and_then(|j| j.get("error"));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Err(GraphError::Api {
        status,
        code: field("code"),
        message: field("message"),
        retry_after: retry,
    })
}

enum Next {
    Done(Result<GraphResponse, GraphError>),
    Retry(Duration),
}

impl<T: GraphTokens, S: Shaper> HttpGraph<T, S> {
    /// What to do after an answer: give up, or wait and retry within the deadline.
    fn next(
        &self,
        mailbox: &str,
        r: Result<GraphResponse, GraphError>,
        attempt: u32,
        deadline: Instant,
    ) -> Next {
        let wait = match &r {
            Err(GraphError::Api {
                status: 429,
                retry_after,
                ..
            }) => {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                self.shaper.throttled(mailbox, wait);
                wait
            }
            Err(GraphError::Api {
                status: 503 | 504, ..
            }) => Duration::from_secs(1),
            _ => return Next::Done(r),
        };
        if attempt >= 2 || wait > self.config.max_retry_wait || Instant::now() + wait >= deadline {
            return Next::Done(r);
        }
        Next::Retry(wait)
    }
}

impl<T: GraphTokens, S: Shaper> GraphPort for HttpGraph<T, S> {
    async fn call(&self, mailbox: &str, req: GraphRequest) -> Result<GraphResponse, GraphError> {
        let deadline = Instant::now() + self.config.deadline;
        let url = self.url(mailbox, &req.path);
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let permit = self
                .shaper
                .acquire(mailbox, CallKind::Request, deadline)
                .await?;
            let token = self.tokens.token().await?;
            let method = match req.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Patch => reqwest::Method::PATCH,
                Method::Delete => reqwest::Method::DELETE,
            };
            let mut builder = self
                .http
                .request(method, &url)
                .bearer_auth(&*token)
                .header("client-request-id", uuid::Uuid::new_v4().to_string())
                .timeout(deadline.saturating_duration_since(Instant::now()));
            builder = match &req.body {
                GraphBody::Empty if req.method == Method::Post => {
                    builder.header(reqwest::header::CONTENT_LENGTH, "0")
                }
                GraphBody::Empty => builder,
                GraphBody::Json(v) => builder.json(v),
                GraphBody::MimeBase64(text) => builder
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(text.clone()),
            };
            let r = match builder.send().await {
                Ok(resp) => read_response(resp).await,
                Err(e) => Err(GraphError::Transport(crate::error::error_chain(&e))),
            };
            drop(permit);
            if let Err(GraphError::Api { status: 401, .. }) = &r
                && !refreshed
            {
                // A revoked or rotated token: drop it and try once more with a new one.
                self.tokens.invalidate(&token);
                refreshed = true;
                continue;
            }
            match self.next(mailbox, r, attempt, deadline) {
                Next::Done(r) => return r,
                Next::Retry(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    async fn upload(
        &self,
        mailbox: &str,
        upload_url: &str,
        chunk: UploadChunk,
    ) -> Result<GraphResponse, GraphError> {
        if !self.upload_url_allowed(upload_url) {
            return Err(GraphError::Transport(
                "Graph handed out an upload URL that is not HTTPS".into(),
            ));
        }
        let deadline = Instant::now() + self.config.deadline;
        let len = chunk.bytes.len() as u64;
        let end = chunk.start + len.saturating_sub(1);
        let range = format!("bytes {}-{end}/{}", chunk.start, chunk.total);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let waited = Instant::now();
            let permit = self
                .shaper
                .acquire(mailbox, CallKind::Upload(len), deadline)
                .await?;
            metrics::histogram!(super::backend::metric::QUEUE_WAIT)
                .record(waited.elapsed().as_secs_f64());
            // Pre-authenticated URL: Graph refuses an Authorization header here.
            let r = match self
                .http
                .put(upload_url)
                .header(reqwest::header::CONTENT_RANGE, range.as_str())
                .header(reqwest::header::CONTENT_LENGTH, len.to_string())
                .header("client-request-id", uuid::Uuid::new_v4().to_string())
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .body(chunk.bytes.clone())
                .send()
                .await
            {
                Ok(resp) => read_response(resp).await,
                Err(e) => Err(GraphError::Transport(crate::error::error_chain(&e))),
            };
            drop(permit);
            match self.next(mailbox, r, attempt, deadline) {
                Next::Done(r) => return r,
                Next::Retry(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}
