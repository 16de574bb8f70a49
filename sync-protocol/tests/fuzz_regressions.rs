//! Replays every input the fuzzers found that once failed, through the same checks.

mod fuzz_checks;

use std::{fs, path::Path};

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut count = 0;
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        check(&data);
        count += 1;
    }
    count
}

#[test]
fn decode_message_regressions() {
    assert!(replay("decode_message", fuzz_checks::decode_message) > 0);
}

#[test]
fn engine_incoming_regressions() {
    // Also replays the decode regressions through a live engine.
    replay("decode_message", fuzz_checks::engine_incoming);
    replay("engine_incoming", fuzz_checks::engine_incoming);
}
