//! EWS operations over the mailbox store.
//!
//! Contract with the EWS endpoint (`ews.rs`): the endpoint authenticates the bearer, resolves the
//! impersonated mailbox, checks policy and routing headers, parses the envelope, and then calls
//! [`dispatch`] with the first element of `s:Body`. What comes back is placed in a response
//! envelope (with `ServerVersionInfo`) by the endpoint, turned into a SOAP fault, or streamed.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::SimState;
use super::directory::{Mailbox, Tenant};
use super::xml::Element;

/// Who is acting, as established by the endpoint.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// The tenant of the token and the mailbox.
    pub tenant: Tenant,
    /// The impersonated mailbox: its own rights apply.
    pub acting: Mailbox,
    /// `RequestServerVersion/@Version` as sent (already validated), `Exchange2013_SP1` when absent.
    pub server_version: String,
}

/// What an operation produced.
pub enum OpOutcome {
    /// Serialized content of `s:Body`: one element (e.g. `m:GetFolderResponse`) that declares
    /// the namespace prefixes it uses (`xmlns:m`, `xmlns:t`).
    Body(String),
    /// A SOAP fault (HTTP 500), e.g. for operations that are not simulated.
    Fault {
        /// EWS response code, e.g. `ErrorInvalidOperation`.
        code: String,
        /// Human text.
        message: String,
        /// `t:MessageXml/t:Value` pairs.
        message_xml: Vec<(String, String)>,
    },
    /// A streaming response (GetStreamingEvents): complete, unprefixed `<Envelope>` documents
    /// one after another, each yielded (and flushed) as it occurs; ends after `ConnectionStatus`
    /// `Closed`.
    Stream(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for OpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Body(b) => f.debug_tuple("Body").field(b).finish(),
            Self::Fault { code, message, .. } => f
                .debug_struct("Fault")
                .field("code", code)
                .field("message", message)
                .finish(),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Runs the operation `op` (the first child of `s:Body`) as `ctx.acting`.
pub async fn dispatch(_state: &Arc<SimState>, _ctx: OpContext, op: &Element) -> OpOutcome {
    OpOutcome::Fault {
        code: "ErrorInvalidOperation".to_owned(),
        message: format!("The operation {} is not simulated.", op.local),
        message_xml: Vec::new(),
    }
}
