//! The differential check shared by the `differential` fuzz target and the in-process
//! `differential` test: the gateway's envelope-head scan against an independent strict XML 1.0
//! parser (roxmltree, the simulator's judge), on the same bytes (issue 12).
//!
//! Invariants: when the scan accepts a document, a strict parser never finds it malformed
//! inside the part the scan read (the head); and when both accept it, they agree on what it
//! means: the SOAP version, the client's impersonation (form and value) and the operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use ews_gateway_core::rewrite::{PrefixScanner, RewriteLimits};
use ews_gateway_core::soap::{ConnectingSidKind, NS_MESSAGES, NS_SOAP, NS_SOAP12, NS_TYPES};

/// Byte offset of a roxmltree text position (1-based row and column in characters).
fn offset(text: &str, pos: roxmltree::TextPos) -> usize {
    let mut row = 1;
    let mut col = 1;
    for (i, c) in text.char_indices() {
        if row == pos.row as usize && col == pos.col as usize {
            return i;
        }
        if c == '\n' {
            row += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    text.len()
}

fn elements<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children().filter(roxmltree::Node::is_element)
}

/// Panics when the scan and the strict parser disagree on `data` (see the module docs).
pub fn check(data: &[u8]) {
    let mut scanner = PrefixScanner::new(RewriteLimits::default());
    let head = match scanner.push(data) {
        Ok(Some(head)) => head,
        Ok(None) => match scanner.finish() {
            Ok(head) => head,
            Err(_) => return,
        },
        Err(_) => return,
    };
    let info = head.info().clone();
    let head_len = head.head_len();
    // The scan accepted only UTF-8 (an optional BOM first), so this cannot fail.
    let body = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let bom = data.len() - body.len();
    let Ok(text) = std::str::from_utf8(body) else {
        panic!("the scan accepted a body that is not UTF-8");
    };
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = match roxmltree::Document::parse_with_options(text, options) {
        Ok(doc) => doc,
        Err(e) => {
            let at = offset(text, e.pos()) + bom;
            // An error the strict parser can only see at the end of the input (an unclosed
            // element after the head) is not a disagreement about the head.
            assert!(
                at >= head_len || at >= data.len(),
                "the scan accepted a head a strict parser refuses at byte {at} (head is {head_len} bytes): {e}"
            );
            return;
        }
    };
    let root = doc.root_element();
    let version_ns = match info.soap_version {
        ews_gateway_core::rewrite::SoapVersion::Soap11 => NS_SOAP,
        ews_gateway_core::rewrite::SoapVersion::Soap12 => NS_SOAP12,
    };
    assert_eq!(root.tag_name().namespace(), Some(version_ns));
    assert_eq!(root.tag_name().name(), "Envelope");
    let header = elements(root).find(|n| n.tag_name().name() == "Header");
    let imps: Vec<_> = header
        .into_iter()
        .flat_map(elements)
        .filter(|n| {
            n.tag_name().namespace() == Some(NS_TYPES)
                && n.tag_name().name() == "ExchangeImpersonation"
        })
        .collect();
    match &info.client_impersonation {
        None => assert!(
            imps.is_empty(),
            "the scan saw no impersonation, the strict parser {}",
            imps.len()
        ),
        Some(sid) => {
            assert_eq!(imps.len(), 1);
            let csid = elements(imps[0]).next().expect("ConnectingSID");
            let id = elements(csid).next().expect("identity element");
            let kind = ConnectingSidKind::from_element_name(id.tag_name().name());
            assert_eq!(kind, Some(sid.kind));
            let value: String = id
                .descendants()
                .filter(roxmltree::Node::is_text)
                .filter_map(|t| t.text())
                .collect();
            assert_eq!(value.trim(), sid.value, "impersonation values differ");
        }
    }
    let body_el = elements(root)
        .find(|n| n.tag_name().name() == "Body")
        .expect("Body");
    let op = elements(body_el).next();
    match (&info.operation, op) {
        (None, None) => {}
        (Some(name), Some(op)) => {
            assert_eq!(op.tag_name().namespace(), Some(NS_MESSAGES));
            assert_eq!(op.tag_name().name(), name);
        }
        (scan, strict) => panic!(
            "operation: scan {scan:?}, strict {:?}",
            strict.map(|n| n.tag_name().name().to_owned())
        ),
    }
}
