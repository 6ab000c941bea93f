//! Differential fuzzing of the envelope-head scan against roxmltree; the invariants are in
//! `differential_check.rs`, shared with the in-process `tests/differential.rs`.
#![no_main]

#[path = "differential_check.rs"]
mod differential_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| differential_check::check(data));
