//! Graph errors → EWS response codes: the one table (reference notes §1.4).
//!
//! Each Graph failure becomes an EWS code plus a channel: a per-item `ResponseMessage` with
//! `ResponseClass="Error"` inside HTTP 200, or a SOAP fault for the whole request (throttling,
//! outages, the gateway's own misconfiguration). A Graph 401 never reaches the client as 401:
//! exchangelib would retry it for an hour.

use std::time::Duration;

use crate::graph::GraphError;

/// How a failure reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A `ResponseMessage` with `ResponseClass="Error"` (HTTP 200).
    PerItem,
    /// A SOAP fault (HTTP 500).
    Fault,
}

/// An EWS-side failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsFailure {
    /// EWS `ResponseCode`.
    pub code: &'static str,
    /// `MessageText`.
    pub message: String,
    /// Per item or fault.
    pub channel: Channel,
    /// For `ErrorServerBusy`: `BackOffMilliseconds` and `Retry-After`.
    pub backoff: Option<Duration>,
}

impl EwsFailure {
    /// A per-item failure.
    pub fn item(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            channel: Channel::PerItem,
            backoff: None,
        }
    }

    /// A whole-request fault.
    pub fn fault(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            channel: Channel::Fault,
            backoff: None,
        }
    }
}

/// Maps (HTTP status, Graph code) to the EWS code and channel.
fn table(status: u16, code: &str) -> (&'static str, Channel) {
    use Channel::{Fault, PerItem};
    match (status, code) {
        (429, _) => ("ErrorServerBusy", Fault),
        (_, "ErrorItemNotFound" | "itemNotFound") => ("ErrorItemNotFound", PerItem),
        (_, "ErrorInvalidIdMalformed") => ("ErrorInvalidIdMalformed", PerItem),
        (_, "ErrorFolderNotFound" | "ErrorSyncFolderNotFound") => ("ErrorFolderNotFound", PerItem),
        (
            404,
            "ErrorInvalidUser"
            | "ResourceNotFound"
            | "Request_ResourceNotFound"
            | "MailboxNotEnabledForRESTAPI",
        ) => ("ErrorNonExistentMailbox", Fault),
        (_, "ErrorSendAsDenied") => ("ErrorSendAsDenied", PerItem),
        (403, _) | (_, "ErrorAccessDenied" | "Authorization_RequestDenied") => {
            ("ErrorAccessDenied", PerItem)
        }
        (401, _) => ("ErrorInternalServerError", Fault),
        (503, _) => ("ErrorServerBusy", Fault),
        (504, _) => ("ErrorTimeoutExpired", Fault),
        (_, "InefficientFilter" | "ErrorRestrictionTooComplex") => {
            ("ErrorRestrictionTooComplex", PerItem)
        }
        (_, "ErrorInvalidUrlQueryFilter") => ("ErrorUnsupportedQueryFilter", PerItem),
        (410, _) | (_, "syncStateNotFound" | "resyncRequired" | "SyncStateInvalid") => {
            ("ErrorInvalidSyncStateData", PerItem)
        }
        (_, "ErrorFolderExists") => ("ErrorFolderExists", PerItem),
        (409 | 412, _) | (_, "ErrorIrresolvableConflict") => ("ErrorIrresolvableConflict", PerItem),
        (413, _) | (_, "ErrorMessageSizeExceeded" | "ErrorAttachmentSizeLimitExceeded") => {
            ("ErrorMessageSizeExceeded", PerItem)
        }
        (_, "ErrorQuotaExceeded") => ("ErrorQuotaExceeded", PerItem),
        (_, "ErrorInvalidRecipients") => ("ErrorInvalidRecipients", PerItem),
        (_, "ErrorCannotOpenFileAttachment") => ("ErrorCannotOpenFileAttachment", PerItem),
        (_, "malwareDetected") => ("ErrorAccessDenied", PerItem),
        (_, "ErrorMimeContentInvalid" | "ErrorMimeContentConversionFailed") => {
            ("ErrorMimeContentInvalid", PerItem)
        }
        (400, _) => ("ErrorInvalidRequest", PerItem),
        _ => ("ErrorInternalServerError", Fault),
    }
}

/// The EWS failure for a Graph failure.
pub fn graph_to_ews(err: &GraphError) -> EwsFailure {
    match err {
        GraphError::Api {
            status,
            code,
            message,
            retry_after,
        } => {
            let (ews, channel) = table(*status, code);
            let backoff =
                (ews == "ErrorServerBusy").then(|| retry_after.unwrap_or(Duration::from_secs(30)));
            EwsFailure {
                code: ews,
                message: format!("Microsoft Graph: {message} ({status} {code})"),
                channel,
                backoff,
            }
        }
        GraphError::Busy { retry_after } => EwsFailure {
            code: "ErrorServerBusy",
            message: "ews-gateway: the mailbox's Microsoft Graph queue is full; retry later."
                .into(),
            channel: Channel::Fault,
            backoff: Some(*retry_after),
        },
        GraphError::Transport(text) => EwsFailure {
            code: "ErrorServerBusy",
            message: format!("ews-gateway could not reach Microsoft Graph: {text}"),
            channel: Channel::Fault,
            backoff: Some(Duration::from_secs(30)),
        },
        GraphError::Token(text) => EwsFailure {
            code: "ErrorInternalServerError",
            message: format!("ews-gateway could not obtain a Microsoft Graph token: {text}"),
            channel: Channel::Fault,
            backoff: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, retry: Option<u64>) -> GraphError {
        GraphError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            retry_after: retry.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_table() {
        let cases: &[(u16, &str, &str, Channel)] = &[
            (
                404,
                "ErrorItemNotFound",
                "ErrorItemNotFound",
                Channel::PerItem,
            ),
            (
                400,
                "ErrorInvalidIdMalformed",
                "ErrorInvalidIdMalformed",
                Channel::PerItem,
            ),
            (
                404,
                "ErrorInvalidUser",
                "ErrorNonExistentMailbox",
                Channel::Fault,
            ),
            (
                404,
                "MailboxNotEnabledForRESTAPI",
                "ErrorNonExistentMailbox",
                Channel::Fault,
            ),
            (
                403,
                "ErrorAccessDenied",
                "ErrorAccessDenied",
                Channel::PerItem,
            ),
            (
                403,
                "ErrorSendAsDenied",
                "ErrorSendAsDenied",
                Channel::PerItem,
            ),
            (
                401,
                "InvalidAuthenticationToken",
                "ErrorInternalServerError",
                Channel::Fault,
            ),
            (503, "UnknownError", "ErrorServerBusy", Channel::Fault),
            (504, "UnknownError", "ErrorTimeoutExpired", Channel::Fault),
            (
                409,
                "ErrorFolderExists",
                "ErrorFolderExists",
                Channel::PerItem,
            ),
            (412, "x", "ErrorIrresolvableConflict", Channel::PerItem),
            (
                413,
                "RequestEntityTooLarge",
                "ErrorMessageSizeExceeded",
                Channel::PerItem,
            ),
            (
                400,
                "ErrorInvalidRecipients",
                "ErrorInvalidRecipients",
                Channel::PerItem,
            ),
            (
                400,
                "ErrorAttachmentSizeLimitExceeded",
                "ErrorMessageSizeExceeded",
                Channel::PerItem,
            ),
            (
                500,
                "UnknownError",
                "ErrorInternalServerError",
                Channel::Fault,
            ),
        ];
        for (status, code, ews, channel) in cases {
            let f = graph_to_ews(&api(*status, code, None));
            assert_eq!((f.code, f.channel), (*ews, *channel), "{status} {code}");
        }
    }

    #[test]
    fn throttling_carries_the_back_off() {
        let f = graph_to_ews(&api(429, "ApplicationThrottled", Some(7)));
        assert_eq!(f.code, "ErrorServerBusy");
        assert_eq!(f.channel, Channel::Fault);
        assert_eq!(f.backoff, Some(Duration::from_secs(7)));
        let busy = graph_to_ews(&GraphError::Busy {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(busy.backoff, Some(Duration::from_millis(1500)));
    }
}
