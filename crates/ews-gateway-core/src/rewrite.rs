//! Streaming, namespace-aware rewrite of the SOAP envelope start.
//!
//! This module owns the one security-critical transformation of the forward path: deciding which
//! mailbox the upstream request acts as. The upstream token can open every mailbox of the tenant,
//! so the `ExchangeImpersonation` header that Exchange sees must be exactly the one the gateway
//! chose. The module therefore:
//!
//! - reads the request body with a namespace-aware XML parser (quick-xml), never with string
//!   matching, up to and including the start tag of the first child of the SOAP `Body` (the EWS
//!   operation) — the *head*;
//! - refuses anything a second parser (Exchange's) could read differently: DTDs, undefined
//!   entities, non-UTF-8 input, malformed XML, duplicated or misplaced `Header`/`Body`, several or
//!   misplaced impersonation headers, privileged headers (see [`RewriteError`]);
//! - splices the bytes: the client's impersonation element (if any) is replaced, or one is
//!   inserted, and every other byte of the client's request is forwarded unchanged.
//!
//! # Memory bound
//!
//! [`PrefixScanner`] buffers at most [`RewriteLimits::max_prefix_bytes`] bytes of the body (64 KiB
//! by default; the buffer's capacity never exceeds it); a head that does not complete within that
//! many bytes is refused with [`RewriteError::HeadTooLarge`]. The chunk that completes the head may
//! extend past the limit: its part after the head is copied into the [`ScannedHead`], and
//! [`ScannedHead::rewrite`] builds one output buffer of the same size plus the inserted header. So
//! memory is O(`max_prefix_bytes` + one chunk) per request, whatever the body size (150 MB
//! attachments included); the rest of the body is streamed by the caller without passing through
//! this module. Parser state (element stack, namespace bindings) is bounded by the prefix too.
//!
//! # Chunking
//!
//! The scanner re-parses the buffered prefix from the start (bounded by the limit), and only when
//! the buffer has grown by at least an eighth since the last parse, so the total parsing work is a
//! small multiple of the prefix size even with one-byte chunks. A parse that reaches the end of
//! the buffer inside markup means "need more input", never an error. The decision (head position,
//! info, output bytes or error variant) depends only on the bytes, not on how they were chunked;
//! only *which* `push` call reports it may differ.
//!
//! # Not inspected
//!
//! Bytes after the head (the operation's content, anything after `</Body>`) are forwarded as they
//! are: an element after the Body (e.g. a second Header) is left to Exchange's SOAP stack, which
//! only reads headers before the Body. A document whose Body is empty is read to its end (at
//! [`PrefixScanner::finish`]) and so is checked entirely.
//!
//! No HTTP types here: the proxy feeds body chunks and maps [`RewriteError::code`] to a SOAP fault.

use bytes::{Bytes, BytesMut};
use quick_xml::NsReader;
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;

use crate::soap::{ConnectingSid, ConnectingSidKind, NS_MESSAGES, NS_SOAP, NS_SOAP12, NS_TYPES};

/// Default bound on the buffered envelope head.
pub const DEFAULT_MAX_PREFIX_BYTES: usize = 64 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Local names of headers that let a caller act with more than impersonation rights. Compared
/// ASCII-case-insensitively, in any namespace; any local name starting with `Proxy` also counts.
const PRIVILEGED_HEADERS: &[&str] = &[
    "SerializedSecurityContext",
    "OpenAsAdminOrSystemService",
    "ProxySecurityContext",
    "ProxySuggesterSid",
    "ProxyPartnerToken",
    "ManagementRole",
    "SharingSecurity",
];

/// Limits applied while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteLimits {
    /// Most bytes buffered before the head must be complete.
    pub max_prefix_bytes: usize,
}

impl Default for RewriteLimits {
    fn default() -> Self {
        Self {
            max_prefix_bytes: DEFAULT_MAX_PREFIX_BYTES,
        }
    }
}

/// SOAP version of the envelope (both are accepted; the rewrite keeps the client's version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    /// `http://schemas.xmlsoap.org/soap/envelope/`
    Soap11,
    /// `http://www.w3.org/2003/05/soap-envelope`
    Soap12,
}

impl SoapVersion {
    /// The envelope namespace URI.
    pub fn namespace(self) -> &'static str {
        match self {
            Self::Soap11 => NS_SOAP,
            Self::Soap12 => NS_SOAP12,
        }
    }
}

/// What the head says about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    /// SOAP 1.1 or 1.2.
    pub soap_version: SoapVersion,
    /// The client's `ExchangeImpersonation`, if it sent one (it is replaced by the rewrite). The
    /// value is the element's character data as XML defines it — text, CDATA sections and
    /// references concatenated, comments and PIs skipped — trimmed. This is unambiguous and, as
    /// the client's element never reaches Exchange, only informs the gateway's policy.
    pub client_impersonation: Option<ConnectingSid>,
    /// Local name of the first child of `Body` (in the EWS messages namespace), e.g. `FindItem`;
    /// `None` when the Body is empty.
    pub operation: Option<String>,
    /// `Version` attribute of the first `t:RequestServerVersion` header, unescaped.
    pub request_server_version: Option<String>,
}

/// Why a request body was refused. Each message is a sentence fit for a SOAP fault sent to the
/// client; [`RewriteError::code`] gives the EWS response code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The body is not UTF-8 (UTF-16/32 byte-order mark, NUL characters, invalid sequences).
    #[error("The request must be encoded in UTF-8: {0}.")]
    NotUtf8(&'static str),
    /// The XML declaration names an encoding other than UTF-8.
    #[error("The request declares the encoding '{0}'; only UTF-8 is accepted.")]
    UnsupportedEncoding(String),
    /// A DOCTYPE (and with it any entity declaration) was found.
    #[error(
        "The request contains a DOCTYPE declaration; DTDs and entity declarations are not accepted."
    )]
    Doctype,
    /// A reference to an entity other than the five predefined ones.
    #[error("The request references the undefined entity '&{0};'.")]
    UndefinedEntity(String),
    /// The body is not well-formed XML (or not namespace-well-formed).
    #[error("The request is not well-formed XML: {0}.")]
    Malformed(String),
    /// The body ended before the SOAP envelope was complete.
    #[error("The request body ended before the SOAP envelope was complete.")]
    Truncated,
    /// The head did not complete within the limit.
    #[error(
        "The SOAP envelope up to the operation element is larger than the gateway accepts ({limit} bytes)."
    )]
    HeadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Something other than comments, processing instructions or whitespace precedes the root.
    #[error("The request has content before the SOAP Envelope element.")]
    ContentBeforeEnvelope,
    /// The root element is not a SOAP 1.1 or 1.2 Envelope.
    #[error("The root element {0} is not a SOAP Envelope.")]
    NotSoapEnvelope(String),
    /// An element directly under Envelope other than the SOAP Header and Body.
    #[error("The SOAP Envelope contains the unexpected element {0}.")]
    UnknownEnvelopeChild(String),
    /// Character data where SOAP allows only elements.
    #[error("The SOAP {0} element contains text; only elements are allowed there.")]
    UnexpectedText(&'static str),
    /// A second SOAP Header.
    #[error("The SOAP Envelope contains more than one Header.")]
    DuplicateHeader,
    /// A SOAP Header after the Body.
    #[error("The SOAP Header must come before the Body.")]
    HeaderAfterBody,
    /// A second SOAP Body.
    #[error("The SOAP Envelope contains more than one Body.")]
    DuplicateBody,
    /// The Envelope closed without a Body.
    #[error("The SOAP Envelope has no Body.")]
    MissingBody,
    /// The first child of Body is not in the EWS messages namespace.
    #[error("The SOAP Body element {0} is not an Exchange Web Services operation.")]
    NotAnEwsOperation(String),
    /// More than one `ExchangeImpersonation` header.
    #[error("The request contains more than one ExchangeImpersonation header.")]
    DuplicateImpersonation,
    /// An `ExchangeImpersonation` element somewhere other than directly under the Header.
    #[error(
        "An ExchangeImpersonation element appears {0}; it is only allowed directly in the SOAP Header."
    )]
    MisplacedImpersonation(&'static str),
    /// An element named like `ExchangeImpersonation` in a namespace (or spelling) that is not the
    /// EWS types one: ambiguous.
    #[error(
        "The element {0} is not the EWS ExchangeImpersonation header (wrong namespace or spelling)."
    )]
    ForeignImpersonation(String),
    /// The client's `ExchangeImpersonation/ConnectingSID` is not exactly one non-empty identity.
    #[error("The ExchangeImpersonation header is invalid: {0}.")]
    MalformedConnectingSid(String),
    /// A header that grants more than impersonation.
    #[error("The request contains the privileged header {0}, which the gateway does not accept.")]
    PrivilegedHeader(String),
    /// `push` or `finish` called after the scanner already produced its head (a caller bug).
    #[error("The request scanner was used after it completed.")]
    ScannerFinished,
}

impl RewriteError {
    /// The EWS response code for the SOAP fault:
    /// - `ErrorInvalidRequest` — the body cannot be read as a safe XML document (encoding, DTD,
    ///   entities, malformed, truncated, too large, not an envelope); what Exchange answers to an
    ///   unparseable body;
    /// - `ErrorSchemaValidation` — well-formed XML that is not a valid EWS SOAP envelope;
    /// - `ErrorInvalidExchangeImpersonationHeaderData` — the client's impersonation header is
    ///   duplicated, misplaced, foreign or malformed;
    /// - `ErrorAccessDenied` — a privileged header;
    /// - `ErrorInternalServerError` — [`RewriteError::ScannerFinished`] (gateway bug).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotUtf8(_)
            | Self::UnsupportedEncoding(_)
            | Self::Doctype
            | Self::UndefinedEntity(_)
            | Self::Malformed(_)
            | Self::Truncated
            | Self::HeadTooLarge { .. }
            | Self::ContentBeforeEnvelope
            | Self::NotSoapEnvelope(_) => "ErrorInvalidRequest",
            Self::UnknownEnvelopeChild(_)
            | Self::UnexpectedText(_)
            | Self::DuplicateHeader
            | Self::HeaderAfterBody
            | Self::DuplicateBody
            | Self::MissingBody
            | Self::NotAnEwsOperation(_) => "ErrorSchemaValidation",
            Self::DuplicateImpersonation
            | Self::MisplacedImpersonation(_)
            | Self::ForeignImpersonation(_)
            | Self::MalformedConnectingSid(_) => "ErrorInvalidExchangeImpersonationHeaderData",
            Self::PrivilegedHeader(_) => "ErrorAccessDenied",
            Self::ScannerFinished => "ErrorInternalServerError",
        }
    }
}

/// Where the target impersonation goes; offsets are into the buffered prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    /// Replace the client's `ExchangeImpersonation` element `start..end`.
    Replace { start: usize, end: usize },
    /// Insert just before the Header end tag.
    InsertAt { at: usize },
    /// `<x:Header .../>` at `start..end` becomes `<x:Header ...>` + element + `</x:Header>`.
    ExpandEmptyHeader {
        start: usize,
        end: usize,
        qname: String,
    },
    /// No Header: insert `<p:Header>` + element + `</p:Header>` after the Envelope start tag.
    CreateHeader { at: usize, qname: String },
}

/// The outcome of one parse of the buffered prefix.
struct HeadPlan {
    /// Offset in the buffer just after the head.
    end: usize,
    info: HeadInfo,
    edit: Edit,
}

/// The scanned envelope head, ready to be rewritten.
#[derive(Debug)]
pub struct ScannedHead {
    info: HeadInfo,
    /// The head bytes as the client sent them.
    prefix: Bytes,
    /// Bytes consumed after the head (forwarded unchanged).
    rest: Bytes,
    edit: Edit,
}

impl ScannedHead {
    /// What the head says about the request.
    pub fn info(&self) -> &HeadInfo {
        &self.info
    }

    /// How many of the client's bytes the head is (everything up to the end of the operation's
    /// start tag, or the whole document when the Body is empty): the part the gateway checked.
    pub fn head_len(&self) -> usize {
        self.prefix.len()
    }

    /// The bytes to send upstream in place of everything consumed so far: the consumed bytes with
    /// the client's `ExchangeImpersonation` element (if any) replaced by exactly one `target`
    /// impersonation as a child of the SOAP Header (a Header is created right after the Envelope
    /// start tag when absent; `<s:Header/>` becomes `<s:Header>..</s:Header>`). Every other byte
    /// is unchanged. Later body chunks are to be forwarded unchanged after these bytes.
    pub fn rewrite(self, target: &ConnectingSid) -> Bytes {
        let element = target.to_header_xml();
        let prefix = &self.prefix[..];
        let mut out = BytesMut::with_capacity(prefix.len() + self.rest.len() + element.len() + 64);
        match &self.edit {
            Edit::Replace { start, end } => {
                out.extend_from_slice(&prefix[..*start]);
                out.extend_from_slice(element.as_bytes());
                out.extend_from_slice(&prefix[*end..]);
            }
            Edit::InsertAt { at } => {
                out.extend_from_slice(&prefix[..*at]);
                out.extend_from_slice(element.as_bytes());
                out.extend_from_slice(&prefix[*at..]);
            }
            Edit::ExpandEmptyHeader { start, end, qname } => {
                // The empty-element tag ends with exactly `/>` (quick-xml only reports `Empty` then).
                out.extend_from_slice(&prefix[..end - 2]);
                out.extend_from_slice(b">");
                out.extend_from_slice(element.as_bytes());
                out.extend_from_slice(format!("</{qname}>").as_bytes());
                out.extend_from_slice(&prefix[*end..]);
                debug_assert!(*start < *end);
            }
            Edit::CreateHeader { at, qname } => {
                out.extend_from_slice(&prefix[..*at]);
                out.extend_from_slice(format!("<{qname}>").as_bytes());
                out.extend_from_slice(element.as_bytes());
                out.extend_from_slice(format!("</{qname}>").as_bytes());
                out.extend_from_slice(&prefix[*at..]);
            }
        }
        out.extend_from_slice(&self.rest);
        out.freeze()
    }

    /// Everything consumed so far, exactly as the client sent it (for a backend that reads the
    /// whole request instead of forwarding it).
    pub fn into_original(self) -> Bytes {
        if self.rest.is_empty() {
            return self.prefix;
        }
        let mut out = BytesMut::with_capacity(self.prefix.len() + self.rest.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.rest);
        out.freeze()
    }
}

#[derive(Debug)]
enum ScannerState {
    Scanning,
    Failed(RewriteError),
    Done,
}

/// Incremental scanner for the envelope head. See the module docs for the memory bound.
#[derive(Debug)]
pub struct PrefixScanner {
    limits: RewriteLimits,
    buf: Vec<u8>,
    /// Skip re-parsing until the buffer reaches this length (keeps total work linear).
    next_scan_at: usize,
    state: ScannerState,
}

impl PrefixScanner {
    /// A scanner with the given limits.
    pub fn new(limits: RewriteLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            next_scan_at: 0,
            state: ScannerState::Scanning,
        }
    }

    /// Feed the next body chunk. `Ok(None)`: need more input (the head may already be buffered
    /// but not yet parsed; it is then reported by a later `push` or by [`Self::finish`]).
    /// `Ok(Some(head))`: the head is complete; this chunk is consumed entirely (the bytes after the
    /// head are inside the [`ScannedHead`]). After `Some` or an error the scanner is spent.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<ScannedHead>, RewriteError> {
        match &self.state {
            ScannerState::Scanning => {}
            ScannerState::Failed(e) => return Err(e.clone()),
            ScannerState::Done => return Err(RewriteError::ScannerFinished),
        }
        let limit = self.limits.max_prefix_bytes;
        let take = chunk.len().min(limit.saturating_sub(self.buf.len()));
        // Grow geometrically (amortised copies) but never past the limit.
        let needed = self.buf.len() + take;
        if needed > self.buf.capacity() {
            let target = needed.max(self.buf.capacity() * 2).min(limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&chunk[..take]);
        let overflow = &chunk[take..];
        let full = self.buf.len() >= limit;
        if !full && self.buf.len() < self.next_scan_at {
            return Ok(None);
        }
        match scan(&self.buf, false) {
            Ok(Some(plan)) => Ok(Some(self.complete(plan, overflow))),
            Ok(None) if full => Err(self.fail(RewriteError::HeadTooLarge { limit })),
            Ok(None) => {
                let len = self.buf.len();
                self.next_scan_at = len + (len / 8).max(1);
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The body ended. Returns the head if the document is complete enough (e.g. a Body with no
    /// child), or the error explaining what is missing or truncated.
    pub fn finish(mut self) -> Result<ScannedHead, RewriteError> {
        match &self.state {
            ScannerState::Scanning => {}
            ScannerState::Failed(e) => return Err(e.clone()),
            ScannerState::Done => return Err(RewriteError::ScannerFinished),
        }
        match scan(&self.buf, true) {
            Ok(Some(plan)) => Ok(self.complete(plan, &[])),
            // A final scan never asks for more; treat it as truncation defensively.
            Ok(None) => Err(RewriteError::Truncated),
            Err(e) => Err(e),
        }
    }

    fn fail(&mut self, e: RewriteError) -> RewriteError {
        self.buf = Vec::new();
        self.state = ScannerState::Failed(e.clone());
        e
    }

    fn complete(&mut self, plan: HeadPlan, overflow: &[u8]) -> ScannedHead {
        let mut buf = std::mem::take(&mut self.buf);
        self.state = ScannerState::Done;
        let mut rest = Vec::with_capacity(buf.len() - plan.end + overflow.len());
        rest.extend_from_slice(&buf[plan.end..]);
        rest.extend_from_slice(overflow);
        buf.truncate(plan.end);
        ScannedHead {
            info: plan.info,
            prefix: Bytes::from(buf),
            rest: Bytes::from(rest),
            edit: plan.edit,
        }
    }
}

/// Parses `buf` from the start. `Ok(None)`: the head is not complete within `buf` (only when
/// `at_end` is false).
fn scan(buf: &[u8], at_end: bool) -> Result<Option<HeadPlan>, RewriteError> {
    let need_more = || {
        if at_end {
            Err(RewriteError::Truncated)
        } else {
            Ok(None)
        }
    };
    let Some(&first) = buf.first() else {
        return need_more();
    };
    // 0xFE/0xFF never start UTF-8; they start UTF-16/32 byte-order marks. Decided on one byte so
    // that the verdict does not depend on chunking.
    if first == 0xFE || first == 0xFF {
        return Err(RewriteError::NotUtf8(
            "the body starts with a UTF-16 or UTF-32 byte-order mark",
        ));
    }
    let base = if buf.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else if UTF8_BOM.starts_with(buf) {
        return need_more();
    } else {
        0
    };
    let doc = &buf[base..];
    // After the one BOM the prolog may only start with `<` or whitespace. quick-xml would skip a
    // second BOM when it sees it whole but not when a chunk ends inside it, and Exchange reads it
    // as a character before the root: refuse it, decided on its first byte.
    if doc.first() == Some(&0xEF) {
        return Err(RewriteError::ContentBeforeEnvelope);
    }
    // Parse only the longest valid UTF-8 prefix without NUL; if the parse needs bytes beyond a
    // definitely invalid byte, that byte is the error.
    let (valid, invalid) = match std::str::from_utf8(doc) {
        Ok(_) => (doc.len(), None),
        // An incomplete sequence at the very end is truncation, not an encoding error.
        Err(e) if e.error_len().is_some() => (
            e.valid_up_to(),
            Some("the body contains a byte sequence that is not valid UTF-8"),
        ),
        Err(e) => (e.valid_up_to(), None),
    };
    // A character XML 1.0 forbids (NUL and the other C0 controls but tab/LF/CR, U+FFFE, U+FFFF)
    // is treated like an invalid byte: the parse stops before it, and it is the error only if
    // the head needs the bytes beyond it, so the verdict does not depend on chunking.
    let (valid, invalid) = match crate::wellformed::first_forbidden_char(&doc[..valid]) {
        Some((at, '\0')) => (
            at,
            Some(RewriteError::NotUtf8(
                "the body contains a NUL character (UTF-16 or UTF-32 text?)",
            )),
        ),
        Some((at, ch)) => (
            at,
            Some(RewriteError::Malformed(format!(
                "the character U+{:04X} is not allowed in XML 1.0 (at byte {})",
                u32::from(ch),
                at + base
            ))),
        ),
        None => (valid, invalid.map(RewriteError::NotUtf8)),
    };
    let parse_at_end = at_end && valid == doc.len();
    match Parser::new(&doc[..valid], base, parse_at_end).run()? {
        Some(plan) => Ok(Some(plan)),
        None => match invalid {
            Some(err) => Err(err),
            None => need_more(),
        },
    }
}

/// What an open element is, as far as the rewrite cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Envelope,
    Header,
    Body,
    /// A header block other than the impersonation, or anything nested in one.
    Block,
    Impersonation,
    ConnectingSid,
    SidValue,
}

impl Frame {
    fn name(self) -> &'static str {
        match self {
            Self::Envelope => "Envelope",
            Self::Header => "Header",
            Self::Body => "Body",
            Self::Block => "header",
            Self::Impersonation => "ExchangeImpersonation",
            Self::ConnectingSid => "ConnectingSID",
            Self::SidValue => "ConnectingSID value",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderSeen {
    None,
    Empty {
        start: usize,
        end: usize,
        qname: String,
    },
    Open,
    Closed {
        end_tag: usize,
    },
}

/// The client's impersonation header being read.
#[derive(Debug, Default)]
struct ClientImpersonation {
    start: usize,
    end: usize,
    has_connecting_sid: bool,
    kind: Option<ConnectingSidKind>,
    value: String,
    done: bool,
}

/// One parse of the buffered prefix. Offsets from the reader are relative to `doc`; `base` (the
/// UTF-8 BOM length) converts them to buffer offsets.
struct Parser<'a> {
    reader: NsReader<&'a [u8]>,
    doc_len: usize,
    base: usize,
    at_end: bool,
    stack: Vec<Frame>,
    soap: Option<SoapVersion>,
    /// Buffer offset just after the Envelope start tag, and the Envelope's prefix.
    envelope_end: usize,
    envelope_prefix: Option<String>,
    root_closed: bool,
    header: HeaderSeen,
    body_seen: bool,
    imp: Option<ClientImpersonation>,
    request_server_version: Option<String>,
}

fn is_xml_whitespace(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn is_privileged(local: &str) -> bool {
    PRIVILEGED_HEADERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(local))
        || local
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("Proxy"))
}

fn display_name(ns: Option<&str>, local: &str) -> String {
    match ns {
        Some(ns) => format!("{{{ns}}}{local}"),
        None => local.to_owned(),
    }
}

fn escape_error(e: XmlError) -> RewriteError {
    match e {
        XmlError::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            RewriteError::UndefinedEntity(name)
        }
        other => RewriteError::Malformed(other.to_string()),
    }
}

impl<'a> Parser<'a> {
    fn new(doc: &'a [u8], base: usize, at_end: bool) -> Self {
        let mut reader = NsReader::from_reader(doc);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        Self {
            reader,
            doc_len: doc.len(),
            base,
            at_end,
            stack: Vec::new(),
            soap: None,
            envelope_end: 0,
            envelope_prefix: None,
            root_closed: false,
            header: HeaderSeen::None,
            body_seen: false,
            imp: None,
            request_server_version: None,
        }
    }

    fn position(&self) -> usize {
        usize::try_from(self.reader.buffer_position()).unwrap_or(usize::MAX)
    }

    /// Maps a reader error to a refusal, or to `None` when it only means the input stops inside
    /// markup (need more input).
    fn reader_error(&self, e: XmlError) -> Option<RewriteError> {
        let at_eof = self.position() >= self.doc_len;
        let err_pos = usize::try_from(self.reader.error_position()).unwrap_or(usize::MAX);
        match e {
            // `<!D...` is a DOCTYPE whether or not its `>` has arrived.
            XmlError::Syntax(SyntaxError::UnclosedDoctype)
            | XmlError::IllFormed(IllFormedError::MissingDoctypeName) => {
                Some(RewriteError::Doctype)
            }
            // A lone `<` or `<!` as the last bytes: the kind of markup is not known yet (the
            // reader reports these without consuming them).
            XmlError::Syntax(_) if self.doc_len.saturating_sub(err_pos) <= 2 => {
                self.at_end.then_some(RewriteError::Truncated)
            }
            // On a slice, syntax errors and unclosed references that consumed the rest of the
            // input mean the input ends inside the construct.
            XmlError::Syntax(_) | XmlError::IllFormed(IllFormedError::UnclosedReference)
                if at_eof =>
            {
                self.at_end.then_some(RewriteError::Truncated)
            }
            other => Some(RewriteError::Malformed(format!(
                "{other} (at byte {})",
                err_pos + self.base
            ))),
        }
    }

    fn run(mut self) -> Result<Option<HeadPlan>, RewriteError> {
        loop {
            let before = self.position() + self.base;
            let (resolved, event) = match self.reader.read_resolved_event() {
                Ok(x) => x,
                Err(e) => {
                    return match self.reader_error(e) {
                        Some(err) => Err(err),
                        None => Ok(None),
                    };
                }
            };
            let ns = match (&event, resolved) {
                (Event::Start(_) | Event::Empty(_), ResolveResult::Bound(ns)) => {
                    Some(ns.as_ref().to_owned())
                }
                (Event::Start(_) | Event::Empty(_), ResolveResult::Unknown(prefix)) => {
                    return Err(RewriteError::Malformed(format!(
                        "undeclared namespace prefix '{prefix}' (at byte {before})"
                    )));
                }
                _ => None,
            };
            let after = self.position() + self.base;
            match event {
                Event::Start(start) => {
                    if let Some(plan) = self.element(&start, ns.as_deref(), before, after, false)? {
                        return Ok(Some(plan));
                    }
                }
                Event::Empty(start) => {
                    if let Some(plan) = self.element(&start, ns.as_deref(), before, after, true)? {
                        return Ok(Some(plan));
                    }
                }
                Event::End(end) => {
                    crate::wellformed::check_end_tag(&end).map_err(malformed_at(before))?;
                    self.end(before, after)?
                }
                Event::Text(text) => {
                    // Where the text sits is judged first: a chunk may end inside the text, and
                    // whether text is allowed here is already decided by its first bytes, while
                    // `]]>` may only appear later; the other order would make the refusal depend
                    // on chunking.
                    self.text(&text.xml10_content(), false)?;
                    crate::wellformed::check_text(&text).map_err(malformed_at(before))?;
                }
                Event::CData(cdata) => self.text(&cdata.xml10_content(), false)?,
                Event::GeneralRef(reference) => {
                    let ch = resolve_reference(&reference)?;
                    self.text(ch.encode_utf8(&mut [0; 4]), true)?;
                }
                Event::Decl(decl) => {
                    if before != self.base {
                        return Err(RewriteError::Malformed(format!(
                            "the XML declaration is not at the start of the document (at byte {before})"
                        )));
                    }
                    let encoding =
                        crate::wellformed::check_xml_decl(&decl).map_err(malformed_at(before))?;
                    if let Some(encoding) = encoding
                        && !encoding.eq_ignore_ascii_case("utf-8")
                    {
                        return Err(RewriteError::UnsupportedEncoding(encoding.to_owned()));
                    }
                }
                Event::DocType(_) => return Err(RewriteError::Doctype),
                // Comments and processing instructions carry no SOAP meaning; kept byte-identical.
                Event::Comment(_) => {}
                Event::PI(pi) => {
                    crate::wellformed::check_pi(&pi).map_err(malformed_at(before))?;
                }
                Event::Eof => return self.eof(),
            }
        }
    }

    fn eof(&mut self) -> Result<Option<HeadPlan>, RewriteError> {
        if !self.at_end {
            return Ok(None);
        }
        if !self.root_closed {
            return Err(RewriteError::Truncated);
        }
        // Complete document whose Body had no child element.
        let end = self.doc_len + self.base;
        self.plan(end, None).map(Some)
    }

    /// Builds the plan once the head is known to be complete.
    fn plan(&mut self, end: usize, operation: Option<String>) -> Result<HeadPlan, RewriteError> {
        let Some(soap_version) = self.soap else {
            return Err(RewriteError::Truncated);
        };
        let (client_impersonation, replace) = match self.imp.take() {
            Some(imp) => {
                let Some(kind) = imp.kind.filter(|_| imp.done) else {
                    return Err(RewriteError::Truncated);
                };
                (
                    Some(ConnectingSid {
                        kind,
                        value: imp.value.trim().to_owned(),
                    }),
                    Some((imp.start, imp.end)),
                )
            }
            None => (None, None),
        };
        let edit = match (
            replace,
            std::mem::replace(&mut self.header, HeaderSeen::None),
        ) {
            (Some((start, end)), _) => Edit::Replace { start, end },
            (None, HeaderSeen::Closed { end_tag }) => Edit::InsertAt { at: end_tag },
            (None, HeaderSeen::Empty { start, end, qname }) => {
                Edit::ExpandEmptyHeader { start, end, qname }
            }
            // The head always ends after the Header closed; an open Header cannot reach here.
            (None, HeaderSeen::Open) => return Err(RewriteError::Truncated),
            (None, HeaderSeen::None) => Edit::CreateHeader {
                at: self.envelope_end,
                // The scope right after the Envelope start tag is the Envelope's own, so its
                // prefix (or default namespace) names the SOAP namespace there.
                qname: match self.envelope_prefix.take() {
                    Some(prefix) => format!("{prefix}:Header"),
                    None => "Header".to_owned(),
                },
            },
        };
        Ok(HeadPlan {
            end,
            info: HeadInfo {
                soap_version,
                client_impersonation,
                operation,
                request_server_version: self.request_server_version.take(),
            },
            edit,
        })
    }

    /// Validates every attribute (duplicates, syntax, entities, prefixes) so that no other
    /// parser can read the tag differently; returns the unprefixed `Version` value if asked.
    fn attributes(
        &self,
        start: &BytesStart<'_>,
        want_version: bool,
    ) -> Result<Option<String>, RewriteError> {
        let mut version = None;
        crate::wellformed::check_start_tag(start)
            .map_err(|why| RewriteError::Malformed(format!("{why} in a start tag")))?;
        // Expanded names (namespace, local name) seen, to refuse `a:x` and `b:x` bound to one
        // namespace (Namespaces in XML 1.0, 6.3); a start tag has few attributes.
        let mut expanded: Vec<(Option<String>, String)> = Vec::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| RewriteError::Malformed(format!("bad attribute: {e}")))?;
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(escape_error)?;
            if !value.chars().all(crate::wellformed::is_char) {
                return Err(RewriteError::Malformed(
                    "an attribute value references a character XML 1.0 does not allow".into(),
                ));
            }
            if let Some(binding) = attr.key.as_namespace_binding() {
                let prefix = match binding {
                    quick_xml::name::PrefixDeclaration::Default => None,
                    quick_xml::name::PrefixDeclaration::Named(p) => Some(p),
                };
                crate::wellformed::check_namespace_binding(prefix, &value)
                    .map_err(RewriteError::Malformed)?;
                continue;
            }
            let (resolved, local) = self.reader.resolver().resolve_attribute(attr.key);
            let ns = match resolved {
                ResolveResult::Unknown(prefix) => {
                    return Err(RewriteError::Malformed(format!(
                        "undeclared namespace prefix '{prefix}' on an attribute"
                    )));
                }
                ResolveResult::Bound(ns) => Some(ns.as_ref().to_owned()),
                ResolveResult::Unbound => None,
            };
            let name = (ns, local.as_ref().to_owned());
            if expanded.contains(&name) {
                return Err(RewriteError::Malformed(format!(
                    "the attribute {} appears twice (after namespace resolution)",
                    display_name(name.0.as_deref(), &name.1)
                )));
            }
            expanded.push(name);
            if want_version && attr.key.as_ref() == "Version" && version.is_none() {
                version = Some(value.into_owned());
            }
        }
        Ok(version)
    }

    fn element(
        &mut self,
        start: &BytesStart<'_>,
        ns: Option<&str>,
        before: usize,
        after: usize,
        empty: bool,
    ) -> Result<Option<HeadPlan>, RewriteError> {
        let local = start.local_name().as_ref().to_owned();
        if start.name().prefix().is_some_and(|p| p.as_ref() == "xmlns") {
            return Err(RewriteError::Malformed(
                "an element name uses the reserved prefix 'xmlns'".into(),
            ));
        }
        let is_rsv = ns == Some(NS_TYPES) && local == "RequestServerVersion";
        let version = self.attributes(start, is_rsv)?;
        let names_impersonation = local.eq_ignore_ascii_case("ExchangeImpersonation");
        let Some(&parent) = self.stack.last() else {
            return self.root(start, ns, &local, after, empty).map(|()| None);
        };
        if parent != Frame::Envelope {
            if is_privileged(&local) {
                return Err(RewriteError::PrivilegedHeader(display_name(ns, &local)));
            }
            if names_impersonation
                && !(parent == Frame::Header
                    && ns == Some(NS_TYPES)
                    && local == "ExchangeImpersonation")
            {
                return Err(match parent {
                    Frame::Header => RewriteError::ForeignImpersonation(display_name(ns, &local)),
                    Frame::Body => RewriteError::MisplacedImpersonation("in the SOAP Body"),
                    _ => RewriteError::MisplacedImpersonation("nested inside another element"),
                });
            }
        }
        let malformed_sid = |why: String| Err(RewriteError::MalformedConnectingSid(why));
        let push = match parent {
            Frame::Envelope => {
                let soap = self.soap.map(SoapVersion::namespace);
                let in_soap = ns.is_some() && ns == soap;
                if in_soap && local == "Header" {
                    if self.body_seen {
                        return Err(RewriteError::HeaderAfterBody);
                    }
                    if self.header != HeaderSeen::None {
                        return Err(RewriteError::DuplicateHeader);
                    }
                    self.header = if empty {
                        HeaderSeen::Empty {
                            start: before,
                            end: after,
                            qname: start.name().as_ref().to_owned(),
                        }
                    } else {
                        HeaderSeen::Open
                    };
                    Frame::Header
                } else if in_soap && local == "Body" {
                    if self.body_seen {
                        return Err(RewriteError::DuplicateBody);
                    }
                    self.body_seen = true;
                    Frame::Body
                } else {
                    return Err(RewriteError::UnknownEnvelopeChild(display_name(ns, &local)));
                }
            }
            Frame::Header if names_impersonation => {
                if self.imp.is_some() {
                    return Err(RewriteError::DuplicateImpersonation);
                }
                if empty {
                    return malformed_sid("it has no ConnectingSID".into());
                }
                self.imp = Some(ClientImpersonation {
                    start: before,
                    ..ClientImpersonation::default()
                });
                Frame::Impersonation
            }
            Frame::Header => {
                if is_rsv && self.request_server_version.is_none() {
                    self.request_server_version = version;
                }
                Frame::Block
            }
            Frame::Body => {
                if ns != Some(NS_MESSAGES) {
                    return Err(RewriteError::NotAnEwsOperation(display_name(ns, &local)));
                }
                return self.plan(after, Some(local)).map(Some);
            }
            Frame::Block => Frame::Block,
            Frame::Impersonation => {
                let Some(imp) = self.imp.as_mut() else {
                    return Err(RewriteError::Truncated);
                };
                if ns != Some(NS_TYPES) || local != "ConnectingSID" {
                    return malformed_sid(format!(
                        "unexpected element {} in ExchangeImpersonation",
                        display_name(ns, &local)
                    ));
                }
                if imp.has_connecting_sid {
                    return malformed_sid("it has more than one ConnectingSID".into());
                }
                if empty {
                    return malformed_sid("ConnectingSID is empty".into());
                }
                imp.has_connecting_sid = true;
                Frame::ConnectingSid
            }
            Frame::ConnectingSid => {
                let Some(imp) = self.imp.as_mut() else {
                    return Err(RewriteError::Truncated);
                };
                let kind = ns
                    .filter(|ns| *ns == NS_TYPES)
                    .and_then(|_| ConnectingSidKind::from_element_name(&local));
                let Some(kind) = kind else {
                    return malformed_sid(format!(
                        "unknown ConnectingSID child {}",
                        display_name(ns, &local)
                    ));
                };
                if imp.kind.is_some() {
                    return malformed_sid("ConnectingSID names more than one identity".into());
                }
                if empty {
                    return malformed_sid(format!("{} is empty", kind.element_name()));
                }
                imp.kind = Some(kind);
                Frame::SidValue
            }
            Frame::SidValue => {
                return malformed_sid(format!(
                    "the identity value contains the element {}",
                    display_name(ns, &local)
                ));
            }
        };
        if !empty {
            self.stack.push(push);
        }
        Ok(None)
    }

    fn root(
        &mut self,
        start: &BytesStart<'_>,
        ns: Option<&str>,
        local: &str,
        after: usize,
        empty: bool,
    ) -> Result<(), RewriteError> {
        if self.root_closed {
            return Err(RewriteError::Malformed(
                "there is content after the root element".into(),
            ));
        }
        let soap = match ns {
            Some(NS_SOAP) if local == "Envelope" => SoapVersion::Soap11,
            Some(NS_SOAP12) if local == "Envelope" => SoapVersion::Soap12,
            _ => return Err(RewriteError::NotSoapEnvelope(display_name(ns, local))),
        };
        if empty {
            return Err(RewriteError::MissingBody);
        }
        self.soap = Some(soap);
        self.envelope_end = after;
        self.envelope_prefix = start.name().prefix().map(|p| p.as_ref().to_owned());
        self.stack.push(Frame::Envelope);
        Ok(())
    }

    fn end(&mut self, before: usize, after: usize) -> Result<(), RewriteError> {
        let Some(frame) = self.stack.pop() else {
            return Err(RewriteError::Malformed(format!(
                "unexpected end tag (at byte {before})"
            )));
        };
        let malformed_sid = |why: &str| Err(RewriteError::MalformedConnectingSid(why.into()));
        match frame {
            Frame::Envelope => {
                self.root_closed = true;
                if !self.body_seen {
                    return Err(RewriteError::MissingBody);
                }
            }
            Frame::Header => self.header = HeaderSeen::Closed { end_tag: before },
            Frame::Body | Frame::Block => {}
            Frame::Impersonation => {
                if let Some(imp) = self.imp.as_mut() {
                    if !imp.has_connecting_sid {
                        return malformed_sid("it has no ConnectingSID");
                    }
                    imp.end = after;
                    imp.done = true;
                }
            }
            Frame::ConnectingSid => {
                if self.imp.as_ref().is_none_or(|imp| imp.kind.is_none()) {
                    return malformed_sid("ConnectingSID names no identity");
                }
            }
            Frame::SidValue => {
                if self
                    .imp
                    .as_ref()
                    .is_none_or(|imp| imp.value.trim().is_empty())
                {
                    return malformed_sid("the identity value is empty");
                }
            }
        }
        Ok(())
    }

    /// Character data (text, CDATA, resolved references). A reference is never ignorable
    /// whitespace, even `&#32;`: only literal whitespace may sit between SOAP elements.
    fn text(&mut self, text: &str, reference: bool) -> Result<(), RewriteError> {
        let blank = !reference && is_xml_whitespace(text);
        match self.stack.last() {
            None if blank => Ok(()),
            None if self.root_closed => Err(RewriteError::Malformed(
                "there is text after the root element".into(),
            )),
            None => Err(RewriteError::ContentBeforeEnvelope),
            Some(Frame::Block) => Ok(()),
            Some(Frame::SidValue) => {
                if let Some(imp) = self.imp.as_mut() {
                    imp.value.push_str(text);
                }
                Ok(())
            }
            Some(_) if blank => Ok(()),
            Some(frame @ (Frame::Impersonation | Frame::ConnectingSid)) => Err(
                RewriteError::MalformedConnectingSid(format!("{} contains text", frame.name())),
            ),
            Some(frame) => Err(RewriteError::UnexpectedText(frame.name())),
        }
    }
}

/// A well-formedness rule broken at buffer offset `at`, as a refusal.
fn malformed_at(at: usize) -> impl Fn(String) -> RewriteError {
    move |why| RewriteError::Malformed(format!("{why} (at byte {at})"))
}

/// Resolves a reference: only the five predefined entities and character references exist
/// without a DTD; a character reference must name an XML `Char` (`&#1;`, `&#xFFFE;` do not).
fn resolve_reference(reference: &BytesRef<'_>) -> Result<char, RewriteError> {
    let name = reference.xml10_content();
    match name.as_ref() {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        other => match reference.resolve_char_ref() {
            Ok(Some(ch)) if !crate::wellformed::is_char(ch) => {
                Err(RewriteError::Malformed(format!(
                    "the character reference '&{other};' names a character XML 1.0 does not allow"
                )))
            }
            Ok(Some(ch)) => Ok(ch),
            Ok(None) => Err(RewriteError::UndefinedEntity(other.to_owned())),
            Err(e) => Err(RewriteError::Malformed(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{self, Element};
    use proptest::prelude::*;

    /// Expands `{S}` (SOAP 1.1), `{S12}`, `{M}` (messages), `{T}` (types) in a test document.
    fn fill(doc: &str) -> String {
        doc.replace("{S12}", NS_SOAP12)
            .replace("{S}", NS_SOAP)
            .replace("{M}", NS_MESSAGES)
            .replace("{T}", NS_TYPES)
    }

    fn target() -> ConnectingSid {
        ConnectingSid {
            kind: ConnectingSidKind::SmtpAddress,
            value: "bob@contoso.com".into(),
        }
    }

    fn imp() -> String {
        target().to_header_xml()
    }

    type Outcome = Result<(HeadInfo, Vec<u8>), RewriteError>;

    /// Feeds `input` split at `splits` (sorted offsets), then forwards the remaining chunks
    /// unchanged after the rewritten head, as the proxy does.
    fn run_split(
        input: &[u8],
        splits: &[usize],
        limits: RewriteLimits,
        to: &ConnectingSid,
    ) -> Outcome {
        let mut scanner = PrefixScanner::new(limits);
        let mut bounds = vec![0];
        bounds.extend(splits.iter().copied().filter(|&s| s > 0 && s < input.len()));
        bounds.push(input.len());
        bounds.dedup();
        let mut chunks = bounds.windows(2).map(|w| &input[w[0]..w[1]]);
        for chunk in chunks.by_ref() {
            if let Some(head) = scanner.push(chunk)? {
                let info = head.info().clone();
                let mut out = head.rewrite(to).to_vec();
                for rest in chunks {
                    out.extend_from_slice(rest);
                }
                return Ok((info, out));
            }
        }
        let head = scanner.finish()?;
        let info = head.info().clone();
        Ok((info, head.rewrite(to).to_vec()))
    }

    fn run(input: &[u8]) -> Outcome {
        run_split(input, &[], RewriteLimits::default(), &target())
    }

    /// Single chunk, byte-by-byte and a few fixed chunkings must all agree.
    fn run_all_chunkings(input: &[u8]) -> Outcome {
        let whole = run(input);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            run_split(input, &bytewise, RewriteLimits::default(), &target()),
            whole,
            "byte-by-byte differs"
        );
        for step in [2, 3, 7, 64, 100] {
            let splits: Vec<usize> = (step..input.len()).step_by(step).collect();
            assert_eq!(
                run_split(input, &splits, RewriteLimits::default(), &target()),
                whole,
                "chunks of {step} differ"
            );
        }
        whole
    }

    fn ok(doc: &str) -> (HeadInfo, String) {
        let (info, out) = run_all_chunkings(fill(doc).as_bytes()).unwrap();
        (info, String::from_utf8(out).unwrap())
    }

    fn err(doc: &str) -> RewriteError {
        run_all_chunkings(fill(doc).as_bytes()).unwrap_err()
    }

    fn err_bytes(doc: &[u8]) -> RewriteError {
        run_all_chunkings(doc).unwrap_err()
    }

    const EXCHANGELIB: &str = "<?xml version='1.0' encoding='utf-8'?>\n<s:Envelope xmlns:m=\"{M}\" xmlns:s=\"{S}\" xmlns:t=\"{T}\"><s:Header><t:RequestServerVersion Version=\"Exchange2016\"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@contoso.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation><t:TimeZoneContext><t:TimeZoneDefinition Id=\"W. Europe Standard Time\"/></t:TimeZoneContext></s:Header><s:Body><m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id=\"inbox\"/></m:ParentFolderIds></m:FindItem></s:Body></s:Envelope>";
    const EXCHANGELIB_IMP: &str = "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@contoso.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";

    const MANAGED_API: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<soap:Envelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:m=\"{M}\" xmlns:t=\"{T}\" xmlns:soap=\"{S}\">\r\n  <soap:Header>\r\n    <t:RequestServerVersion Version=\"Exchange2013_SP1\" />\r\n    <t:MailboxCulture>en-US</t:MailboxCulture>\r\n    <t:ExchangeImpersonation>\r\n      <t:ConnectingSID>\r\n        <t:SmtpAddress>alice@contoso.com</t:SmtpAddress>\r\n      </t:ConnectingSID>\r\n    </t:ExchangeImpersonation>\r\n    <t:DateTimePrecision>Milliseconds</t:DateTimePrecision>\r\n  </soap:Header>\r\n  <soap:Body>\r\n    <m:GetFolder>\r\n      <m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>\r\n    </m:GetFolder>\r\n  </soap:Body>\r\n</soap:Envelope>";
    const MANAGED_API_IMP: &str = "<t:ExchangeImpersonation>\r\n      <t:ConnectingSID>\r\n        <t:SmtpAddress>alice@contoso.com</t:SmtpAddress>\r\n      </t:ConnectingSID>\r\n    </t:ExchangeImpersonation>";

    const EWS_JS: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"{S}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:m=\"{M}\" xmlns:t=\"{T}\"><soap:Header><t:RequestServerVersion Version=\"Exchange2013_SP1\"></t:RequestServerVersion></soap:Header><soap:Body><m:ResolveNames ReturnFullContactData=\"true\"><m:UnresolvedEntry>bob</m:UnresolvedEntry></m:ResolveNames></soap:Body></soap:Envelope>";

    const DAVMAIL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{S}\" xmlns:t=\"{T}\" xmlns:m=\"{M}\"><soap:Header></soap:Header><soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape></m:GetFolder></soap:Body></soap:Envelope>";

    const NO_HEADER: &str =
        "<s:Envelope xmlns:s=\"{S}\"><s:Body><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>";
    const EMPTY_HEADER: &str = "<s:Envelope xmlns:s=\"{S}\"><s:Header xmlns:x=\"urn:x\" /><s:Body><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>";
    const DEFAULT_NS: &str = "<Envelope xmlns=\"{S}\"><Header><RequestServerVersion xmlns=\"{T}\" Version=\"Exchange2016\"/></Header><Body><FindItem xmlns=\"{M}\" Traversal=\"Shallow\"/></Body></Envelope>";
    const DEFAULT_NS_NO_HEADER: &str =
        "<Envelope xmlns=\"{S}\"><Body><FindItem xmlns=\"{M}\"/></Body></Envelope>";
    /// `t` rebound to a foreign namespace for a harmless header; the impersonation uses `x`.
    const REBOUND: &str = "<s:Envelope xmlns:s=\"{S}\" xmlns:t=\"{T}\"><s:Header><t:RequestServerVersion xmlns:t=\"urn:other\" Version=\"Fake\"/><x:ExchangeImpersonation xmlns:x=\"{T}\"><x:ConnectingSID><x:PrincipalName>alice@contoso.com</x:PrincipalName></x:ConnectingSID></x:ExchangeImpersonation></s:Header><s:Body><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>";
    const REBOUND_IMP: &str = "<x:ExchangeImpersonation xmlns:x=\"{T}\"><x:ConnectingSID><x:PrincipalName>alice@contoso.com</x:PrincipalName></x:ConnectingSID></x:ExchangeImpersonation>";
    /// The SOAP namespace under two prefixes.
    const TWO_PREFIXES: &str = "<s:Envelope xmlns:s=\"{S}\" xmlns:soap=\"{S}\"><soap:Header><t:TimeZoneContext xmlns:t=\"{T}\"><t:TimeZoneDefinition Id=\"UTC\"/></t:TimeZoneContext></soap:Header><s:Body><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>";
    const SOAP12: &str = "<env:Envelope xmlns:env=\"{S12}\"><env:Body><m:GetItem xmlns:m=\"{M}\"/></env:Body></env:Envelope>";
    const MISC_IN_HEADER: &str = "<?xml version=\"1.0\"?><!-- lead --><?pi data?><s:Envelope xmlns:s=\"{S}\"><s:Header><!-- c --><?pi x?><x:Trace xmlns:x=\"urn:x\"><![CDATA[<t:ExchangeImpersonation>]]>&amp;&#65;</x:Trace><t:ExchangeImpersonation xmlns:t=\"{T}\" s:mustUnderstand=\"1\"><!-- c --><t:ConnectingSID><t:SmtpAddress> <![CDATA[ali]]>c<!-- x -->e&#64;contoso.com </t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body><!-- c --><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>";
    const MISC_IMP: &str = "<t:ExchangeImpersonation xmlns:t=\"{T}\" s:mustUnderstand=\"1\"><!-- c --><t:ConnectingSID><t:SmtpAddress> <![CDATA[ali]]>c<!-- x -->e&#64;contoso.com </t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";
    const EMPTY_BODY: &str =
        "<s:Envelope xmlns:s=\"{S}\"><s:Header/><s:Body/></s:Envelope>\n<!-- end -->\n";

    fn sid(kind: ConnectingSidKind, value: &str) -> Option<ConnectingSid> {
        Some(ConnectingSid {
            kind,
            value: value.into(),
        })
    }

    #[test]
    fn exchangelib_impersonation_is_replaced_in_place() {
        let (info, out) = ok(EXCHANGELIB);
        assert_eq!(out, fill(EXCHANGELIB).replace(EXCHANGELIB_IMP, &imp()));
        assert_eq!(info.soap_version, SoapVersion::Soap11);
        assert_eq!(
            info.client_impersonation,
            sid(ConnectingSidKind::PrimarySmtpAddress, "alice@contoso.com")
        );
        assert_eq!(info.operation.as_deref(), Some("FindItem"));
        assert_eq!(info.request_server_version.as_deref(), Some("Exchange2016"));
    }

    #[test]
    fn managed_api_impersonation_is_replaced_and_whitespace_kept() {
        let (info, out) = ok(MANAGED_API);
        assert_eq!(out, fill(MANAGED_API).replace(MANAGED_API_IMP, &imp()));
        assert_eq!(
            info.client_impersonation,
            sid(ConnectingSidKind::SmtpAddress, "alice@contoso.com")
        );
        assert_eq!(info.operation.as_deref(), Some("GetFolder"));
        assert_eq!(
            info.request_server_version.as_deref(),
            Some("Exchange2013_SP1")
        );
    }

    #[test]
    fn ews_javascript_api_gets_impersonation_before_header_end() {
        let (info, out) = ok(EWS_JS);
        let expected = fill(EWS_JS).replace(
            "</t:RequestServerVersion></soap:Header>",
            &format!("</t:RequestServerVersion>{}</soap:Header>", imp()),
        );
        assert_eq!(out, expected);
        assert_eq!(info.client_impersonation, None);
        assert_eq!(info.operation.as_deref(), Some("ResolveNames"));
        assert_eq!(
            info.request_server_version.as_deref(),
            Some("Exchange2013_SP1")
        );
    }

    #[test]
    fn davmail_empty_header_is_filled() {
        let (info, out) = ok(DAVMAIL);
        let expected = fill(DAVMAIL).replace(
            "<soap:Header></soap:Header>",
            &format!("<soap:Header>{}</soap:Header>", imp()),
        );
        assert_eq!(out, expected);
        assert_eq!(info.operation.as_deref(), Some("GetFolder"));
        assert_eq!(info.request_server_version, None);
    }

    #[test]
    fn missing_header_is_created_with_the_envelope_prefix() {
        let (_, out) = ok(NO_HEADER);
        let expected = fill(NO_HEADER).replace(
            "<s:Body>",
            &format!("<s:Header>{}</s:Header><s:Body>", imp()),
        );
        assert_eq!(out, expected);
        let (_, out) = ok(DEFAULT_NS_NO_HEADER);
        let expected = fill(DEFAULT_NS_NO_HEADER)
            .replace("<Body>", &format!("<Header>{}</Header><Body>", imp()));
        assert_eq!(out, expected);
    }

    #[test]
    fn self_closing_header_is_expanded() {
        let (_, out) = ok(EMPTY_HEADER);
        let expected = fill(EMPTY_HEADER).replace(
            "<s:Header xmlns:x=\"urn:x\" />",
            &format!("<s:Header xmlns:x=\"urn:x\" >{}</s:Header>", imp()),
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn default_namespace_envelope() {
        let (info, out) = ok(DEFAULT_NS);
        let expected = fill(DEFAULT_NS).replace("</Header>", &format!("{}</Header>", imp()));
        assert_eq!(out, expected);
        assert_eq!(info.operation.as_deref(), Some("FindItem"));
        assert_eq!(info.request_server_version.as_deref(), Some("Exchange2016"));
    }

    #[test]
    fn prefix_rebinding_is_resolved_by_namespace() {
        let (info, out) = ok(REBOUND);
        assert_eq!(out, fill(REBOUND).replace(&fill(REBOUND_IMP), &imp()));
        // `t:RequestServerVersion` is in urn:other here, so it is not the EWS header.
        assert_eq!(info.request_server_version, None);
        assert_eq!(
            info.client_impersonation,
            sid(ConnectingSidKind::PrincipalName, "alice@contoso.com")
        );
        let (_, out) = ok(TWO_PREFIXES);
        let expected =
            fill(TWO_PREFIXES).replace("</soap:Header>", &format!("{}</soap:Header>", imp()));
        assert_eq!(out, expected);
    }

    #[test]
    fn soap12_is_accepted() {
        let (info, out) = ok(SOAP12);
        assert_eq!(info.soap_version, SoapVersion::Soap12);
        let expected = fill(SOAP12).replace(
            "<env:Body>",
            &format!("<env:Header>{}</env:Header><env:Body>", imp()),
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn comments_pis_cdata_and_references_in_header() {
        let (info, out) = ok(MISC_IN_HEADER);
        assert_eq!(out, fill(MISC_IN_HEADER).replace(&fill(MISC_IMP), &imp()));
        // CDATA, comments and references inside the value are read as XML defines them.
        assert_eq!(
            info.client_impersonation,
            sid(ConnectingSidKind::SmtpAddress, "alice@contoso.com")
        );
    }

    /// Found by fuzzing: a second BOM was skipped or not depending on where a chunk ended.
    #[test]
    fn a_second_byte_order_mark_is_content_before_the_envelope() {
        for rest in [&b"<s:Envelope/>"[..], b"<#DOC/////>/////PY", b""] {
            let mut doc = b"\xEF\xBB\xBF\xEF\xBB\xBF".to_vec();
            doc.extend_from_slice(rest);
            assert_eq!(err_bytes(&doc), RewriteError::ContentBeforeEnvelope);
        }
        let mut doc = b"\xEF\xBB\xBF\xEF\xBB\xBF".to_vec();
        doc.extend_from_slice(fill(NO_HEADER).as_bytes());
        assert_eq!(err_bytes(&doc), RewriteError::ContentBeforeEnvelope);
    }

    #[test]
    fn utf8_bom_and_crlf_are_kept() {
        let doc = format!("\u{feff}{}", fill(EXCHANGELIB).replace("\n", "\r\n"));
        let (_, out) = run_all_chunkings(doc.as_bytes()).unwrap();
        assert_eq!(out, doc.replace(EXCHANGELIB_IMP, &imp()).into_bytes());
    }

    #[test]
    fn empty_body_is_reported_by_finish_only() {
        let doc = fill(EMPTY_BODY);
        let mut scanner = PrefixScanner::new(RewriteLimits::default());
        assert!(scanner.push(doc.as_bytes()).unwrap().is_none());
        let head = scanner.finish().unwrap();
        assert_eq!(head.info().operation, None);
        let out = head.rewrite(&target());
        let expected = doc.replace("<s:Header/>", &format!("<s:Header>{}</s:Header>", imp()));
        assert_eq!(&out[..], expected.as_bytes());
        assert_eq!(ok(EMPTY_BODY).1, expected);
    }

    #[test]
    fn rest_of_the_chunk_after_the_head_is_kept_and_memory_is_bounded() {
        let doc = fill(EXCHANGELIB);
        let cut = doc.find("<m:ItemShape>").unwrap();
        let mut body = doc.clone().into_bytes();
        // A large attachment-like body after the operation start tag.
        body.splice(cut..cut, std::iter::repeat_n(b' ', 1 << 20));
        let limits = RewriteLimits {
            max_prefix_bytes: 4096,
        };
        let expected = String::from_utf8(body.clone())
            .unwrap()
            .replace(EXCHANGELIB_IMP, &imp())
            .into_bytes();
        for size in [37, 8192] {
            let mut scanner = PrefixScanner::new(limits);
            let mut head = None;
            let mut forwarded = Vec::new();
            for chunk in body.chunks(size) {
                match &head {
                    None => {
                        if let Some(h) = scanner.push(chunk).unwrap() {
                            assert!(scanner.buf.is_empty());
                            head = Some(h);
                        } else {
                            assert!(scanner.buf.len() <= limits.max_prefix_bytes);
                            assert!(scanner.buf.capacity() <= limits.max_prefix_bytes);
                        }
                    }
                    Some(_) => forwarded.extend_from_slice(chunk),
                }
            }
            let head = head.unwrap();
            assert_eq!(head.prefix.len(), cut);
            assert!(head.rest.len() <= limits.max_prefix_bytes + size);
            let mut out = head.rewrite(&target()).to_vec();
            out.extend_from_slice(&forwarded);
            assert!(out == expected, "chunks of {size}");
        }
    }

    #[test]
    fn endless_header_is_too_large() {
        let limits = RewriteLimits {
            max_prefix_bytes: 1024,
        };
        let mut scanner = PrefixScanner::new(limits);
        let start = fill("<s:Envelope xmlns:s=\"{S}\"><s:Header><x:H xmlns:x=\"urn:x\">");
        assert!(scanner.push(start.as_bytes()).unwrap().is_none());
        let mut result = Ok(None);
        for _ in 0..100 {
            result = scanner.push(&[b'a'; 100]);
            if !matches!(result, Ok(None)) {
                break;
            }
        }
        assert!(matches!(
            result,
            Err(RewriteError::HeadTooLarge { limit: 1024 })
        ));
        // The error is sticky.
        assert!(matches!(
            scanner.push(b"x"),
            Err(RewriteError::HeadTooLarge { .. })
        ));
        // A head that fits exactly within the limit is accepted.
        let doc = fill(EXCHANGELIB);
        let head_len = doc.find("<m:ItemShape>").unwrap();
        let exact = RewriteLimits {
            max_prefix_bytes: head_len,
        };
        assert!(run_split(doc.as_bytes(), &[10, 100], exact, &target()).is_ok());
        let short = RewriteLimits {
            max_prefix_bytes: head_len - 1,
        };
        assert_eq!(
            run_split(doc.as_bytes(), &[10, 100], short, &target()).unwrap_err(),
            RewriteError::HeadTooLarge {
                limit: head_len - 1
            }
        );
    }

    #[test]
    fn scanner_is_spent_after_the_head() {
        let mut scanner = PrefixScanner::new(RewriteLimits::default());
        assert!(scanner.push(fill(NO_HEADER).as_bytes()).unwrap().is_some());
        assert_eq!(
            scanner.push(b"x").unwrap_err(),
            RewriteError::ScannerFinished
        );
        assert_eq!(scanner.finish().unwrap_err(), RewriteError::ScannerFinished);
    }

    #[test]
    fn every_truncation_of_the_head_is_reported_as_truncated() {
        let doc = fill(EXCHANGELIB);
        let head_len = doc.find("<m:ItemShape>").unwrap();
        for cut in 0..head_len {
            let mut scanner = PrefixScanner::new(RewriteLimits::default());
            assert!(
                scanner.push(&doc.as_bytes()[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
            assert_eq!(
                scanner.finish().unwrap_err(),
                RewriteError::Truncated,
                "cut {cut}"
            );
        }
        // Truncated inside a reference and inside a multi-byte character.
        assert_eq!(
            err("<s:Envelope xmlns:s=\"{S}\"><s:Header><x:a xmlns:x=\"u\">&am"),
            RewriteError::Truncated
        );
        let mut bytes =
            fill("<s:Envelope xmlns:s=\"{S}\"><s:Header><x:a xmlns:x=\"u\">é").into_bytes();
        bytes.pop();
        assert_eq!(err_bytes(&bytes), RewriteError::Truncated);
        assert_eq!(err_bytes(b""), RewriteError::Truncated);
        assert_eq!(err_bytes(b"\xEF\xBB"), RewriteError::Truncated);
    }

    fn with_header(headers: &str) -> String {
        format!(
            "<s:Envelope xmlns:s=\"{{S}}\" xmlns:t=\"{{T}}\" xmlns:m=\"{{M}}\"><s:Header>{headers}</s:Header><s:Body><m:GetItem/></s:Body></s:Envelope>"
        )
    }

    const IMP_ALICE: &str = "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>alice@contoso.com</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";

    #[test]
    fn structural_refusals() {
        use RewriteError as E;
        let cases: Vec<(String, RewriteError)> = vec![
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Header/><s:Header/><s:Body/></s:Envelope>".into(),
                E::DuplicateHeader,
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Body/><s:Header/></s:Envelope>".into(),
                E::HeaderAfterBody,
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Body/><s:Body><m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>".into(),
                E::DuplicateBody,
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Header/></s:Envelope>".into(),
                E::MissingBody,
            ),
            ("<s:Envelope xmlns:s=\"{S}\"/>".into(), E::MissingBody),
            (
                "<s:Envelope xmlns:s=\"https://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>".into(),
                E::NotSoapEnvelope("{https://schemas.xmlsoap.org/soap/envelope/}Envelope".into()),
            ),
            (
                "<m:GetItem xmlns:m=\"{M}\"/>".into(),
                E::NotSoapEnvelope(format!("{{{NS_MESSAGES}}}GetItem")),
            ),
            (
                "hello<s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
                E::ContentBeforeEnvelope,
            ),
            (
                "<![CDATA[x]]><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
                E::ContentBeforeEnvelope,
            ),
            // Found by the rewrite fuzz target: `]]>` as the first text. Whole, the `]]>` rule
            // used to answer first; cut after `]`, the text's place did.
            (
                "]]><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
                E::ContentBeforeEnvelope,
            ),
            (
                // Header in a non-SOAP namespace directly under Envelope.
                "<s:Envelope xmlns:s=\"{S}\"><s:Header xmlns:s=\"urn:evil\"/><s:Body/></s:Envelope>".into(),
                E::UnknownEnvelopeChild("{urn:evil}Header".into()),
            ),
            (
                // SOAP 1.2 Header in a SOAP 1.1 envelope.
                "<s:Envelope xmlns:s=\"{S}\"><h:Header xmlns:h=\"{S12}\"/><s:Body/></s:Envelope>".into(),
                E::UnknownEnvelopeChild(format!("{{{NS_SOAP12}}}Header")),
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\">x<s:Body/></s:Envelope>".into(),
                E::UnexpectedText("Envelope"),
            ),
            (with_header("text"), E::UnexpectedText("Header")),
            (with_header("<![CDATA[x]]>"), E::UnexpectedText("Header")),
            (with_header("&#32;"), E::UnexpectedText("Header")),
            (with_header("<![CDATA[ ]]>&#10;"), E::UnexpectedText("Header")),
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Body>op<m:GetItem xmlns:m=\"{M}\"/></s:Body></s:Envelope>".into(),
                E::UnexpectedText("Body"),
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\"><s:Body><a:GetUserSettingsRequestMessage xmlns:a=\"http://schemas.microsoft.com/exchange/2010/Autodiscover\"/></s:Body></s:Envelope>".into(),
                E::NotAnEwsOperation("{http://schemas.microsoft.com/exchange/2010/Autodiscover}GetUserSettingsRequestMessage".into()),
            ),
        ];
        for (doc, expected) in cases {
            assert_eq!(err(&doc), expected, "{doc}");
        }
    }

    #[test]
    fn impersonation_refusals() {
        use RewriteError as E;
        let malformed = |s: &str| E::MalformedConnectingSid(s.into());
        let cases: Vec<(String, RewriteError)> = vec![
            (with_header(&format!("{IMP_ALICE}{IMP_ALICE}")), E::DuplicateImpersonation),
            (
                with_header(&format!("{IMP_ALICE}<t:RequestServerVersion Version=\"Exchange2016\"/>{IMP_ALICE}")),
                E::DuplicateImpersonation,
            ),
            (
                "<s:Envelope xmlns:s=\"{S}\" xmlns:t=\"{T}\"><s:Body><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a@b</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Body></s:Envelope>".into(),
                E::MisplacedImpersonation("in the SOAP Body"),
            ),
            (
                with_header(&format!("<x:Wrap xmlns:x=\"urn:x\">{IMP_ALICE}</x:Wrap>")),
                E::MisplacedImpersonation("nested inside another element"),
            ),
            (
                // `t` rebound inside the Header: not the EWS types namespace.
                with_header("<t:ExchangeImpersonation xmlns:t=\"urn:evil\"><t:ConnectingSID><t:SmtpAddress>a@b</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                E::ForeignImpersonation("{urn:evil}ExchangeImpersonation".into()),
            ),
            (
                with_header("<ExchangeImpersonation><ConnectingSID/></ExchangeImpersonation>"),
                E::ForeignImpersonation("ExchangeImpersonation".into()),
            ),
            (
                with_header("<t:exchangeImpersonation/>"),
                E::ForeignImpersonation(format!("{{{NS_TYPES}}}exchangeImpersonation")),
            ),
            (with_header("<t:ExchangeImpersonation/>"), malformed("it has no ConnectingSID")),
            (
                with_header("<t:ExchangeImpersonation> </t:ExchangeImpersonation>"),
                malformed("it has no ConnectingSID"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID/></t:ExchangeImpersonation>"),
                malformed("ConnectingSID is empty"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID> </t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("ConnectingSID names no identity"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a@b</t:SmtpAddress><t:SID>S-1-5</t:SID></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("ConnectingSID names more than one identity"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:Mailbox>a@b</t:Mailbox></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed(&format!("unknown ConnectingSID child {{{NS_TYPES}}}Mailbox")),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><x:SmtpAddress xmlns:x=\"urn:x\">a@b</x:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("unknown ConnectingSID child {urn:x}SmtpAddress"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>  </t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("the identity value is empty"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress/></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("SmtpAddress is empty"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a<b/>@c</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("the identity value contains the element b"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a@b</t:SmtpAddress></t:ConnectingSID><t:ConnectingSID/></t:ExchangeImpersonation>"),
                malformed("it has more than one ConnectingSID"),
            ),
            (
                with_header("<t:ExchangeImpersonation>x<t:ConnectingSID><t:SmtpAddress>a@b</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                malformed("ExchangeImpersonation contains text"),
            ),
            (
                with_header("<t:ExchangeImpersonation><t:Other/></t:ExchangeImpersonation>"),
                malformed(&format!("unexpected element {{{NS_TYPES}}}Other in ExchangeImpersonation")),
            ),
        ];
        for (doc, expected) in cases {
            assert_eq!(err(&doc), expected, "{doc}");
            assert_eq!(
                expected.code(),
                "ErrorInvalidExchangeImpersonationHeaderData"
            );
        }
    }

    #[test]
    fn privileged_headers_are_refused_in_any_namespace() {
        let names = PRIVILEGED_HEADERS
            .iter()
            .copied()
            .chain(["ProxyAnything", "proxysecuritycontext"]);
        for name in names {
            for header in [
                format!("<t:{name}/>"),
                format!("<x:{name} xmlns:x=\"urn:x\">v</x:{name}>"),
                format!("<{name}>v</{name}>"),
                format!("<x:Wrap xmlns:x=\"urn:x\"><t:{name}/></x:Wrap>"),
                format!(
                    "{IMP_ALICE}<t:{name}><t:ConnectingSID><t:SID>S-1</t:SID></t:ConnectingSID></t:{name}>"
                ),
            ] {
                let e = err(&with_header(&header));
                assert!(
                    matches!(&e, RewriteError::PrivilegedHeader(n) if n.ends_with(name)),
                    "{header}: {e:?}"
                );
                assert_eq!(e.code(), "ErrorAccessDenied");
            }
        }
        // A privileged name inside the impersonation value itself.
        let e = err(&with_header(
            "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress><t:ProxyX/></t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
        ));
        assert!(matches!(e, RewriteError::PrivilegedHeader(_)));
    }

    #[test]
    fn harmless_headers_are_kept_byte_identical() {
        let headers = "<t:RequestServerVersion Version=\"Exchange2016\" /><t:MailboxCulture>en-US</t:MailboxCulture><t:TimeZoneContext><t:TimeZoneDefinition Id=\"UTC\"><t:Periods><t:Period Bias=\"PT0M\" Name=\"Standard\" Id=\"S\"/></t:Periods></t:TimeZoneDefinition></t:TimeZoneContext><t:DateTimePrecision>Seconds</t:DateTimePrecision><w:Action xmlns:w=\"http://www.w3.org/2005/08/addressing\" s:mustUnderstand=\"0\">x &amp; y</w:Action>";
        let doc = with_header(headers);
        let (_, out) = ok(&doc);
        assert_eq!(
            out,
            fill(&doc).replace("</s:Header>", &format!("{}</s:Header>", imp()))
        );
    }

    #[test]
    fn xml_level_refusals() {
        use RewriteError as E;
        let cases: Vec<(String, RewriteError)> = vec![
            (
                "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope [<!ENTITY who \"alice@contoso.com\">]><s:Envelope xmlns:s=\"{S}\" xmlns:t=\"{T}\"><s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>&who;</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body/></s:Envelope>".into(),
                E::Doctype,
            ),
            ("<!doctype x><x/>".into(), E::Doctype),
            ("<!DOCTYPE x [".into(), E::Doctype),
            (
                with_header("<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>&who;</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"),
                E::UndefinedEntity("who".into()),
            ),
            (
                with_header("<t:RequestServerVersion Version=\"&v;\"/>"),
                E::UndefinedEntity("v".into()),
            ),
            (
                "<?xml version=\"1.0\" encoding=\"utf-16\"?><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
                E::UnsupportedEncoding("utf-16".into()),
            ),
            (
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><s:Envelope/>".into(),
                E::UnsupportedEncoding("ISO-8859-1".into()),
            ),
        ];
        for (doc, expected) in cases {
            assert_eq!(err(&doc), expected, "{doc}");
            assert_eq!(expected.code(), "ErrorInvalidRequest");
        }
        let malformed = [
            with_header("<t:A></t:B>"),
            "<s:Envelope xmlns:s=\"{S}\"><s:Header></s:Headr><s:Body/></s:Envelope>".into(),
            with_header("<p:A/>"),
            with_header("<t:A a=\"1\" a=\"2\"/>"),
            with_header("<t:A xmlns:x=\"urn:1\" xmlns:x=\"urn:2\"/>"),
            with_header("<t:A q:a=\"1\"/>"),
            with_header("<!-- a -- b -->"),
            with_header("<t:A>&#0;</t:A>"),
            with_header("<t:A>a & b</t:A>"),
            with_header("<!x>"),
            " <?xml version=\"1.0\"?><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
            "<?xml version=\"1.1\"?><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>".into(),
            "<s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope><x/>".into(),
            "<s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>junk".into(),
        ];
        for doc in malformed {
            let e = err(&doc);
            assert!(matches!(e, E::Malformed(_)), "{doc}: {e:?}");
        }
    }

    #[test]
    fn encoding_refusals() {
        let doc = fill(EXCHANGELIB).replace("encoding='utf-8'", "encoding='utf-16'");
        let utf16 = |bom: bool, be: bool| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(if be { b"\xFE\xFF" } else { b"\xFF\xFE" });
            }
            for unit in doc.encode_utf16() {
                out.extend_from_slice(&if be {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                });
            }
            out
        };
        for (bom, be) in [(true, false), (true, true), (false, false), (false, true)] {
            let e = err_bytes(&utf16(bom, be));
            assert!(
                matches!(e, RewriteError::NotUtf8(_)),
                "bom {bom} be {be}: {e:?}"
            );
        }
        let mut latin1 = fill(&with_header("<t:A>caf\u{e9}</t:A>")).into_bytes();
        let at = latin1.iter().position(|&b| b == 0xC3).unwrap();
        latin1.splice(at..at + 2, [0xE9]);
        assert!(matches!(err_bytes(&latin1), RewriteError::NotUtf8(_)));
        // Invalid bytes after the head are not this module's business.
        let mut after = fill(NO_HEADER).into_bytes();
        after.extend_from_slice(b"\xFF\x00");
        let body_end = after.len() - 2;
        assert!(run_all_chunkings(&after[..]).is_ok());
        assert!(run_all_chunkings(&after[..body_end]).is_ok());
    }

    #[test]
    fn error_messages_are_sentences() {
        let e = RewriteError::HeadTooLarge { limit: 65536 };
        assert_eq!(
            e.to_string(),
            "The SOAP envelope up to the operation element is larger than the gateway accepts (65536 bytes)."
        );
        assert_eq!(
            RewriteError::PrivilegedHeader("{x}ManagementRole".into()).to_string(),
            "The request contains the privileged header {x}ManagementRole, which the gateway does not accept."
        );
    }

    /// Valid envelopes for the properties, with a filler inside the operation to vary the size.
    fn valid_docs() -> Vec<&'static str> {
        vec![
            EXCHANGELIB,
            MANAGED_API,
            EWS_JS,
            DAVMAIL,
            NO_HEADER,
            EMPTY_HEADER,
            DEFAULT_NS,
            DEFAULT_NS_NO_HEADER,
            REBOUND,
            TWO_PREFIXES,
            SOAP12,
            MISC_IN_HEADER,
            EMPTY_BODY,
        ]
    }

    fn with_filler(doc: &str, filler: usize) -> Vec<u8> {
        let mut doc = fill(doc);
        // Pad inside the Body's closing tag region: after the last `</` of the Body's content,
        // whitespace is legal everywhere between elements.
        if let Some(at) = doc.rfind("</") {
            doc.insert_str(at, &" ".repeat(filler));
        }
        doc.into_bytes()
    }

    fn collect_impersonations<'e>(
        el: &'e Element,
        path: &mut Vec<&'e Element>,
        out: &mut Vec<Vec<&'e Element>>,
    ) {
        path.push(el);
        if el.is(NS_TYPES, "ExchangeImpersonation") {
            out.push(path.clone());
        }
        for child in el.elements() {
            collect_impersonations(child, path, out);
        }
        path.pop();
    }

    fn kind_strategy() -> impl Strategy<Value = ConnectingSidKind> {
        prop_oneof![
            Just(ConnectingSidKind::PrincipalName),
            Just(ConnectingSidKind::Sid),
            Just(ConnectingSidKind::PrimarySmtpAddress),
            Just(ConnectingSidKind::SmtpAddress),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any chunking of any input (valid or not) gives the same outcome as one chunk.
        #[test]
        fn chunking_does_not_change_the_outcome(
            doc in 0..valid_docs().len() + 4,
            filler in 0usize..3000,
            cut in proptest::option::of(0usize..4000),
            splits in proptest::collection::vec(0usize..4000, 0..12),
            small_limit in any::<bool>(),
        ) {
            let docs = valid_docs();
            let mut input = match doc.checked_sub(docs.len()) {
                None => with_filler(docs[doc], filler),
                Some(0) => fill(&with_header(&format!("{IMP_ALICE}{IMP_ALICE}"))).into_bytes(),
                Some(1) => fill("<!DOCTYPE x><s:Envelope/>").into_bytes(),
                Some(2) => fill(&with_header("<t:ProxySecurityContext/>")).into_bytes(),
                Some(_) => fill(&with_header("<t:A>&who;</t:A>")).into_bytes(),
            };
            if let Some(cut) = cut {
                input.truncate(cut);
            }
            let mut splits = splits;
            splits.sort_unstable();
            let limits = RewriteLimits { max_prefix_bytes: if small_limit { 600 } else { DEFAULT_MAX_PREFIX_BYTES } };
            let whole = run_split(&input, &[], limits, &target());
            prop_assert_eq!(run_split(&input, &splits, limits, &target()), whole);
        }

        /// Nothing of the client's bytes is lost or reordered: the input without the client's own
        /// impersonation element is a subsequence of the output, and the output adds only the
        /// target element (plus a Header wrapper when the client had none).
        #[test]
        fn client_bytes_survive_in_order(
            doc in 0..valid_docs().len(),
            filler in 0usize..200,
            kind in kind_strategy(),
            value in "[a-zA-Z0-9@._<>&'\" -]{0,30}[a-zA-Z0-9@.<>&'\"]",
            splits in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let to = ConnectingSid { kind, value };
            let input = with_filler(valid_docs()[doc], filler);
            let mut splits = splits;
            splits.sort_unstable();
            let (_, out) = run_split(&input, &splits, RewriteLimits::default(), &to).unwrap();
            let text = String::from_utf8(input).unwrap();
            let stripped = [EXCHANGELIB_IMP, MANAGED_API_IMP, REBOUND_IMP, MISC_IMP]
                .iter()
                .map(|imp| fill(imp))
                .find(|imp| text.contains(imp.as_str()))
                .map(|imp| text.replacen(&imp, "", 1))
                .unwrap_or(text);
            let mut rest = out.iter();
            prop_assert!(stripped.bytes().all(|b| rest.any(|x| *x == b)), "a client byte was lost");
            let element = to.to_header_xml();
            let added = out.len() - stripped.len();
            prop_assert!(added >= element.len() && added <= element.len() + 40, "added {added}");
        }

        /// The output holds exactly one EWS impersonation, directly under the SOAP Header, naming
        /// the target; everything parses namespace-aware.
        #[test]
        fn output_has_exactly_one_impersonation_for_the_target(
            doc in 0..valid_docs().len(),
            filler in 0usize..200,
            kind in kind_strategy(),
            value in "[a-zA-Z0-9@._<>&'\" -]{0,30}[a-zA-Z0-9@.<>&'\"]",
            splits in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let to = ConnectingSid { kind, value };
            let input = with_filler(valid_docs()[doc], filler);
            let mut splits = splits;
            splits.sort_unstable();
            let (_, out) = run_split(&input, &splits, RewriteLimits::default(), &to).unwrap();
            let root = xml::parse(&out).unwrap();
            let soap = if root.is(NS_SOAP12, "Envelope") { NS_SOAP12 } else { NS_SOAP };
            prop_assert!(root.is(soap, "Envelope"));
            let mut found = Vec::new();
            collect_impersonations(&root, &mut Vec::new(), &mut found);
            prop_assert_eq!(found.len(), 1);
            let path = &found[0];
            prop_assert_eq!(path.len(), 3);
            prop_assert!(path[1].is(soap, "Header"));
            prop_assert_eq!(root.children_named(soap, "Header").count(), 1);
            let sid = path[2].path(&[(NS_TYPES, "ConnectingSID")]).unwrap();
            prop_assert_eq!(sid.elements().count(), 1);
            let id = sid.child(NS_TYPES, to.kind.element_name()).unwrap();
            prop_assert_eq!(id.text(), to.value.trim());
        }
    }
}
