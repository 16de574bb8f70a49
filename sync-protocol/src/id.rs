//! Memory ids, bound to their author's key.
//!
//! An id looks like a UUIDv7 (48-bit creation time in ms, then 74 bits) but the 74 bits are a
//! hash of the author's public key, the time and a nonce. Anyone can check that binding from the
//! record alone, so no member of the swarm can publish a record or a tombstone that claims
//! another author's id: the id space is partitioned by author without coordination.

use std::fmt;

use sha2::{Digest, Sha256};

pub type AuthorKey = [u8; 32];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryId(pub [u8; 16]);

/// The largest creation time an id can hold (48 bits of milliseconds: the year 10889).
pub const MAX_ID_TIME_MS: u64 = (1 << 48) - 1;

impl MemoryId {
    pub fn derive(author: &AuthorKey, created_at_ms: u64, nonce: u64) -> Self {
        let ms = created_at_ms.min(MAX_ID_TIME_MS);
        let mut hasher = Sha256::new();
        hasher.update(b"murmur/id/v1\0");
        hasher.update(author);
        hasher.update(ms.to_le_bytes());
        hasher.update(nonce.to_le_bytes());
        let hash = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&hash[..10]);
        bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        Self(bytes)
    }

    /// True when this id is what `author` derives from the id's own time and `nonce`.
    pub fn is_bound_to(&self, author: &AuthorKey, nonce: u64) -> bool {
        Self::derive(author, self.created_at_ms(), nonce) == *self
    }

    pub fn created_at_ms(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }

    /// Which shard document holds this memory. The low bytes are hash output, so memories
    /// spread evenly whatever their authors or times.
    pub fn shard(&self, shards: u16) -> u16 {
        u16::from_le_bytes([self.0[14], self.0[15]]) % shards.max(1)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_uuid(), f)
    }
}

impl fmt::Debug for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryId({})", self.as_uuid())
    }
}

impl From<MemoryId> for uuid::Uuid {
    fn from(id: MemoryId) -> Self {
        id.as_uuid()
    }
}

/// Short hex of a key for logs and errors.
pub fn short_key(key: &AuthorKey) -> String {
    hex::encode(&key[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_bound_to_their_author() {
        let author = [7u8; 32];
        let id = MemoryId::derive(&author, 1_760_000_000_123, 42);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(id.created_at_ms(), 1_760_000_000_123);
        assert!(id.is_bound_to(&author, 42));
        assert!(!id.is_bound_to(&author, 43));
        assert!(!id.is_bound_to(&[8u8; 32], 42));
        assert_eq!(MemoryId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(MemoryId::from_hex("zz"), None);
    }

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0u32; 16];
        for nonce in 0..16_000 {
            counts[MemoryId::derive(&[1; 32], 5, nonce).shard(16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
