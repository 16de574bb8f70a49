//! What a shard document holds for one memory when bodies travel by hash
//! ([`Format::BodiesByHash`](crate::Format)): the memory's author, the nonce that binds its id
//! to that author, and the sha256 of the signed record. The record itself (text, metadata,
//! vector) lives in the driver's store, travels beside the changes, and is erased when the
//! memory is deleted; the entry stays, so replicas still agree on which memories exist.

use sha2::{Digest, Sha256};

use crate::{
    codec::{Reader, Writer},
    error::{DecodeError, RecordError},
    id::{AuthorKey, MemoryId},
    record::MemoryRecord,
};

const ENTRY_FORMAT: u8 = 1;
/// Encoded size: format, nonce, author, body hash.
pub const ENTRY_BYTES: usize = 1 + 8 + 32 + 32;

pub type BodyHash = [u8; 32];

/// The hash a body travels and is checked by: sha256 of the signed record's bytes.
pub fn body_hash(record_bytes: &[u8]) -> BodyHash {
    Sha256::digest(record_bytes).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEntry {
    pub id: MemoryId,
    pub author: AuthorKey,
    pub nonce: u64,
    pub body_hash: BodyHash,
}

impl MemoryEntry {
    /// The entry of a record whose encoding is `record_bytes`.
    pub fn of(record: &MemoryRecord, record_bytes: &[u8]) -> Self {
        Self {
            id: record.id,
            author: record.author,
            nonce: record.nonce,
            body_hash: body_hash(record_bytes),
        }
    }

    /// The id is not encoded: it is the document key the entry is filed under.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(ENTRY_BYTES);
        w.u8(ENTRY_FORMAT);
        w.u64(self.nonce);
        w.raw(&self.author);
        w.raw(&self.body_hash);
        w.finish()
    }

    /// Decodes the entry filed under `id`, checking that `id` is bound to its author.
    pub fn decode(id: MemoryId, bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() != ENTRY_BYTES {
            return Err(RecordError::Invalid(format!(
                "a memory entry is {ENTRY_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        let mut r = Reader::new(bytes);
        let format = r.u8("entry format")?;
        if format != ENTRY_FORMAT {
            return Err(RecordError::Invalid(format!("unknown entry format {format}")));
        }
        let entry = Self {
            id,
            nonce: r.u64("nonce")?,
            author: r.array("author")?,
            body_hash: r.array("body hash")?,
        };
        r.finish("memory entry")?;
        if !id.is_bound_to(&entry.author, entry.nonce) {
            return Err(RecordError::IdNotBoundToAuthor);
        }
        Ok(entry)
    }

    /// Whether `record`, encoded as `record_bytes`, is the body this entry names. The record
    /// must re-encode to the same bytes, so a body has exactly one valid form and a replica
    /// that stores the decoded record can serve the bytes the hash was taken over.
    pub fn check_body(&self, record: &MemoryRecord, record_bytes: &[u8]) -> Result<(), RecordError> {
        if record.id != self.id || record.author != self.author || record.nonce != self.nonce {
            return Err(RecordError::Invalid(format!(
                "body of {} is not the memory its entry names",
                record.id
            )));
        }
        if body_hash(record_bytes) != self.body_hash {
            return Err(RecordError::Invalid(format!(
                "body of {} does not match the hash in its entry",
                record.id
            )));
        }
        if record.encode() != record_bytes {
            return Err(RecordError::Decode(DecodeError::Invalid {
                what: "memory record",
                reason: "not in canonical form".into(),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordLimits, tests::draft};
    use ed25519_dalek::SigningKey;

    fn signed() -> (MemoryRecord, Vec<u8>) {
        let key = SigningKey::from_bytes(&[4; 32]);
        MemoryRecord::sign(
            &draft("forklift battery low"),
            &key,
            1_000,
            7,
            &RecordLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn an_entry_round_trips_and_names_exactly_its_body() {
        let (record, bytes) = signed();
        let entry = MemoryEntry::of(&record, &bytes);
        let encoded = entry.encode();
        assert_eq!(encoded.len(), ENTRY_BYTES);
        assert_eq!(MemoryEntry::decode(record.id, &encoded).unwrap(), entry);
        entry.check_body(&record, &bytes).unwrap();

        let mut other = bytes.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert!(entry.check_body(&record, &other).is_err(), "a changed body");
        for (i, _) in encoded.iter().enumerate() {
            let mut flipped = encoded.clone();
            flipped[i] ^= 0x40;
            let decoded = MemoryEntry::decode(record.id, &flipped);
            assert!(
                decoded.is_err() || decoded.unwrap().body_hash != entry.body_hash,
                "byte {i} flipped still names the same body"
            );
        }
        let stranger = MemoryId([9; 16]);
        assert!(
            MemoryEntry::decode(stranger, &encoded).is_err(),
            "filed under another id"
        );
        assert!(MemoryEntry::decode(record.id, &encoded[1..]).is_err());
    }
}
