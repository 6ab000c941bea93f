//! The EWS → Microsoft Graph translation backend's I/O-free core: reading the whole SOAP
//! request with bounded memory ([`xml`], [`spool`]), the typed request model ([`request`]), ids
//! ([`ids`]), mailbox-reference policing ([`police`]), the Graph → EWS error table
//! ([`errors`]), the response writer ([`writer`]), MIME ([`mime`]) and the operations over a
//! [`GraphPort`](crate::graph::GraphPort) ([`ops`]).

pub mod errors;
pub mod ids;
pub mod mime;
pub mod ops;
pub mod police;
pub mod request;
pub mod spool;
pub mod writer;
pub mod xml;

use std::io::BufRead;

pub use ops::{MailboxFacts, Translated, translate};
pub use police::Scope;

use errors::EwsFailure;
use request::Operation;

/// A request read and typed: the operation's name and what it asks (or why it cannot be read).
pub struct ParsedRequest {
    /// The operation's local name (for metrics, audit and the response element).
    pub operation: String,
    /// The typed operation, or a failure to answer with.
    pub parsed: Result<Operation, EwsFailure>,
}

/// Reads a whole SOAP request from `source`. A document that is not even an envelope with one
/// operation is an `Err` (answered with a fault).
pub fn read_request<R: BufRead>(
    source: R,
    limits: &xml::XmlLimits,
) -> Result<ParsedRequest, EwsFailure> {
    let root = xml::parse(source, limits).map_err(|e| match e {
        xml::XmlError::TooLarge(_) => EwsFailure::fault("ErrorMessageSizeExceeded", e.to_string()),
        xml::XmlError::Io(_) => EwsFailure::fault("ErrorInvalidRequest", e.to_string()),
        _ => EwsFailure::fault("ErrorSchemaValidation", e.to_string()),
    })?;
    let op = request::body_operation(&root)?;
    Ok(ParsedRequest {
        operation: op.local.clone(),
        parsed: request::parse_operation(op),
    })
}
