//! The Microsoft Graph port: what the translation backend needs from Graph, as a trait
//! ([`GraphPort`]), and its reqwest implementation ([`http::HttpGraph`]).
//!
//! Every request is addressed relative to one mailbox: the port builds
//! `{graph_url}/v1.0/users/{mailbox}{path}` itself, so a translated operation cannot name a
//! mailbox in a URL; the mailbox is always the one the gateway's policy decided. The port also
//! owns the single place where a traffic-shaper permit is taken ([`Shaper`]).

pub mod backend;
pub mod http;
pub mod shaper;

use std::future::Future;
use std::time::Duration;

pub use shaper::{LocalShaper, Shaper};

/// HTTP methods the translator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphBody {
    /// No body.
    Empty,
    /// `application/json`.
    Json(serde_json::Value),
    /// `text/plain`: base64 MIME (sendMail and message create from MIME).
    MimeBase64(String),
}

impl GraphBody {
    /// Bytes the body puts on the wire (Graph refuses requests over 4 MB).
    pub fn wire_len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Json(v) => serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX),
            Self::MimeBase64(s) => s.len(),
        }
    }
}

/// A request relative to `/v1.0/users/{mailbox}`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphRequest {
    /// The method.
    pub method: Method,
    /// Path below the user, starting with `/` (e.g. `/mailFolders/inbox`), query included;
    /// empty for the user object itself.
    pub path: String,
    /// The body.
    pub body: GraphBody,
}

impl GraphRequest {
    /// A GET.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::Get,
            path: path.into(),
            body: GraphBody::Empty,
        }
    }

    /// A POST with a JSON body.
    pub fn post_json(path: impl Into<String>, json: serde_json::Value) -> Self {
        Self {
            method: Method::Post,
            path: path.into(),
            body: GraphBody::Json(json),
        }
    }
}

/// A successful Graph answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphResponse {
    /// HTTP status (2xx).
    pub status: u16,
    /// The JSON body, if any.
    pub json: Option<serde_json::Value>,
    /// The `Location` header, if any.
    pub location: Option<String>,
}

/// One chunk of an upload session.
#[derive(Debug, Clone)]
pub struct UploadChunk {
    /// First byte offset.
    pub start: u64,
    /// Total size of the attachment.
    pub total: u64,
    /// The bytes.
    pub bytes: bytes::Bytes,
}

/// A Graph failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error object.
    #[error("Graph answered HTTP {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// Graph could not be reached or answered something that is not Graph.
    #[error("Graph could not be reached: {0}")]
    Transport(String),
    /// No Graph token.
    #[error("no Graph token: {0}")]
    Token(String),
    /// The gateway's own traffic shaping refused to wait longer.
    #[error("the mailbox's Graph queue is full")]
    Busy {
        /// What the client is told to wait.
        retry_after: Duration,
    },
}

/// What the translation backend needs from Microsoft Graph.
pub trait GraphPort: Send + Sync {
    /// Calls `/v1.0/users/{mailbox}{req.path}`.
    fn call(
        &self,
        mailbox: &str,
        req: GraphRequest,
    ) -> impl Future<Output = Result<GraphResponse, GraphError>> + Send;

    /// PUTs one chunk to a pre-authenticated upload URL (no Authorization header).
    fn upload(
        &self,
        mailbox: &str,
        upload_url: &str,
        chunk: UploadChunk,
    ) -> impl Future<Output = Result<GraphResponse, GraphError>> + Send;
}
