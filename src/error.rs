//! The gateway's one classified error, and the one place it becomes an HTTP answer.
//!
//! Every refusal and failure on the request path ends here as either a 401 Basic challenge, a
//! plain 404/405, or an EWS SOAP fault naming the cause (HTTP 500, as Exchange sends faults), so
//! client libraries report something readable and never see a bare error page. After
//! authentication nothing answers 401: exchangelib retries a 401 for an hour in fault-tolerant mode.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::http_util::{self, Body};
use crate::soap;

/// Which side a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Microsoft Entra ID (the token endpoint).
    Entra,
    /// Exchange (the EWS upstream).
    Exchange,
}

/// A classified gateway error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No credentials, or credentials that did not verify.
    #[error("authentication required")]
    Unauthenticated,
    /// The path is not one the gateway serves.
    #[error("not found")]
    NotFound,
    /// The path exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// Value for the `Allow` header.
        allow: &'static str,
    },
    /// The request was refused before anything went upstream.
    #[error("{message}")]
    Refused {
        /// EWS response code, e.g. `ErrorImpersonateUserDenied`.
        code: &'static str,
        /// Sentence naming the cause.
        message: String,
    },
    /// The request body is larger than allowed.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The request body did not arrive in full within `[limits] body_read_timeout_seconds`.
    #[error("request body not received within {seconds} s")]
    BodyTimeout {
        /// The configured timeout.
        seconds: u64,
    },
    /// A dependency failed in a way that may pass (outage, timeout, refused connection).
    #[error("{message}")]
    Unavailable {
        /// Which dependency.
        side: Side,
        /// Sentence naming the cause.
        message: String,
        /// What the client is told to wait.
        retry_after: Duration,
    },
    /// The caller is over one of the gateway's limits (rate per principal, concurrency per
    /// mailbox); answered like Exchange's own throttling so clients back off and retry.
    #[error("{message}")]
    Throttled {
        /// Sentence naming the limit.
        message: String,
        /// What the client is told to wait.
        retry_after: Duration,
    },
    /// A dependency refused the gateway itself (misconfiguration an operator must fix).
    #[error("{message}")]
    Misconfigured {
        /// Which dependency.
        side: Side,
        /// Sentence naming the cause and the fix.
        message: String,
    },
}

impl GatewayError {
    /// A short label for logs and metrics (bounded set).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Refused { .. } => "refused",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::Unavailable { .. } => "unavailable",
            Self::Throttled { .. } => "throttled",
            Self::Misconfigured { .. } => "misconfigured",
        }
    }

    /// The EWS response code a fault for this error carries, if it is answered with a fault.
    pub fn fault_code(&self) -> Option<&'static str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            Self::PayloadTooLarge { .. } => Some("ErrorMessageSizeExceeded"),
            Self::BodyTimeout { .. } => Some("ErrorTimeoutExpired"),
            Self::Unavailable { .. } | Self::Throttled { .. } => Some("ErrorServerBusy"),
            Self::Misconfigured { .. } => Some("ErrorInternalServerError"),
            _ => None,
        }
    }

    /// The HTTP answer for this error. `realm` goes into the Basic challenge.
    pub fn into_response(self, realm: &str) -> Response<Body> {
        match self {
            Self::Unauthenticated => {
                let mut resp = Response::new(http_util::empty());
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                resp
            }
            Self::NotFound => plain(StatusCode::NOT_FOUND, "Not Found"),
            Self::MethodNotAllowed { allow } => {
                let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                resp
            }
            Self::Refused { code, message } => fault(code, &message, &[]),
            Self::PayloadTooLarge { limit } => fault(
                "ErrorMessageSizeExceeded",
                &format!("The request body exceeds the gateway's limit of {limit} bytes."),
                &[],
            ),
            Self::BodyTimeout { seconds } => {
                let mut resp = fault(
                    "ErrorTimeoutExpired",
                    &format!(
                        "The request body did not arrive in full within the gateway's limit of {seconds} s; nothing was completed in Exchange."
                    ),
                    &[],
                );
                // The rest of the body is never read: the connection cannot carry another request.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            Self::Unavailable {
                side,
                message,
                retry_after,
            } => server_busy(&format!("{} {message}", side_prefix(side)), retry_after),
            Self::Throttled {
                message,
                retry_after,
            } => server_busy(&format!("ews-gateway: {message}"), retry_after),
            Self::Misconfigured { side, message } => fault(
                "ErrorInternalServerError",
                &format!("{} {message}", side_prefix(side)),
                &[],
            ),
        }
    }
}

/// An error and its sources, joined with ": " (transport errors hide the useful part in sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `ErrorServerBusy` with the back-off both in the fault (EWS clients read
/// `BackOffMilliseconds`) and in `Retry-After`.
fn server_busy(text: &str, retry_after: Duration) -> Response<Body> {
    let backoff = retry_after.as_millis().to_string();
    let mut resp = fault(
        "ErrorServerBusy",
        text,
        &[("BackOffMilliseconds", &backoff)],
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, value);
    }
    resp
}

fn side_prefix(side: Side) -> &'static str {
    match side {
        Side::Entra => "ews-gateway could not obtain an access token from Microsoft Entra ID:",
        Side::Exchange => "ews-gateway could not reach Exchange:",
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(http_util::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn fault(code: &str, message: &str, message_xml: &[(&str, &str)]) -> Response<Body> {
    let mut resp = Response::new(http_util::full(soap::fault_envelope(
        code,
        message,
        message_xml,
    )));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(soap::CONTENT_TYPE_XML),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn unauthenticated_is_a_basic_challenge_with_empty_body() {
        let resp = GatewayError::Unauthenticated.into_response("ews");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"ews\", charset=\"UTF-8\""
        );
        assert_eq!(body_text(resp).await, "");
    }

    #[tokio::test]
    async fn refusal_is_a_soap_fault_naming_the_cause() {
        let resp = GatewayError::Refused {
            code: "ErrorImpersonateUserDenied",
            message: "alice may not act as bob".into(),
        }
        .into_response("ews");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/xml; charset=utf-8"
        );
        let text = body_text(resp).await;
        assert!(text.contains("a:ErrorImpersonateUserDenied"));
        assert!(text.contains("alice may not act as bob"));
    }

    #[tokio::test]
    async fn outage_is_server_busy_with_backoff() {
        let resp = GatewayError::Unavailable {
            side: Side::Entra,
            message: "the token endpoint answered HTTP 503".into(),
            retry_after: Duration::from_secs(30),
        }
        .into_response("ews");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "30");
        let text = body_text(resp).await;
        assert!(text.contains("ErrorServerBusy"));
        assert!(text.contains("<t:Value Name=\"BackOffMilliseconds\">30000</t:Value>"));
        assert!(text.contains("Microsoft Entra ID: the token endpoint answered HTTP 503"));
    }
}
