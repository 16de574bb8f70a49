#![no_main]
//! Any bytes: decoding never panics, and what decodes re-encodes to the same bytes.

use libfuzzer_sys::fuzz_target;
use murmur_sync::{MAX_MESSAGE_BYTES, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data, MAX_MESSAGE_BYTES) {
        assert_eq!(message.encode(), data);
    }
});
