//! The translation backend's request path: read the client's whole SOAP body (streamed through
//! the bounded reader on a blocking thread, bulk base64 into spools), translate it over the
//! Graph port for the mailbox policy decided, answer with the EWS document, and count what it
//! cost (Graph calls per EWS operation, 429s, untranslated operations).

use std::io::{self, BufReader};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use std::pin::Pin;

use tokio::io::AsyncReadExt as _;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::GraphPort;
use crate::auth::Principal;
use crate::http_util::{self, Body};
use crate::soap;
use crate::translate::xml::XmlLimits;
use crate::translate::{self, MailboxFacts, Scope, Translated};

/// Metric names of the Graph backend.
pub mod metric {
    /// Counter: Graph calls, by EWS operation.
    pub const GRAPH_CALLS: &str = "ews_gateway_graph_calls_total";
    /// Histogram: Graph calls per EWS call (the amplification), by EWS operation.
    pub const AMPLIFICATION: &str = "ews_gateway_graph_calls_per_request";
    /// Counter: Graph 429 answers, by EWS operation.
    pub const THROTTLED: &str = "ews_gateway_graph_throttled_total";
    /// Counter: EWS calls answered "not translated", by EWS operation.
    pub const UNTRANSLATED: &str = "ews_gateway_graph_untranslated_total";
    /// Histogram: seconds a Graph call waited for its per-mailbox permit.
    pub const QUEUE_WAIT: &str = "ews_gateway_graph_queue_wait_seconds";
}

/// The Graph translation backend.
pub struct GraphTranslator<P> {
    port: P,
    facts: MailboxFacts,
    limits: XmlLimits,
}

impl<P: GraphPort> GraphTranslator<P> {
    /// A backend over `port`.
    pub fn new(port: P, limits: XmlLimits) -> Self {
        Self {
            port,
            facts: MailboxFacts::default(),
            limits,
        }
    }

    /// The port (tests read what it saw).
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Translates one EWS call: `head` is what the gateway already read of the body, `rest`
    /// the remainder still streaming (at most `max_body` bytes in all are read). `mailbox` is
    /// the mailbox policy decided.
    pub async fn handle(
        &self,
        principal: &Principal,
        mailbox: &str,
        head: Bytes,
        rest: Option<Body>,
        max_body: u64,
    ) -> (Response<Body>, Translated) {
        let limits = self.limits;
        let head = std::io::Cursor::new(head);
        let reader: Pin<Box<dyn tokio::io::AsyncRead + Send>> = match rest {
            Some(body) => {
                let stream = body
                    .into_data_stream()
                    .map_err(|e| io::Error::other(e.to_string()));
                Box::pin(head.chain(StreamReader::new(stream)).take(max_body))
            }
            None => Box::pin(head.take(max_body)),
        };
        // quick-xml reads synchronously: the body is parsed on a blocking thread as it arrives,
        // so only the bounded tree and the spools ever hold it.
        let bridge = SyncIoBridge::new(reader);
        let parsed = tokio::task::spawn_blocking(move || {
            translate::read_request(BufReader::with_capacity(64 * 1024, bridge), &limits)
        })
        .await;
        let translated = match parsed {
            Ok(Ok(req)) => {
                let scope = Scope { principal, mailbox };
                translate::translate(&self.port, &self.facts, scope, &req.operation, req.parsed)
                    .await
            }
            Ok(Err(f)) => failed(f.code, &f.message),
            Err(e) => failed("ErrorInternalServerError", &e.to_string()),
        };
        record(&translated);
        (response(&translated), translated)
    }
}

fn failed(code: &'static str, message: &str) -> Translated {
    Translated {
        status: 500,
        body: soap::fault_envelope(code, message, &[]).into_bytes(),
        retry_after: None,
        operation: String::new(),
        graph_calls: 0,
        throttled: 0,
        untranslated: None,
        fault: Some(code),
    }
}

fn label(operation: &str) -> &'static str {
    soap::known_operation(operation).unwrap_or("other")
}

fn record(t: &Translated) {
    let op = label(&t.operation);
    metrics::counter!(metric::GRAPH_CALLS, "operation" => op).increment(u64::from(t.graph_calls));
    metrics::histogram!(metric::AMPLIFICATION, "operation" => op).record(f64::from(t.graph_calls));
    if t.throttled > 0 {
        metrics::counter!(metric::THROTTLED, "operation" => op).increment(u64::from(t.throttled));
    }
    if t.untranslated.is_some() {
        metrics::counter!(metric::UNTRANSLATED, "operation" => op).increment(1);
    }
}

/// The HTTP answer: 200 with the document, or 500 with the fault (and `Retry-After` for
/// `ErrorServerBusy`), as Exchange answers.
pub fn response(t: &Translated) -> Response<Body> {
    let mut resp = Response::new(http_util::full(Bytes::from(t.body.clone())));
    *resp.status_mut() =
        StatusCode::from_u16(t.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(soap::CONTENT_TYPE_XML),
    );
    if let Some(wait) = t.retry_after
        && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Shared handle (the gateway keeps one per configuration).
pub type SharedTranslator<P> = Arc<GraphTranslator<P>>;

/// The Graph backend of the gateway: one translator per tenant (its own Graph token and
/// mailbox facts); the call's decided mailbox is the only mailbox its Graph URLs name.
pub struct GraphUpstream<P> {
    /// Translators by tenant id.
    pub translators: Vec<(String, GraphTranslator<P>)>,
    /// Largest request body read.
    pub max_body: u64,
}

impl<P: GraphPort + 'static> crate::backend::Backend for GraphUpstream<P> {
    fn name(&self) -> &'static str {
        "graph"
    }

    fn call(&self, call: crate::backend::AuthorisedCall) -> crate::backend::BackendFuture<'_> {
        Box::pin(async move {
            let translator = self
                .translators
                .iter()
                .find(|(id, _)| *id == call.tenant.tenant_id)
                .map(|(_, t)| t)
                .ok_or_else(|| crate::error::GatewayError::Unavailable {
                    side: crate::error::Side::Exchange,
                    message: format!(
                        "tenant {} has no Graph backend configured",
                        call.tenant.tenant_id
                    ),
                    retry_after: std::time::Duration::from_secs(60),
                })?;
            let (head, rest) = call.body.into_original();
            let mailbox = call.mailbox.value.to_ascii_lowercase();
            let (response, translated) = translator
                .handle(&call.principal, &mailbox, head, rest, self.max_body)
                .await;
            tracing::debug!(
                operation = %translated.operation,
                graph_calls = translated.graph_calls,
                graph_throttled = translated.throttled,
                untranslated = translated.untranslated.as_deref().unwrap_or(""),
                "translated to Microsoft Graph"
            );
            Ok(crate::backend::BackendResponse {
                response,
                upstream_request_id: None,
                streaming: false,
            })
        })
    }
    // Graph has no WSDL: the default `document` (404) applies.
}
