//! The `Authorization: Basic` parser: no panic on any bytes, and what it accepts round-trips.
#![no_main]

use base64::Engine;
use ews_gateway_core::auth::parse_basic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(creds) = parse_basic(data) else { return };
    assert!(!creds.username.is_empty());
    assert!(
        !creds.username.contains(':'),
        "the user name ends at the first colon"
    );
    let again = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password))
    );
    let back = parse_basic(again.as_bytes()).expect("a re-encoded credential parses");
    assert_eq!(back.username, creds.username);
    assert_eq!(back.password, creds.password);
});
