//! Streaming, namespace-aware rewrite of the SOAP envelope start.
//!
//! Owns the one place the gateway reads client XML. [`PrefixScanner`] buffers the body only
//! until the envelope head is complete (up to and including the start tag of the first child of
//! `Body`, the EWS operation), never more than [`RewriteLimits::max_prefix_bytes`] plus the chunk
//! that completed it: memory is bounded whatever the body size. It parses that prefix with
//! quick-xml's namespace-aware reader, refuses anything ambiguous, and records one splice.
//! [`ScannedHead::rewrite`] applies the splice: the client's bytes stay byte-identical except
//! that exactly one `ExchangeImpersonation` for the decided mailbox sits under the SOAP
//! `Header` (replacing the client's own, if any). The rest of the body is never parsed.
//! Free of hyper types.

use bytes::Bytes;
use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use crate::soap::{ConnectingSid, ConnectingSidKind, NS_MESSAGES, NS_SOAP, NS_SOAP12, NS_TYPES};

/// Header elements a client may never send: they ask Exchange for privileges the gateway
/// does not grant (matched by local name in any namespace; `Proxy*` too).
const PRIVILEGED_HEADERS: &[&str] = &[
    "SerializedSecurityContext",
    "OpenAsAdminOrSystemService",
    "ManagementRole",
    "SharingSecurity",
];

/// Bounds on what the scanner buffers.
#[derive(Debug, Clone, Copy)]
pub struct RewriteLimits {
    /// The envelope head must complete within this many bytes.
    pub max_prefix_bytes: usize,
}

impl Default for RewriteLimits {
    fn default() -> Self {
        Self {
            max_prefix_bytes: 64 * 1024,
        }
    }
}

/// SOAP version of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    /// SOAP 1.1.
    V11,
    /// SOAP 1.2.
    V12,
}

impl SoapVersion {
    fn namespace(self) -> &'static str {
        match self {
            Self::V11 => NS_SOAP,
            Self::V12 => NS_SOAP12,
        }
    }
}

/// What the head says about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    /// SOAP version of the envelope.
    pub soap_version: SoapVersion,
    /// The impersonation the client asked for itself, if any.
    pub client_impersonation: Option<ConnectingSid>,
    /// Local name of the EWS operation (first child of `Body`), if the Body has one.
    pub operation: Option<String>,
    /// `RequestServerVersion/@Version`, if sent.
    pub request_server_version: Option<String>,
}

/// Why an envelope is refused. Each message is a sentence for the client's SOAP fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// DTDs could declare entities; EWS never needs them.
    #[error("The request is invalid: a DOCTYPE declaration is not allowed in EWS requests.")]
    Doctype,
    /// An entity reference other than the five predefined ones or a character reference.
    #[error("The request is invalid: the entity reference &{0}; is not defined.")]
    UndefinedEntity(String),
    /// Not UTF-8.
    #[error("The request is invalid: ews-gateway accepts UTF-8 SOAP only ({0}).")]
    Encoding(String),
    /// Not well-formed XML.
    #[error("The request is invalid: the SOAP envelope is not well-formed XML ({0}).")]
    Malformed(String),
    /// The root is not a SOAP Envelope.
    #[error("The request is invalid: the document element is not a SOAP 1.1 or 1.2 Envelope.")]
    NotEnvelope,
    /// An element directly under Envelope other than Header and Body.
    #[error("The request is invalid: unexpected element {0} directly under the SOAP Envelope.")]
    UnexpectedEnvelopeChild(String),
    /// Two Header elements.
    #[error("The request is invalid: the SOAP envelope has more than one Header.")]
    MultipleHeaders,
    /// More than one ExchangeImpersonation.
    #[error("The request is invalid: more than one ExchangeImpersonation header.")]
    MultipleImpersonations,
    /// An ExchangeImpersonation element anywhere but directly under Header, or in another
    /// namespace than the EWS types namespace.
    #[error("The request is invalid: an ExchangeImpersonation element {0}.")]
    MisplacedImpersonation(&'static str),
    /// The ConnectingSID is not exactly one non-empty identity.
    #[error("The request is invalid: malformed ExchangeImpersonation ({0}).")]
    MalformedImpersonation(String),
    /// A header that asks for privileges.
    #[error("The request is invalid: the SOAP header {0} is not allowed through ews-gateway.")]
    PrivilegedHeader(String),
    /// The Body's first element is not an EWS operation.
    #[error(
        "The request is invalid: the SOAP Body's first element {0} is not an EWS operation in the messages namespace."
    )]
    NotAnOperation(String),
    /// The head does not complete within the limit.
    #[error(
        "The request is invalid: the SOAP envelope's Header does not end within the first {0} bytes."
    )]
    HeadTooLarge(usize),
    /// The body ended before the head was complete.
    #[error("The request is invalid: the request body ended before the SOAP Body began.")]
    Truncated,
}

impl RewriteError {
    /// The EWS response code of the fault sent for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnexpectedEnvelopeChild(_)
            | Self::NotAnOperation(_)
            | Self::MalformedImpersonation(_)
            | Self::MultipleImpersonations
            | Self::MultipleHeaders
            | Self::MisplacedImpersonation(_) => "ErrorSchemaValidation",
            Self::PrivilegedHeader(_) => "ErrorAccessDenied",
            _ => "ErrorInvalidRequest",
        }
    }
}

/// Where the injected impersonation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Splice {
    /// Replace `[start, end)` (the client's ExchangeImpersonation) with ours.
    Replace { start: usize, end: usize },
    /// Insert after an existing `Header` start tag.
    Insert { at: usize },
    /// Replace an empty `<s:Header/>` at `[start, end)` with an open tag, ours, and a close tag.
    ExpandEmpty {
        start: usize,
        end: usize,
        open: String,
        close: String,
    },
    /// No Header: insert one after the Envelope start tag.
    NewHeader { at: usize, ns: &'static str },
}

/// A complete envelope head: what it says, and how to rewrite it.
#[derive(Debug)]
pub struct ScannedHead {
    info: HeadInfo,
    consumed: Vec<u8>,
    splice: Splice,
}

impl ScannedHead {
    /// What the head says.
    pub fn info(&self) -> &HeadInfo {
        &self.info
    }

    /// How many body bytes the scanner consumed.
    pub fn consumed_len(&self) -> usize {
        self.consumed.len()
    }

    /// The bytes to send upstream in place of everything consumed: byte-identical except for
    /// exactly one `ExchangeImpersonation` naming `target` under the SOAP Header.
    pub fn rewrite(self, target: &ConnectingSid) -> Bytes {
        let ours = target.to_header_xml();
        let src = &self.consumed;
        let mut out = Vec::with_capacity(src.len() + ours.len() + 96);
        match &self.splice {
            Splice::Replace { start, end } => {
                out.extend_from_slice(&src[..*start]);
                out.extend_from_slice(ours.as_bytes());
                out.extend_from_slice(&src[*end..]);
            }
            Splice::Insert { at } => {
                out.extend_from_slice(&src[..*at]);
                out.extend_from_slice(ours.as_bytes());
                out.extend_from_slice(&src[*at..]);
            }
            Splice::ExpandEmpty {
                start,
                end,
                open,
                close,
            } => {
                out.extend_from_slice(&src[..*start]);
                out.extend_from_slice(open.as_bytes());
                out.extend_from_slice(ours.as_bytes());
                out.extend_from_slice(close.as_bytes());
                out.extend_from_slice(&src[*end..]);
            }
            Splice::NewHeader { at, ns } => {
                out.extend_from_slice(&src[..*at]);
                out.extend_from_slice(format!("<soap:Header xmlns:soap=\"{ns}\">").as_bytes());
                out.extend_from_slice(ours.as_bytes());
                out.extend_from_slice(b"</soap:Header>");
                out.extend_from_slice(&src[*at..]);
            }
        }
        Bytes::from(out)
    }
}

/// Buffers the start of a request body until its envelope head is complete.
#[derive(Debug)]
pub struct PrefixScanner {
    limits: RewriteLimits,
    buf: Vec<u8>,
}

enum Scan {
    NeedMore,
    Complete { info: HeadInfo, splice: Splice },
}

impl PrefixScanner {
    /// A scanner with the given bounds.
    pub fn new(limits: RewriteLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
        }
    }

    /// Feeds the next chunk. `Ok(None)`: more input is needed. `Ok(Some(head))`: the head is
    /// complete; everything fed so far is inside it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<ScannedHead>, RewriteError> {
        self.buf.extend_from_slice(chunk);
        match scan(&self.buf, self.limits.max_prefix_bytes, false)? {
            Scan::NeedMore => {
                if self.buf.len() >= self.limits.max_prefix_bytes {
                    return Err(RewriteError::HeadTooLarge(self.limits.max_prefix_bytes));
                }
                Ok(None)
            }
            Scan::Complete { info, splice } => Ok(Some(ScannedHead {
                info,
                consumed: std::mem::take(&mut self.buf),
                splice,
            })),
        }
    }

    /// The body ended: the head must be complete now.
    pub fn finish(mut self) -> Result<ScannedHead, RewriteError> {
        match scan(&self.buf, self.limits.max_prefix_bytes, true)? {
            Scan::NeedMore => Err(RewriteError::Truncated),
            Scan::Complete { info, splice } => Ok(ScannedHead {
                info,
                consumed: std::mem::take(&mut self.buf),
                splice,
            }),
        }
    }
}

/// Where the header section stands while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prolog,
    InEnvelope,
    InHeader,
    InBody,
}

#[derive(Default)]
struct ImpersonationParse {
    start: usize,
    sid_elements: usize,
    identities: Vec<ConnectingSid>,
    current: Option<(ConnectingSidKind, String)>,
}

fn resolved_ns(resolved: &ResolveResult<'_>) -> Result<Option<String>, RewriteError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(RewriteError::Malformed(format!(
            "undeclared namespace prefix {prefix}"
        ))),
    }
}

fn is_eof_error(err: &quick_xml::Error) -> bool {
    matches!(err, quick_xml::Error::Syntax(_))
}

fn qualified(start: &BytesStart<'_>) -> String {
    start.name().as_ref().to_owned()
}

/// Parses `buf` (the prefix so far) and says whether the head is complete.
fn scan(buf: &[u8], limit: usize, finished: bool) -> Result<Scan, RewriteError> {
    if buf.starts_with(&[0xFE, 0xFF]) || buf.starts_with(&[0xFF, 0xFE]) {
        return Err(RewriteError::Encoding("a UTF-16 byte order mark".into()));
    }
    if buf.len() >= 2 && (buf[0] == 0 || buf[1] == 0) {
        return Err(RewriteError::Encoding(
            "UTF-16 or another wide encoding".into(),
        ));
    }
    let window = &buf[..buf.len().min(limit)];
    let (text, complete_window) = match std::str::from_utf8(window) {
        Ok(t) => (t, window.len() == buf.len()),
        Err(e) => {
            let valid = &window[..e.valid_up_to()];
            // Invalid bytes are an error only if the head has not completed before them.
            let t = std::str::from_utf8(valid)
                .map_err(|_| RewriteError::Encoding("invalid UTF-8".into()))?;
            match scan_text(t, false)? {
                Scan::Complete { info, splice } => return Ok(Scan::Complete { info, splice }),
                Scan::NeedMore if e.error_len().is_some() => {
                    return Err(RewriteError::Encoding("invalid UTF-8".into()));
                }
                Scan::NeedMore => return Ok(Scan::NeedMore),
            }
        }
    };
    scan_text(text, finished && complete_window)
}

fn scan_text(text: &str, finished: bool) -> Result<Scan, RewriteError> {
    let offset = text.len() - text.trim_start_matches('\u{feff}').len();
    let mut reader = NsReader::from_str(&text[offset..]);
    reader.config_mut().check_end_names = true;
    let at = |pos: u64| pos as usize + offset;

    let mut phase = Phase::Prolog;
    let mut soap: Option<SoapVersion> = None;
    let mut depth: usize = 0;
    let mut envelope_tag_end = 0usize;
    let mut header_seen = false;
    let mut splice: Option<Splice> = None;
    let mut imp: Option<ImpersonationParse> = None;
    let mut client_impersonation: Option<ConnectingSid> = None;
    let mut request_server_version: Option<String> = None;

    loop {
        let before = reader.buffer_position();
        let (resolved, event) = match reader.read_resolved_event() {
            Ok(pair) => pair,
            Err(err) if is_eof_error(&err) && !finished => return Ok(Scan::NeedMore),
            Err(quick_xml::Error::Encoding(e)) => {
                return Err(RewriteError::Encoding(e.to_string()));
            }
            Err(err) => return Err(RewriteError::Malformed(err.to_string())),
        };
        let ns = match &event {
            Event::Start(_) | Event::Empty(_) => resolved_ns(&resolved)?,
            _ => None,
        };
        let after = reader.buffer_position();
        let is_empty = matches!(event, Event::Empty(_));
        match event {
            Event::DocType(_) => return Err(RewriteError::Doctype),
            Event::Decl(decl) => {
                if let Some(Ok(enc)) = decl.encoding()
                    && !enc.eq_ignore_ascii_case("utf-8")
                    && !enc.eq_ignore_ascii_case("utf8")
                {
                    return Err(RewriteError::Encoding(format!("declared encoding {enc}")));
                }
            }
            Event::Eof => {
                return if finished {
                    Err(RewriteError::Truncated)
                } else {
                    Ok(Scan::NeedMore)
                };
            }
            Event::GeneralRef(reference) => {
                let name = reference.xml10_content();
                let predefined = matches!(name.as_ref(), "lt" | "gt" | "amp" | "apos" | "quot");
                let ch = if predefined {
                    None
                } else {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| RewriteError::Malformed(e.to_string()))?
                };
                if !predefined && ch.is_none() {
                    return Err(RewriteError::UndefinedEntity(name.into_owned()));
                }
                if let Some(ImpersonationParse {
                    current: Some((_, value)),
                    ..
                }) = imp.as_mut()
                {
                    let piece = match name.as_ref() {
                        "lt" => "<".to_owned(),
                        "gt" => ">".to_owned(),
                        "amp" => "&".to_owned(),
                        "apos" => "'".to_owned(),
                        "quot" => "\"".to_owned(),
                        _ => ch.map(String::from).unwrap_or_default(),
                    };
                    value.push_str(&piece);
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                if phase == Phase::Prolog {
                    if !content.trim().is_empty() {
                        return Err(RewriteError::NotEnvelope);
                    }
                } else if let Some(ImpersonationParse {
                    current: Some((_, value)),
                    ..
                }) = imp.as_mut()
                {
                    value.push_str(&content);
                } else if imp.is_some() && !content.trim().is_empty() {
                    return Err(RewriteError::MalformedImpersonation(
                        "text outside the identity element".into(),
                    ));
                }
            }
            Event::CData(_) | Event::Comment(_) | Event::PI(_) => {
                if imp.is_some() {
                    return Err(RewriteError::MalformedImpersonation(
                        "comments, CDATA and processing instructions are not allowed inside it"
                            .into(),
                    ));
                }
            }
            Event::Start(start) | Event::Empty(start) => {
                let local = start.local_name().as_ref().to_owned();
                let ns = ns.unwrap_or_default();
                match phase {
                    Phase::Prolog => {
                        let version = match (local.as_str(), ns.as_str()) {
                            ("Envelope", NS_SOAP) => SoapVersion::V11,
                            ("Envelope", NS_SOAP12) => SoapVersion::V12,
                            _ => return Err(RewriteError::NotEnvelope),
                        };
                        if is_empty {
                            return Err(RewriteError::Truncated);
                        }
                        soap = Some(version);
                        envelope_tag_end = at(after);
                        phase = Phase::InEnvelope;
                        depth = 1;
                    }
                    Phase::InEnvelope => {
                        let soap_ns = soap.map(SoapVersion::namespace).unwrap_or(NS_SOAP);
                        if ns != soap_ns {
                            return Err(RewriteError::UnexpectedEnvelopeChild(qualified(&start)));
                        }
                        match local.as_str() {
                            "Header" => {
                                if header_seen {
                                    return Err(RewriteError::MultipleHeaders);
                                }
                                header_seen = true;
                                if is_empty {
                                    let raw = &text[at(before)..at(after)];
                                    let open = format!(
                                        "{}>",
                                        raw.trim_end_matches('>').trim_end_matches('/').trim_end()
                                    );
                                    splice = Some(Splice::ExpandEmpty {
                                        start: at(before),
                                        end: at(after),
                                        open,
                                        close: format!("</{}>", qualified(&start)),
                                    });
                                } else {
                                    splice = Some(Splice::Insert { at: at(after) });
                                    phase = Phase::InHeader;
                                    depth = 2;
                                }
                            }
                            "Body" => {
                                if splice.is_none() {
                                    splice = Some(Splice::NewHeader {
                                        at: envelope_tag_end,
                                        ns: soap_ns,
                                    });
                                }
                                if is_empty {
                                    return complete(
                                        soap,
                                        client_impersonation,
                                        None,
                                        request_server_version,
                                        splice,
                                    );
                                }
                                phase = Phase::InBody;
                                depth = 2;
                            }
                            _ => {
                                return Err(RewriteError::UnexpectedEnvelopeChild(qualified(
                                    &start,
                                )));
                            }
                        }
                    }
                    Phase::InHeader => {
                        // depth 2 = a header block; deeper = inside one.
                        if local == "ExchangeImpersonation" {
                            if depth != 2 {
                                return Err(RewriteError::MisplacedImpersonation(
                                    "nested inside another header",
                                ));
                            }
                            if ns != NS_TYPES {
                                return Err(RewriteError::MisplacedImpersonation(
                                    "in a namespace other than the EWS types namespace",
                                ));
                            }
                            if client_impersonation.is_some() || imp.is_some() {
                                return Err(RewriteError::MultipleImpersonations);
                            }
                            if is_empty {
                                return Err(RewriteError::MalformedImpersonation(
                                    "no ConnectingSID".into(),
                                ));
                            }
                            imp = Some(ImpersonationParse {
                                start: at(before),
                                ..Default::default()
                            });
                            depth += 1;
                            continue;
                        }
                        if depth == 2
                            && (PRIVILEGED_HEADERS.contains(&local.as_str())
                                || local.starts_with("Proxy"))
                        {
                            return Err(RewriteError::PrivilegedHeader(local));
                        }
                        if let Some(p) = imp.as_mut() {
                            // depth 3: ConnectingSID; depth 4: the identity.
                            match (depth, local.as_str()) {
                                (3, "ConnectingSID") if ns == NS_TYPES => p.sid_elements += 1,
                                (4, _) if ns == NS_TYPES && p.current.is_none() => {
                                    let kind = ConnectingSidKind::from_element_name(&local)
                                        .ok_or_else(|| {
                                            RewriteError::MalformedImpersonation(format!(
                                                "unknown identity element {local}"
                                            ))
                                        })?;
                                    p.current = Some((kind, String::new()));
                                }
                                _ => {
                                    return Err(RewriteError::MalformedImpersonation(format!(
                                        "unexpected element {}",
                                        qualified(&start)
                                    )));
                                }
                            }
                            if is_empty {
                                if depth == 4 {
                                    return Err(RewriteError::MalformedImpersonation(
                                        "empty identity".into(),
                                    ));
                                }
                                continue;
                            }
                        }
                        if local == "RequestServerVersion" && depth == 2 && ns == NS_TYPES {
                            request_server_version = start
                                .try_get_attribute("Version")
                                .ok()
                                .flatten()
                                .and_then(|a| {
                                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok()
                                })
                                .map(|v| v.into_owned());
                        }
                        if !is_empty {
                            depth += 1;
                        }
                    }
                    Phase::InBody => {
                        if local == "ExchangeImpersonation" {
                            return Err(RewriteError::MisplacedImpersonation(
                                "inside the SOAP Body",
                            ));
                        }
                        if ns != NS_MESSAGES {
                            return Err(RewriteError::NotAnOperation(qualified(&start)));
                        }
                        return complete(
                            soap,
                            client_impersonation,
                            Some(local),
                            request_server_version,
                            splice,
                        );
                    }
                }
            }
            Event::End(_) => match phase {
                Phase::InHeader => {
                    depth -= 1;
                    if depth == 1 {
                        phase = Phase::InEnvelope;
                        continue;
                    }
                    if let Some(mut p) = imp.take() {
                        // Open elements now: 2 = inside ExchangeImpersonation's parent (Header),
                        // 3 = inside ExchangeImpersonation, 4 = inside ConnectingSID.
                        match depth {
                            4 => {
                                let Some((kind, value)) = p.current.take() else {
                                    return Err(RewriteError::MalformedImpersonation(
                                        "unbalanced".into(),
                                    ));
                                };
                                let value = value.trim().to_owned();
                                if value.is_empty() {
                                    return Err(RewriteError::MalformedImpersonation(
                                        "empty identity".into(),
                                    ));
                                }
                                p.identities.push(ConnectingSid { kind, value });
                                imp = Some(p);
                            }
                            2 => {
                                if p.sid_elements != 1 || p.identities.len() != 1 {
                                    return Err(RewriteError::MalformedImpersonation(
                                        "ConnectingSID must hold exactly one identity".into(),
                                    ));
                                }
                                client_impersonation = p.identities.pop();
                                splice = Some(Splice::Replace {
                                    start: p.start,
                                    end: at(after),
                                });
                            }
                            _ => imp = Some(p),
                        }
                    }
                }
                Phase::InBody => {
                    // `</Body>` with no operation inside.
                    return complete(
                        soap,
                        client_impersonation,
                        None,
                        request_server_version,
                        splice,
                    );
                }
                // `</Envelope>` before any Body.
                Phase::InEnvelope => return Err(RewriteError::Truncated),
                Phase::Prolog => return Err(RewriteError::NotEnvelope),
            },
        }
    }
}

fn complete(
    soap: Option<SoapVersion>,
    client_impersonation: Option<ConnectingSid>,
    operation: Option<String>,
    request_server_version: Option<String>,
    splice: Option<Splice>,
) -> Result<Scan, RewriteError> {
    let (Some(soap_version), Some(splice)) = (soap, splice) else {
        return Err(RewriteError::NotEnvelope);
    };
    Ok(Scan::Complete {
        info: HeadInfo {
            soap_version,
            client_impersonation,
            operation,
            request_server_version,
        },
        splice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    const M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
    const T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";

    fn target() -> ConnectingSid {
        ConnectingSid {
            kind: ConnectingSidKind::SmtpAddress,
            value: "alice@contoso.example".into(),
        }
    }

    fn scan_all(doc: &str) -> Result<ScannedHead, RewriteError> {
        let mut s = PrefixScanner::new(RewriteLimits::default());
        match s.push(doc.as_bytes())? {
            Some(head) => Ok(head),
            None => s.finish(),
        }
    }

    fn rewrite_all(doc: &str) -> String {
        let head = scan_all(doc).unwrap();
        let consumed = head.consumed_len();
        let mut out = head.rewrite(&target()).to_vec();
        out.extend_from_slice(&doc.as_bytes()[consumed..]);
        String::from_utf8(out).unwrap()
    }

    fn env(header: &str, body: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{S}\" xmlns:m=\"{M}\" xmlns:t=\"{T}\">{header}<s:Body>{body}</s:Body></s:Envelope>"
        )
    }

    const FIND: &str = "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape></m:FindItem>";

    #[test]
    fn exchangelib_style_client_impersonation_is_replaced_in_place() {
        let doc = env(
            "<s:Header><t:RequestServerVersion Version=\"Exchange2016\"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@contoso.example</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation><t:TimeZoneContext><t:TimeZoneDefinition Id=\"UTC\"/></t:TimeZoneContext></s:Header>",
            FIND,
        );
        let head = scan_all(&doc).unwrap();
        assert_eq!(head.info().operation.as_deref(), Some("FindItem"));
        assert_eq!(
            head.info().request_server_version.as_deref(),
            Some("Exchange2016")
        );
        assert_eq!(
            head.info().client_impersonation,
            Some(ConnectingSid {
                kind: ConnectingSidKind::PrimarySmtpAddress,
                value: "alice@contoso.example".into()
            })
        );
        let out = rewrite_all(&doc);
        let expected = doc.replace(
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@contoso.example</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
            &target().to_header_xml(),
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn header_without_impersonation_gets_one_right_after_its_start_tag() {
        let doc = env(
            "<s:Header><t:RequestServerVersion Version=\"Exchange2013_SP1\"></t:RequestServerVersion></s:Header>",
            FIND,
        );
        let out = rewrite_all(&doc);
        assert_eq!(
            out,
            doc.replacen(
                "<s:Header>",
                &format!("<s:Header>{}", target().to_header_xml()),
                1
            )
        );
    }

    #[test]
    fn davmail_empty_header_and_self_closing_header() {
        let doc = env("<s:Header></s:Header>", FIND);
        assert_eq!(
            rewrite_all(&doc),
            doc.replacen(
                "<s:Header>",
                &format!("<s:Header>{}", target().to_header_xml()),
                1
            )
        );
        let doc = env("<s:Header />", FIND);
        assert_eq!(
            rewrite_all(&doc),
            doc.replacen(
                "<s:Header />",
                &format!("<s:Header>{}</s:Header>", target().to_header_xml()),
                1
            )
        );
    }

    #[test]
    fn missing_header_is_created_after_the_envelope_start_tag() {
        let doc = env("", FIND);
        let out = rewrite_all(&doc);
        let start_tag_end = doc.find("<s:Body>").unwrap();
        let expected = format!(
            "{}<soap:Header xmlns:soap=\"{S}\">{}</soap:Header>{}",
            &doc[..start_tag_end],
            target().to_header_xml(),
            &doc[start_tag_end..]
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn default_namespace_envelope_and_rebound_prefixes() {
        let doc = format!(
            "<Envelope xmlns=\"{S}\"><Header><x:ExchangeImpersonation xmlns:x=\"{T}\"><x:ConnectingSID><x:SmtpAddress>bob@contoso.example</x:SmtpAddress></x:ConnectingSID></x:ExchangeImpersonation></Header><Body><FindItem xmlns=\"{M}\"/></Body></Envelope>"
        );
        let head = scan_all(&doc).unwrap();
        assert_eq!(
            head.info().client_impersonation.as_ref().unwrap().value,
            "bob@contoso.example"
        );
        assert_eq!(head.info().operation.as_deref(), Some("FindItem"));
        // The t prefix bound to another namespace inside the header: not the EWS element.
        let doc = env(
            "<s:Header><t:ExchangeImpersonation xmlns:t=\"urn:evil\"><t:ConnectingSID><t:SmtpAddress>x@y.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
            FIND,
        );
        assert!(matches!(
            scan_all(&doc),
            Err(RewriteError::MisplacedImpersonation(_))
        ));
        // The SOAP namespace bound to two prefixes is fine.
        let doc = format!(
            "<a:Envelope xmlns:a=\"{S}\" xmlns:b=\"{S}\"><b:Header/><a:Body><m:GetFolder xmlns:m=\"{M}\"/></a:Body></a:Envelope>"
        );
        assert_eq!(
            scan_all(&doc).unwrap().info().operation.as_deref(),
            Some("GetFolder")
        );
    }

    #[test]
    fn refusals() {
        let imp = "<t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a@contoso.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>";
        type Check = fn(&RewriteError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (
                format!("<!DOCTYPE x [<!ENTITY e \"x\">]>{}", env("", FIND)),
                |e| *e == RewriteError::Doctype,
            ),
            (env("<s:Header><t:X>&e;</t:X></s:Header>", FIND), |e| {
                matches!(e, RewriteError::UndefinedEntity(_))
            }),
            (env("<s:Header/><s:Header/>", FIND), |e| {
                *e == RewriteError::MultipleHeaders
            }),
            (
                env(&format!("<s:Header>{imp}{imp}</s:Header>"), FIND),
                |e| *e == RewriteError::MultipleImpersonations,
            ),
            (
                env(
                    &format!("<s:Header><t:Wrapper>{imp}</t:Wrapper></s:Header>"),
                    FIND,
                ),
                |e| matches!(e, RewriteError::MisplacedImpersonation(_)),
            ),
            (env("", &format!("{imp}{FIND}")), |e| {
                matches!(e, RewriteError::MisplacedImpersonation(_))
            }),
            (
                env("<s:Header><t:SerializedSecurityContext/></s:Header>", FIND),
                |e| matches!(e, RewriteError::PrivilegedHeader(_)),
            ),
            (
                env(
                    "<s:Header><t:OpenAsAdminOrSystemService LogonType=\"Admin\"/></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::PrivilegedHeader(_)),
            ),
            (
                env(
                    "<s:Header><t:ProxySecurityContext>x</t:ProxySecurityContext></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::PrivilegedHeader(_)),
            ),
            (
                env(
                    "<s:Header><x:ManagementRole xmlns:x=\"urn:other\"/></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::PrivilegedHeader(_)),
            ),
            (
                env(
                    "<s:Header><t:ExchangeImpersonation><t:ConnectingSID/></t:ExchangeImpersonation></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::MalformedImpersonation(_)),
            ),
            (
                env(
                    "<s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress>a@b.example</t:SmtpAddress><t:SID>S-1</t:SID></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::MalformedImpersonation(_)),
            ),
            (
                env(
                    "<s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress> </t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::MalformedImpersonation(_)),
            ),
            (
                env(
                    "<s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:SmtpAddress><!--x-->a@b.example</t:SmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::MalformedImpersonation(_)),
            ),
            (
                env(
                    "<s:Header><t:ExchangeImpersonation><t:ConnectingSID><t:Upn>a@b.example</t:Upn></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
                    FIND,
                ),
                |e| matches!(e, RewriteError::MalformedImpersonation(_)),
            ),
            (
                "<x:Envelope xmlns:x=\"urn:not-soap\"><x:Body/></x:Envelope>".to_owned(),
                |e| *e == RewriteError::NotEnvelope,
            ),
            (
                format!("<s:Envelope xmlns:s=\"{S}\"><s:Foo/><s:Body/></s:Envelope>"),
                |e| matches!(e, RewriteError::UnexpectedEnvelopeChild(_)),
            ),
            (
                format!(
                    "<s:Envelope xmlns:s=\"{S}\"><Header xmlns=\"urn:x\"/><s:Body/></s:Envelope>"
                ),
                |e| matches!(e, RewriteError::UnexpectedEnvelopeChild(_)),
            ),
            (env("", "<x:FindItem xmlns:x=\"urn:x\"/>"), |e| {
                matches!(e, RewriteError::NotAnOperation(_))
            }),
            (format!("<s:Envelope xmlns:s=\"{S}\"><s:Header>"), |e| {
                *e == RewriteError::Truncated
            }),
            (
                format!(
                    "<?xml version=\"1.0\" encoding=\"utf-16\"?><s:Envelope xmlns:s=\"{S}\"><s:Body/></s:Envelope>"
                ),
                |e| matches!(e, RewriteError::Encoding(_)),
            ),
            ("junk".to_owned(), |e| {
                *e == RewriteError::NotEnvelope || matches!(e, RewriteError::Truncated)
            }),
            (
                format!("<s:Envelope xmlns:s=\"{S}\"><s:Header></s:Hdr><s:Body/></s:Envelope>"),
                |e| matches!(e, RewriteError::Malformed(_)),
            ),
            (
                format!("<s:Envelope xmlns:s=\"{S}\"><p:Header/></s:Envelope>"),
                |e| matches!(e, RewriteError::Malformed(_)),
            ),
        ];
        for (doc, check) in cases {
            let err = scan_all(&doc).expect_err(&doc);
            assert!(check(&err), "{doc}\n => {err:?}");
        }
    }

    #[test]
    fn utf16_bom_is_refused_and_utf8_bom_accepted() {
        let mut doc = vec![0xFF, 0xFE];
        doc.extend(env("", FIND).encode_utf16().flat_map(|u| u.to_le_bytes()));
        let mut s = PrefixScanner::new(RewriteLimits::default());
        assert!(matches!(s.push(&doc), Err(RewriteError::Encoding(_))));
        let doc = format!("\u{feff}{}", env("", FIND));
        assert!(scan_all(&doc).is_ok());
    }

    #[test]
    fn endless_header_is_refused_at_the_limit() {
        let mut s = PrefixScanner::new(RewriteLimits {
            max_prefix_bytes: 4096,
        });
        let start = format!("<s:Envelope xmlns:s=\"{S}\" xmlns:t=\"{T}\"><s:Header>");
        assert!(s.push(start.as_bytes()).unwrap().is_none());
        let filler = "<t:X>aaaaaaaaaaaaaaaa</t:X>".repeat(50);
        let mut result = Ok(None);
        for _ in 0..20 {
            result = s.push(filler.as_bytes());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err(), RewriteError::HeadTooLarge(4096));
    }

    #[test]
    fn body_after_the_operation_start_is_not_parsed() {
        // Garbage after the operation's start tag is Exchange's to judge, not ours.
        let doc = format!(
            "{}<<<not xml &undefined; ]]>",
            &env("", FIND)[..env("", FIND).find("<m:ItemShape>").unwrap()]
        );
        let head = scan_all(&doc).unwrap();
        assert_eq!(head.info().operation.as_deref(), Some("FindItem"));
    }

    #[test]
    fn empty_body_completes_without_operation() {
        let head = scan_all(&env("", "")).unwrap();
        assert_eq!(head.info().operation, None);
    }

    fn count_impersonations_under_header(out: &str) -> (usize, usize) {
        let mut reader = NsReader::from_str(out);
        let mut stack: Vec<(Option<String>, String)> = Vec::new();
        let (mut under_header, mut anywhere) = (0, 0);
        loop {
            let (res, ev) = reader.read_resolved_event().unwrap();
            let ns = match &res {
                ResolveResult::Bound(n) => Some(n.as_ref().to_owned()),
                _ => None,
            };
            match ev {
                Event::Start(e) | Event::Empty(e)
                    if e.local_name().as_ref() == "ExchangeImpersonation"
                        && ns.as_deref() == Some(T) =>
                {
                    anywhere += 1;
                    if stack
                        .last()
                        .is_some_and(|(n, l)| n.as_deref() == Some(S) && l == "Header")
                        && stack.len() == 2
                    {
                        under_header += 1;
                    }
                    if !out.is_empty() {
                        stack.push((ns, "ExchangeImpersonation".into()));
                    }
                }
                Event::Start(e) => stack.push((ns, e.local_name().as_ref().to_owned())),
                Event::End(_) => {
                    stack.pop();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        (under_header, anywhere)
    }

    fn sample_docs() -> Vec<String> {
        vec![
            env(
                "<s:Header><t:RequestServerVersion Version=\"Exchange2016\"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>alice@contoso.example</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header>",
                FIND,
            ),
            env(
                "<s:Header><!-- c --><?pi x?><t:RequestServerVersion Version=\"Exchange2016\"/></s:Header>",
                FIND,
            ),
            env("<s:Header/>", FIND),
            env(
                "",
                &format!("{FIND}{}", "<t:Pad>padding &amp; more</t:Pad>".repeat(20)),
            ),
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_output(doc_index in 0usize..4, cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let doc = &sample_docs()[doc_index];
            let whole = rewrite_all(doc);
            let bytes = doc.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut scanner = PrefixScanner::new(RewriteLimits::default());
            let mut out = Vec::new();
            let mut prev = 0;
            let mut head = None;
            for p in points.into_iter().chain(std::iter::once(bytes.len())) {
                let chunk = &bytes[prev..p];
                prev = p;
                if head.is_some() || !out.is_empty() {
                    out.extend_from_slice(chunk);
                    continue;
                }
                if let Some(h) = scanner.push(chunk).unwrap() {
                    head = Some(h);
                    let h = head.take().unwrap();
                    out.extend_from_slice(&h.rewrite(&target()));
                }
            }
            if out.is_empty() {
                out.extend_from_slice(&scanner.finish().unwrap().rewrite(&target()));
            }
            prop_assert_eq!(String::from_utf8(out).unwrap(), whole);
        }

        #[test]
        fn output_has_exactly_one_impersonation_under_the_header(doc_index in 0usize..4, value in "[a-z]{1,12}@[a-z]{1,8}\\.example") {
            let doc = &sample_docs()[doc_index];
            let head = scan_all(doc).unwrap();
            let consumed = head.consumed_len();
            let target = ConnectingSid { kind: ConnectingSidKind::SmtpAddress, value: value.clone() };
            let mut out = head.rewrite(&target).to_vec();
            out.extend_from_slice(&doc.as_bytes()[consumed..]);
            let out = String::from_utf8(out).unwrap();
            prop_assert_eq!(count_impersonations_under_header(&out), (1, 1));
            let expected = format!("<t:SmtpAddress>{}</t:SmtpAddress>", value);
            prop_assert!(out.contains(&expected));
        }
    }
}
