#![no_main]
//! Any bytes from the other end of an uplink: frames, the first one's payload as a handshake
//! hello checked against a membership policy. See `checks.rs`.

#[path = "../checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::uplink_frames(data));
