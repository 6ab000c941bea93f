//! The translation backend's reader for a whole SOAP request: a namespace-aware element tree
//! with bounded memory.
//!
//! Unlike the pass-through, which forwards the body after reading its head, the translator must
//! understand the whole request. The tree holds everything except the two elements that carry
//! bulk base64 (`t:Content` and `t:MimeContent`): their text bypasses quick-xml and is decoded
//! as it streams past into a [`Spool`](super::spool::Spool). Everything else is bounded: a run of
//! bytes without markup is limited (so no single text or tag can grow a buffer without bound)
//! and so is the sum of all retained text. DOCTYPE is refused, only predefined and character
//! references are resolved, and names are matched by namespace URI, never by prefix.

use std::io::{self, BufRead};

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use super::spool::{Base64Decoder, Base64Error, Spool, SpoolData};
use crate::soap::NS_TYPES;

/// Limits of the request reader.
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    /// Longest run of bytes between two `<` outside bulk base64 elements (one text or tag).
    pub max_run: usize,
    /// Sum of all text and attribute bytes kept in the tree.
    pub max_retained: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// In-memory size of a spool before it moves to a temporary file.
    pub spool_threshold: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            // A message body of a few MB is one text node; Graph refuses requests over 4 MB.
            max_run: 6 * 1024 * 1024,
            max_retained: 8 * 1024 * 1024,
            max_depth: 64,
            spool_threshold: super::spool::DEFAULT_MEMORY_THRESHOLD,
        }
    }
}

/// Why the request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Not well-formed.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A DOCTYPE declaration (refused as Exchange refuses it).
    #[error("DTD is prohibited in this XML document")]
    Doctype,
    /// Over one of the limits.
    #[error("the request exceeds the translator's limit: {0}")]
    TooLarge(&'static str),
    /// Bad base64 in `t:Content` / `t:MimeContent`.
    #[error(transparent)]
    Base64(#[from] Base64Error),
    /// The body could not be read.
    #[error("reading the request: {0}")]
    Io(io::Error),
}

/// A child node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Text (references resolved, CDATA included).
    Text(String),
    /// The decoded content of a bulk base64 element.
    Spooled(SpoolData),
}

/// An attribute (namespace declarations excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI when the name was prefixed.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Value, references resolved.
    pub value: String,
}

/// An element with its namespace URI.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// Namespace URI.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Attributes.
    pub attrs: Vec<Attr>,
    /// Children in order.
    pub children: Vec<Node>,
}

impl Element {
    /// Whether this is `{ns}local`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// Child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// The first child `{ns}local`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, local))
    }

    /// All children `{ns}local`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.is(ns, local))
    }

    /// The number of children `{ns}local`.
    pub fn count(&self, ns: &str, local: &str) -> usize {
        self.children_named(ns, local).count()
    }

    /// An unqualified attribute.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// The element's text (concatenated text children).
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// The text of child `{ns}local`, trimmed.
    pub fn child_text(&self, ns: &str, local: &str) -> Option<String> {
        self.child(ns, local).map(|e| e.text().trim().to_owned())
    }

    /// The decoded bulk content, if this is a `Content`/`MimeContent` element.
    pub fn spooled(&self) -> Option<&SpoolData> {
        self.children.iter().find_map(|n| match n {
            Node::Spooled(s) => Some(s),
            _ => None,
        })
    }
}

/// Whether an element's text is bulk base64 decoded into a spool.
fn is_bulk(ns: Option<&str>, local: &str) -> bool {
    ns == Some(NS_TYPES) && matches!(local, "Content" | "MimeContent")
}

/// A `BufRead` wrapper that limits runs of bytes without `<` while not in bulk mode.
struct RunLimit<R> {
    inner: R,
    run: usize,
    max_run: usize,
    tripped: bool,
    total: u64,
}

impl<R: BufRead> io::Read for RunLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for RunLimit<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Refusing to hand out more bytes is what bounds quick-xml's event buffer.
        if self.over() {
            return Err(io::Error::other(
                "run of bytes without markup over the limit",
            ));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let taken = &buf[..amt.min(buf.len())];
            // Every run between two `<` counts, also one that ends inside this piece.
            for (i, piece) in taken.split(|&b| b == b'<').enumerate() {
                self.run = if i == 0 {
                    self.run + piece.len()
                } else {
                    piece.len()
                };
                if self.run > self.max_run {
                    self.tripped = true;
                }
            }
        }
        self.total += amt as u64;
        self.inner.consume(amt);
    }
}

impl<R: BufRead> RunLimit<R> {
    fn over(&self) -> bool {
        self.tripped || self.run > self.max_run
    }

    /// Decodes bulk base64 up to (not including) the next `<`, bypassing quick-xml.
    fn read_bulk(&mut self, decoder: &mut Base64Decoder) -> Result<(), XmlError> {
        loop {
            let buf = self.inner.fill_buf().map_err(XmlError::Io)?;
            if buf.is_empty() {
                return Err(XmlError::Malformed(
                    "unexpected end of document in base64 content".into(),
                ));
            }
            let (piece, done) = match buf.iter().position(|&b| b == b'<') {
                Some(pos) => (&buf[..pos], true),
                None => (buf, false),
            };
            if piece.contains(&b'&') {
                return Err(
                    Base64Error::Invalid("entity reference in base64 content".into()).into(),
                );
            }
            decoder.feed(piece)?;
            let n = piece.len();
            self.total += n as u64;
            self.inner.consume(n);
            self.run = 0;
            if done {
                return Ok(());
            }
        }
    }
}

fn ns_of(resolved: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(XmlError::Malformed(format!(
            "undeclared namespace prefix '{prefix}'"
        ))),
    }
}

fn start_element<R>(
    reader: &NsReader<R>,
    ns: Option<String>,
    start: &BytesStart<'_>,
    retained: &mut usize,
    limits: &XmlLimits,
) -> Result<Element, XmlError> {
    let local = start.local_name().as_ref().to_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::Malformed(e.to_string()))?;
        let key = attr.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let (resolved, local_name) = reader.resolver().resolve_attribute(key);
        let ns = ns_of(resolved)?;
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| XmlError::Malformed(e.to_string()))?
            .into_owned();
        keep(retained, value.len(), limits)?;
        attrs.push(Attr {
            ns,
            local: local_name.as_ref().to_owned(),
            value,
        });
    }
    keep(retained, local.len(), limits)?;
    Ok(Element {
        ns,
        local,
        attrs,
        children: Vec::new(),
    })
}

fn keep(retained: &mut usize, n: usize, limits: &XmlLimits) -> Result<(), XmlError> {
    *retained += n;
    if *retained > limits.max_retained {
        Err(XmlError::TooLarge("total text"))
    } else {
        Ok(())
    }
}

fn push_text(stack: &mut [Element], text: String) {
    if let Some(parent) = stack.last_mut() {
        match parent.children.last_mut() {
            Some(Node::Text(t)) => t.push_str(&text),
            _ => parent.children.push(Node::Text(text)),
        }
    }
}

/// Reads a whole document from `source` and returns its root element.
pub fn parse<R: BufRead>(source: R, limits: &XmlLimits) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_reader(RunLimit {
        inner: source,
        run: 0,
        max_run: limits.max_run,
        tripped: false,
        total: 0,
    });
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut retained = 0usize;
    loop {
        buf.clear();
        if reader.get_ref().over() {
            return Err(XmlError::TooLarge("one text or tag"));
        }
        let (resolved, event) = match reader.read_resolved_event_into(&mut buf) {
            Ok(pair) => pair,
            Err(e) => {
                if reader.get_ref().over() {
                    return Err(XmlError::TooLarge("one text or tag"));
                }
                return Err(match e {
                    quick_xml::Error::Io(io) => {
                        XmlError::Io(io::Error::new(io.kind(), io.to_string()))
                    }
                    other => XmlError::Malformed(other.to_string()),
                });
            }
        };
        let element_ns = match &event {
            Event::Start(_) | Event::Empty(_) => ns_of(resolved)?,
            _ => None,
        };
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) | Event::Empty(start) if root.is_some() => {
                let _ = start;
                return Err(XmlError::Malformed("content after the root element".into()));
            }
            Event::Start(start) => {
                if stack.len() >= limits.max_depth {
                    return Err(XmlError::TooLarge("element nesting"));
                }
                let el = start_element(&reader, element_ns, &start, &mut retained, limits)?;
                let bulk = is_bulk(el.ns.as_deref(), &el.local);
                stack.push(el);
                if bulk {
                    let mut decoder = Base64Decoder::new(Spool::new(limits.spool_threshold));
                    reader.get_mut().read_bulk(&mut decoder)?;
                    let data = decoder.finish()?;
                    if let Some(el) = stack.last_mut() {
                        el.children.push(Node::Spooled(data));
                    }
                }
            }
            Event::Empty(start) => {
                let mut el = start_element(&reader, element_ns, &start, &mut retained, limits)?;
                if is_bulk(el.ns.as_deref(), &el.local) {
                    el.children
                        .push(Node::Spooled(SpoolData::from_bytes(Vec::new())));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(XmlError::Malformed("unbalanced end tag".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(text) => {
                let text = text.xml10_content().into_owned();
                if stack.is_empty() {
                    if !text.trim().is_empty() {
                        return Err(XmlError::Malformed("text outside the root element".into()));
                    }
                    continue;
                }
                // Whitespace between elements is not worth keeping or counting.
                if text.trim().is_empty() && stack.last().is_some_and(|p| !p.children.is_empty()) {
                    continue;
                }
                keep(&mut retained, text.len(), limits)?;
                push_text(&mut stack, text);
            }
            Event::GeneralRef(reference) => {
                let name = reference.xml10_content();
                let text = match name.as_ref() {
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "amp" => "&".to_owned(),
                    "apos" => "'".to_owned(),
                    "quot" => "\"".to_owned(),
                    other => reference
                        .resolve_char_ref()
                        .map_err(|e| XmlError::Malformed(e.to_string()))?
                        .ok_or_else(|| XmlError::Malformed(format!("undeclared entity '{other}'")))?
                        .to_string(),
                };
                keep(&mut retained, text.len(), limits)?;
                push_text(&mut stack, text);
            }
            Event::CData(cdata) => {
                let text = cdata.into_inner().into_owned();
                keep(&mut retained, text.len(), limits)?;
                push_text(&mut stack, text);
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed("unexpected end of document".into()));
    }
    root.ok_or_else(|| XmlError::Malformed("no root element".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn limits() -> XmlLimits {
        XmlLimits {
            spool_threshold: 1024,
            ..XmlLimits::default()
        }
    }

    #[test]
    fn namespaces_resolve_whatever_the_prefix() {
        let doc = br#"<?xml version="1.0"?><x:Envelope xmlns:x="urn:s" xmlns="urn:d"><x:Body><Op a="1&amp;2">x &lt; y&#x41;</Op></x:Body></x:Envelope>"#;
        let root = parse(&doc[..], &limits()).unwrap();
        assert!(root.is("urn:s", "Envelope"));
        let op = root
            .child("urn:s", "Body")
            .unwrap()
            .child("urn:d", "Op")
            .unwrap();
        assert_eq!(op.attr("a"), Some("1&2"));
        assert_eq!(op.text(), "x < yA");
    }

    #[test]
    fn doctype_and_unknown_entities_are_refused() {
        let dtd = br#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#;
        assert!(matches!(parse(&dtd[..], &limits()), Err(XmlError::Doctype)));
        assert!(matches!(
            parse(&b"<a>&x;</a>"[..], &limits()),
            Err(XmlError::Malformed(_))
        ));
        assert!(
            parse(&b"<p:a/>"[..], &limits()).is_err(),
            "undeclared prefix"
        );
        assert!(parse(&b"<a><b></a>"[..], &limits()).is_err());
    }

    #[test]
    fn bulk_content_is_spooled_not_kept_as_text() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let doc = format!(
            r#"<r xmlns:t="{NS_TYPES}"><t:Content>{b64}</t:Content><t:MimeContent CharacterSet="UTF-8"/><t:Name>n</t:Name></r>"#
        );
        // Small reader buffers force the scanner across many refills.
        let reader = io::BufReader::with_capacity(7, doc.as_bytes());
        let root = parse(reader, &limits()).unwrap();
        let content = root.child(NS_TYPES, "Content").unwrap();
        let spool = content.spooled().unwrap();
        assert!(spool.on_disk());
        assert_eq!(spool.read_all_blocking().unwrap(), data);
        assert_eq!(content.text(), "");
        assert!(
            root.child(NS_TYPES, "MimeContent")
                .unwrap()
                .spooled()
                .unwrap()
                .is_empty()
        );
        assert_eq!(root.child_text(NS_TYPES, "Name").as_deref(), Some("n"));
    }

    #[test]
    fn content_in_another_namespace_is_plain_text_and_bounded() {
        let big = "A".repeat(100_000);
        let doc = format!("<r><Content>{big}</Content></r>");
        let small = XmlLimits {
            max_run: 10_000,
            ..limits()
        };
        assert!(matches!(
            parse(doc.as_bytes(), &small),
            Err(XmlError::TooLarge(_))
        ));
        let tight = XmlLimits {
            max_retained: 1_000,
            ..limits()
        };
        let many = format!("<r>{}</r>", "<a>0123456789</a>".repeat(200));
        assert!(matches!(
            parse(many.as_bytes(), &tight),
            Err(XmlError::TooLarge(_))
        ));
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(matches!(
            parse(deep.as_bytes(), &limits()),
            Err(XmlError::TooLarge(_))
        ));
    }

    #[test]
    fn bad_base64_and_entities_in_content_are_refused() {
        for body in ["QUJD*", "QU&amp;JD", "QQ==QQ=="] {
            let doc = format!(r#"<r xmlns:t="{NS_TYPES}"><t:Content>{body}</t:Content></r>"#);
            assert!(parse(doc.as_bytes(), &limits()).is_err(), "{body}");
        }
    }
}
