//! A small namespace-aware DOM for the simulator, built with roxmltree.
//!
//! The simulator plays the server: it may read a whole (bounded) request before answering, so a
//! tree is the simplest faithful model. It parses with roxmltree, a well-formedness-checking XML
//! 1.0 parser independent of the quick-xml reader the gateway uses, so that it judges what the
//! gateway forwards as a strict server would (issue 12): a document it refuses is answered with
//! `ErrorInvalidRequest`, as Exchange does. DOCTYPE declarations are refused, as Exchange refuses
//! them.

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
}

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

/// Most nodes a request may have (a 150 MB attachment is one text node; this bounds the tree).
const MAX_NODES: u32 = 1_000_000;

/// Parses a complete UTF-8 document (an optional UTF-8 byte-order mark first) and returns its
/// root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text =
        std::str::from_utf8(bytes).map_err(|e| XmlError::Malformed(format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::DtdDetected => XmlError::Doctype,
        other => XmlError::Malformed(other.to_string()),
    })?;
    // roxmltree reads `xmlns:p=""` as undeclaring p (XML 1.1); Namespaces in XML 1.0 forbids
    // it and .NET refuses it.
    if let Some(ns) = doc
        .descendants()
        .filter(roxmltree::Node::is_element)
        .flat_map(|n| n.namespaces())
        .find(|ns| ns.name().is_some() && ns.uri().is_empty())
    {
        return Err(XmlError::Malformed(format!(
            "the prefix '{}' is declared with an empty namespace name",
            ns.name().unwrap_or_default()
        )));
    }
    Ok(convert(doc.root_element()))
}

fn convert(node: roxmltree::Node<'_, '_>) -> Element {
    let attrs = node
        .attributes()
        .map(|a| Attr {
            ns: a.namespace().map(str::to_owned),
            local: a.name().to_owned(),
            value: a.value().to_owned(),
        })
        .collect();
    let children = node
        .children()
        .filter_map(|child| {
            if child.is_element() {
                Some(Node::Element(convert(child)))
            } else if child.is_text() {
                child.text().map(|t| Node::Text(t.to_owned()))
            } else {
                None
            }
        })
        .collect();
    Element {
        ns: node.tag_name().namespace().map(str::to_owned),
        local: node.tag_name().name().to_owned(),
        attrs,
        children,
    }
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

    /// The XML 1.0 rules the gateway's head scan enforces (issue 12) are enforced here too, by
    /// an independent parser.
    #[test]
    fn refuses_what_xml_1_0_forbids() {
        let mut accepted = Vec::new();
        for (name, doc) in [
            ("control character", "<x>a\u{1}b</x>"),
            ("U+FFFE", "<x>\u{FFFE}</x>"),
            ("reference to a control", "<x>&#1;</x>"),
            ("lt in attribute", "<x a=\"<\"/>"),
            (
                "duplicate expanded attribute",
                "<x xmlns:a=\"urn:x\" xmlns:b=\"urn:x\" a:v=\"1\" b:v=\"2\"/>",
            ),
            ("empty prefixed namespace", "<x xmlns:p=\"\"/>"),
            ("xml prefix rebound", "<x xmlns:xml=\"urn:y\"/>"),
            ("reference in a name", "<x&#x3A;y/>"),
            ("no whitespace between attributes", "<x a=\"1\"b=\"2\"/>"),
            ("two colons", "<a:b:c xmlns:a=\"urn:x\"/>"),
        ] {
            if parse(doc.as_bytes()).is_ok() {
                accepted.push(format!("{name}: {doc}"));
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }
}
