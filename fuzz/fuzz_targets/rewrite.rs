//! The envelope-head rewriter under arbitrary input and arbitrary chunking.
//!
//! Invariants: no panic; the outcome (error variant, or head info and output bytes) is the same
//! whether the input comes in one chunk or split at the fuzzer-chosen points; an accepted input
//! rewrites to bytes that the scanner accepts again with exactly the target impersonation and the
//! same operation; when the whole output is a well-formed document, the part before the Body holds
//! exactly one ExchangeImpersonation, directly under the one SOAP Header; when the client sent
//! none, every input byte is still there, in order, with only the inserted header added.
#![no_main]

use ews_gateway_core::rewrite::{PrefixScanner, RewriteError, RewriteLimits};
use ews_gateway_core::soap::{ConnectingSid, ConnectingSidKind, NS_SOAP, NS_SOAP12, NS_TYPES};
use libfuzzer_sys::fuzz_target;

type Outcome = Result<(String, Vec<u8>), RewriteError>;

fn run(input: &[u8], cuts: &[usize], limits: RewriteLimits, target: &ConnectingSid) -> Outcome {
    let mut chunks = Vec::new();
    let mut last = 0;
    for &cut in cuts {
        chunks.push(&input[last..cut]);
        last = cut;
    }
    chunks.push(&input[last..]);
    // Bytes the scanner did not consume (after the chunk that completed the head) follow as is.
    let mut scanner = PrefixScanner::new(limits);
    let mut consumed = 0;
    let mut head = None;
    for chunk in &chunks {
        consumed += chunk.len();
        if let Some(h) = scanner.push(chunk)? {
            head = Some(h);
            break;
        }
    }
    let head = match head {
        Some(h) => h,
        None => scanner.finish()?,
    };
    let info = format!("{:?}", head.info());
    let mut out = head.rewrite(target).to_vec();
    out.extend_from_slice(&input[consumed..]);
    Ok((info, out))
}

fn is(node: roxmltree::Node, ns: &str, local: &str) -> bool {
    node.tag_name().namespace() == Some(ns) && node.tag_name().name() == local
}

fn elements<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children().filter(roxmltree::Node::is_element)
}

/// Depths of the ExchangeImpersonation elements at or under `node`.
fn impersonations(node: roxmltree::Node, depth: usize, out: &mut Vec<usize>) {
    if is(node, NS_TYPES, "ExchangeImpersonation") {
        out.push(depth);
    }
    for child in elements(node) {
        impersonations(child, depth + 1, out);
    }
}

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|x| x == b))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let small_limit = data[0] & 1 == 1;
    let ncuts = (data[1] % 16) as usize;
    let seed = data[2];
    let input = &data[3..];
    let limits = RewriteLimits {
        max_prefix_bytes: if small_limit { 1024 } else { 64 * 1024 },
    };
    let target = ConnectingSid {
        kind: if seed & 1 == 0 {
            ConnectingSidKind::SmtpAddress
        } else {
            ConnectingSidKind::PrimarySmtpAddress
        },
        value: "target@contoso.example".to_owned(),
    };
    // Cut points derived deterministically from the input so the fuzzer controls them.
    let mut cuts: Vec<usize> = (0..ncuts)
        .map(|i| {
            let b = input.get(i * 7 % input.len().max(1)).copied().unwrap_or(0) as usize;
            (b * 31 + i * 97 + seed as usize) % (input.len() + 1)
        })
        .collect();
    cuts.sort_unstable();

    let whole = run(input, &[], limits, &target);
    let split = run(input, &cuts, limits, &target);
    assert_eq!(whole, split, "chunking changed the outcome");

    let Ok((_, out)) = whole else { return };
    let again = run(
        &out,
        &[],
        RewriteLimits {
            max_prefix_bytes: 1 << 20,
        },
        &target,
    );
    let Ok((info, _)) = again else {
        panic!("the rewritten head is refused: {again:?}");
    };
    assert!(
        info.contains("value: \"target@contoso.example\""),
        "the rewritten head does not impersonate the target: {info}"
    );
    let element = target.to_header_xml();
    let first = PrefixScanner::new(limits).push(input).ok().flatten();
    let client_sent = first
        .as_ref()
        .map(|h| h.info().client_impersonation.is_some())
        .unwrap_or(true);
    if !client_sent {
        assert!(is_subsequence(input, &out), "client bytes were lost");
        assert!(
            out.len() - input.len() <= element.len() + 64,
            "more than the impersonation was inserted"
        );
    }
    // What follows the Body's start is forwarded unparsed by design (Exchange reads headers only
    // before the Body), so only the Envelope's children before the first Body are checked.
    let text = std::str::from_utf8(&out).map(|t| t.strip_prefix('\u{feff}').unwrap_or(t));
    if let Ok(doc) = text.map(roxmltree::Document::parse)
        && let Ok(doc) = doc
    {
        let root = doc.root_element();
        let soap = if is(root, NS_SOAP12, "Envelope") {
            NS_SOAP12
        } else {
            NS_SOAP
        };
        let mut found = Vec::new();
        let mut headers = 0;
        for child in elements(root) {
            if is(child, soap, "Body") {
                break;
            }
            if is(child, soap, "Header") {
                headers += 1;
            }
            impersonations(child, 1, &mut found);
        }
        assert_eq!(
            found.len(),
            1,
            "not exactly one impersonation before the Body"
        );
        assert_eq!(
            found[0], 2,
            "the impersonation is not directly under the Header"
        );
        assert_eq!(headers, 1, "not exactly one Header before the Body");
    }
});
