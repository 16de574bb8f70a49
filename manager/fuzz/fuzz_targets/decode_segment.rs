#![no_main]
//! Any bytes as a segment from the bucket (which another manager, or whoever can write the
//! bucket, wrote). See `checks.rs`.

#[path = "../../src/segment.rs"]
mod segment;

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::decode_segment(data));
