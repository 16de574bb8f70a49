#![no_main]
//! Any bytes as a memory body, tombstone or entry: decoding never panics, and what decodes
//! re-encodes to the same bytes.

#[path = "../../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::decode_record(data));
