//! What each manager fuzz target checks of one input; shared by the targets and the replay of
//! every committed input (`tests/tests/fuzz_regressions.rs`). The crate that includes this file
//! names the segment codec `crate::segment`.

use sha2::{Digest, Sha256};

use crate::segment;

/// Any bytes as a bucket segment, as they are and sealed with a valid magic and checksum (so
/// the fuzzer gets past the checksum into the structure): decoding never panics, and what
/// decodes re-encodes to the same bytes.
pub fn decode_segment(data: &[u8]) {
    let _ = segment::decode(data);
    let mut sealed = segment::MAGIC.to_vec();
    sealed.extend_from_slice(data);
    let digest = Sha256::digest(&sealed);
    sealed.extend_from_slice(&digest);
    if let Ok(content) = segment::decode(&sealed) {
        let again = segment::encode(&content.changes, &content.bodies, &content.covers)
            .expect("what was read fits the format");
        assert_eq!(again, sealed);
    }
}
