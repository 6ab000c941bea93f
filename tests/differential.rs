//! The differential check of `fuzz/fuzz_targets/differential_check.rs` run in process on a
//! bounded, deterministic corpus: the fuzz seeds, and each seed with every one of a set of
//! XML-rule-breaking snippets inserted at every byte offset of its first 600 bytes, and each
//! single byte deleted there (issue 12). `fuzz/run.sh` runs the same check under libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unreachable_pub)] // shared with the fuzz target, where it is a crate root item
#[path = "../fuzz/fuzz_targets/differential_check.rs"]
mod differential_check;

const SNIPPETS: &[&str] = &[
    "\u{1}",
    "\u{1b}",
    "\u{FFFE}",
    "\u{FFFF}",
    "\u{85}",
    "\u{2028}",
    "&#1;",
    "&#x0;",
    "&#xFFFE;",
    "&#xD800;",
    "&#x3A;",
    "&amp;",
    "&lt;",
    "<",
    ">",
    "]]>",
    "\"",
    "'",
    ":",
    " ",
    "\r",
    "=",
    " a=\"<\"",
    " xmlns:p=\"\"",
    " xmlns:xml=\"urn:x\"",
    " xmlns:t=\"urn:x\"",
    " xmlns=\"urn:x\"",
    "<?XML x?>",
    "<?xml version=\"1.0\"?>",
    "<!-- -->",
    "<!-- -- -->",
    "<![CDATA[x]]>",
    "<x/>",
    "</s:Header>",
    "<s:Header>",
    "<t:ExchangeImpersonation>",
    "<t:PrincipalName>",
    "<!DOCTYPE x>",
];

#[test]
fn the_scan_and_a_strict_parser_agree_on_every_head() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/rewrite");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "seeds in {}", dir.display());
    let mut executions = 0u64;
    for seed in &seeds {
        differential_check::check(seed);
        executions += 1;
        for at in 0..seed.len().min(600) {
            for snippet in SNIPPETS {
                let mut input = seed[..at].to_vec();
                input.extend_from_slice(snippet.as_bytes());
                input.extend_from_slice(&seed[at..]);
                differential_check::check(&input);
                executions += 1;
            }
            let mut deleted = seed.clone();
            deleted.remove(at);
            differential_check::check(&deleted);
            executions += 1;
        }
    }
    eprintln!("{executions} differential executions");
    assert!(executions > 10_000, "{executions}");
}
