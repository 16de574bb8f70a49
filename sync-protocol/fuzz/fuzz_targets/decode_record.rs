#![no_main]
//! Any bytes as a memory body, tombstone or entry: decoding never panics, and what decodes
//! re-encodes to the same bytes.

#[path = "../checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::decode_record(data));
