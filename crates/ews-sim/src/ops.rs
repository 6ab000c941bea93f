//! EWS operations over the mailbox store.
//!
//! Contract with the EWS endpoint (`ews.rs`): the endpoint authenticates the bearer, resolves the
//! impersonated mailbox, checks policy and routing headers, parses the envelope, and then calls
//! [`dispatch`] with the first element of `s:Body`. What comes back is placed in a response
//! envelope (with `ServerVersionInfo`) by the endpoint, turned into a SOAP fault, or streamed.
//!
//! This module routes an operation to its submodule: `folders` (GetFolder, FindFolder,
//! SyncFolderHierarchy, CreateFolder, DeleteFolder), `items` (FindItem, GetItem, CreateItem, UpdateItem, DeleteItem, MoveItem,
//! CopyItem, SendItem, SyncFolderItems), `attachments`, `names` (ConvertId, ResolveNames) and
//! `notify` (Subscribe, GetStreamingEvents, Unsubscribe). `common` holds id resolution, the
//! delegate rule and response-message framing; `render` the property shapes.
//!
//! Validation choice: a request missing a child the schema requires (or with an attribute value
//! outside its enumeration) gets the SOAP fault `ErrorSchemaValidation`, as Exchange validates
//! requests against its XSD before running them; runtime refusals are ResponseMessage errors.

mod attachments;
mod common;
mod folders;
mod items;
mod names;
mod notify;
mod render;
mod restrict;

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
    /// The calling app's client id (lower case): Exchange ties subscriptions to the account that
    /// created them, for an app-only token the app, not the impersonated mailbox.
    pub app_id: String,
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
pub async fn dispatch(state: &Arc<SimState>, ctx: OpContext, op: &Element) -> OpOutcome {
    if op.ns.as_deref() != Some(ews_gateway_core::soap::NS_MESSAGES) {
        return not_simulated(&op.local);
    }
    let result = match op.local.as_str() {
        "ConvertId" => names::convert_id(&ctx, op),
        "ResolveNames" => names::resolve_names(&ctx, op),
        "GetFolder" => folders::get_folder(state, &ctx, op),
        "FindFolder" => folders::find_folder(state, &ctx, op),
        "SyncFolderHierarchy" => folders::sync_folder_hierarchy(state, &ctx, op),
        "CreateFolder" => folders::create_folder(state, &ctx, op),
        "DeleteFolder" => folders::delete_folder(state, &ctx, op),
        "FindItem" => items::find_item(state, &ctx, op),
        "GetItem" => items::get_item(state, &ctx, op),
        "CreateItem" => items::create_item(state, &ctx, op),
        "UpdateItem" => items::update_item(state, &ctx, op),
        "DeleteItem" => items::delete_item(state, &ctx, op),
        "MoveItem" => items::move_or_copy(state, &ctx, op, false),
        "CopyItem" => items::move_or_copy(state, &ctx, op, true),
        "SendItem" => items::send_item(state, &ctx, op),
        "SyncFolderItems" => items::sync_folder_items(state, &ctx, op),
        "CreateAttachment" => attachments::create_attachment(state, &ctx, op),
        "GetAttachment" => attachments::get_attachment(state, &ctx, op),
        "DeleteAttachment" => attachments::delete_attachment(state, &ctx, op),
        "Subscribe" => notify::subscribe(state, &ctx, op),
        "Unsubscribe" => notify::unsubscribe(state, &ctx, op),
        "GetStreamingEvents" => return notify::get_streaming_events(state, &ctx, op),
        other => return not_simulated(other),
    };
    match result {
        Ok(body) => OpOutcome::Body(body),
        Err(fault) => fault,
    }
}

fn not_simulated(name: &str) -> OpOutcome {
    OpOutcome::Fault {
        code: "ErrorInvalidOperation".to_owned(),
        message: format!("The operation {name} is not simulated."),
        message_xml: Vec::new(),
    }
}
