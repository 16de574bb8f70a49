#![no_main]
//! Any bytes from a peer, raw or wrapped in a well-formed frame so the fuzzer reaches
//! automerge's parsers and the change gate: the engine never panics, and a refused message
//! leaves its state exactly as it was.

#[path = "../checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::engine_incoming(data));
