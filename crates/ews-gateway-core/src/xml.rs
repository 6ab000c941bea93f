//! A small namespace-aware DOM for the few small documents the gateway reads whole: Autodiscover
//! requests (bounded by the caller) and the answers `check` gets from Exchange.
//!
//! EWS request bodies are never read this way (they stream through `rewrite`). DOCTYPE
//! declarations are refused and nesting is bounded, so a hostile document costs little.

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// Errors while parsing a request document.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The document is not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The document carries a DOCTYPE (DTDs are refused).
    #[error("DTD is prohibited in this XML document")]
    Doctype,
    /// The document has no root element.
    #[error("no root element")]
    Empty,
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("elements nest deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Deepest element nesting accepted (Autodiscover and EWS answers need fewer than 20 levels).
pub const MAX_DEPTH: usize = 64;

/// An XML attribute with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI, if the attribute name was prefixed.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Unescaped value.
    pub value: String,
}

/// A child node: an element or a run of text (CDATA included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data.
    Text(String),
}

/// An element with its resolved namespace, attributes and children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace URI of the element name.
    pub ns: Option<String>,
    /// Local name.
    pub local: String,
    /// Attributes, namespace declarations excluded.
    pub attrs: Vec<Attr>,
    /// Children in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// Whether this element is `{ns}local`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// Child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element named `{ns}local`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, local))
    }

    /// All child elements named `{ns}local`.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.is(ns, local))
    }

    /// Concatenated text of this element's direct text children, trimmed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out.trim().to_owned()
    }

    /// Value of the un-namespaced attribute `local`.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// Follows a path of `(ns, local)` steps through first matching children.
    pub fn path(&self, steps: &[(&str, &str)]) -> Option<&Element> {
        let mut current = self;
        for (ns, local) in steps {
            current = current.child(ns, local)?;
        }
        Some(current)
    }
}

fn ns_of(resolved: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(ns.as_ref().to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(XmlError::Malformed(format!(
            "undeclared namespace prefix '{}'",
            prefix
        ))),
    }
}

fn start_element(
    reader: &NsReader<&[u8]>,
    ns: Option<String>,
    start: &quick_xml::events::BytesStart<'_>,
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
        attrs.push(Attr {
            ns,
            local: local_name.as_ref().to_owned(),
            value,
        });
    }
    Ok(Element {
        ns,
        local,
        attrs,
        children: Vec::new(),
    })
}

/// Parses a complete document and returns its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        let element_ns = match &event {
            Event::Start(_) | Event::Empty(_) => ns_of(resolved)?,
            _ => None,
        };
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let el = start_element(&reader, element_ns, &start)?;
                stack.push(el);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                let el = start_element(&reader, element_ns, &start)?;
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
                let unescaped = text.xml10_content().into_owned();
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node::Text(unescaped));
                } else if !unescaped.trim().is_empty() {
                    return Err(XmlError::Malformed("text outside the root element".into()));
                }
            }
            Event::GeneralRef(reference) => {
                // Only the predefined and character references exist without a DTD.
                let name = reference.xml10_content();
                let text = match name.as_ref() {
                    "lt" => "<".to_owned(),
                    "gt" => ">".to_owned(),
                    "amp" => "&".to_owned(),
                    "apos" => "'".to_owned(),
                    "quot" => "\"".to_owned(),
                    other => {
                        let ch = reference
                            .resolve_char_ref()
                            .map_err(|e| XmlError::Malformed(e.to_string()))?
                            .ok_or_else(|| {
                                XmlError::Malformed(format!("undeclared entity '{other}'"))
                            })?;
                        ch.to_string()
                    }
                };
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node::Text(text));
                }
            }
            Event::CData(cdata) => {
                let text = cdata.into_inner().into_owned();
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node::Text(text));
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed("unexpected end of document".into()));
    }
    root.ok_or(XmlError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_prefixed_and_default_namespaces() {
        let doc = br#"<?xml version="1.0"?><s:Envelope xmlns:s="urn:s" xmlns="urn:d"><s:Body><Op a="1&amp;2">x &lt; y</Op></s:Body></s:Envelope>"#;
        let root = parse(doc).unwrap();
        assert!(root.is("urn:s", "Envelope"));
        let op = root.path(&[("urn:s", "Body"), ("urn:d", "Op")]).unwrap();
        assert_eq!(op.attr("a"), Some("1&2"));
        assert_eq!(op.text(), "x < y");
    }

    #[test]
    fn refuses_doctype() {
        let doc = br#"<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>"#;
        assert!(matches!(parse(doc), Err(XmlError::Doctype)));
    }

    #[test]
    fn refuses_unknown_entity_and_truncation() {
        assert!(parse(b"<x>&foo;</x>").is_err());
        assert!(parse(b"<x><y></y>").is_err());
        assert!(parse(b"<x></y>").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"<p:x/>").is_err());
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(parse(deep.as_bytes()), Err(XmlError::TooDeep)));
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
