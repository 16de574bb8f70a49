//! The bytes of one bucket segment, with no I/O: what `bucket.rs` writes and reads, and what the
//! segment fuzz target (`fuzz/`) feeds any bytes to. It uses nothing of this crate but
//! `murmur_sync` and `sha2`, so that target builds it without the manager's dependencies.
//!
//! `magic, u32 covers, (u16 len, key)*, u32 changes, (u16 shard, u32 len, change)*,
//! u32 bodies, (u32 len, record)*, sha256 of all before it`.

use murmur_sync::SignedChange;
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"MMSEG02\n";
const DIGEST_BYTES: usize = 32;

/// What one segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentContent {
    pub changes: Vec<(u16, SignedChange)>,
    /// Signed memory records whose entries are in this or an earlier segment.
    pub bodies: Vec<Vec<u8>>,
    /// For compacted segments: the segments whose changes this one includes.
    pub covers: Vec<String>,
}

/// Why an encoding was refused: a count or length its field cannot hold.
#[derive(Debug, thiserror::Error)]
#[error("a segment cannot hold {what} of {len}")]
pub struct TooLarge {
    pub what: &'static str,
    pub len: usize,
}

fn length<T: TryFrom<usize>>(what: &'static str, len: usize) -> Result<T, TooLarge> {
    T::try_from(len).map_err(|_| TooLarge { what, len })
}

pub fn encode(
    changes: &[(u16, SignedChange)],
    bodies: &[Vec<u8>],
    covers: &[String],
) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::with_capacity(
        64 + changes.iter().map(|(_, c)| c.bytes.len() + 70).sum::<usize>()
            + bodies.iter().map(|b| b.len() + 4).sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&length::<u32>("a cover count", covers.len())?.to_be_bytes());
    for key in covers {
        out.extend_from_slice(&length::<u16>("a covered key", key.len())?.to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out.extend_from_slice(&length::<u32>("a change count", changes.len())?.to_be_bytes());
    for (shard, change) in changes {
        let encoded = change.encode();
        out.extend_from_slice(&shard.to_be_bytes());
        out.extend_from_slice(&length::<u32>("a change", encoded.len())?.to_be_bytes());
        out.extend_from_slice(&encoded);
    }
    out.extend_from_slice(&length::<u32>("a body count", bodies.len())?.to_be_bytes());
    for body in bodies {
        out.extend_from_slice(&length::<u32>("a body", body.len())?.to_be_bytes());
        out.extend_from_slice(body);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Reads a segment; any damage (a flipped byte, a cut, bytes past the end) is an error naming
/// it. Counts are not trusted for allocation: a count its remaining bytes cannot hold is refused
/// before anything is reserved for it.
pub fn decode(bytes: &[u8]) -> Result<SegmentContent, String> {
    if bytes.len() < MAGIC.len() + 8 + DIGEST_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a murmur segment".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST_BYTES);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch (truncated or altered)".into());
    }
    let mut reader = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let cover_count = reader.count(2, "cover count")?;
    let mut covers = Vec::with_capacity(cover_count);
    for _ in 0..cover_count {
        let len = reader.u16()? as usize;
        let key = std::str::from_utf8(reader.take(len)?).map_err(|_| "covered key is not UTF-8")?;
        covers.push(key.to_owned());
    }
    let count = reader.count(6, "change count")?;
    let mut changes = Vec::with_capacity(count);
    for _ in 0..count {
        let shard = reader.u16()?;
        let len = reader.u32()? as usize;
        let change = SignedChange::decode(reader.take(len)?).map_err(|e| e.to_string())?;
        changes.push((shard, change));
    }
    let count = reader.count(4, "body count")?;
    let mut bodies = Vec::with_capacity(count);
    for _ in 0..count {
        let len = reader.u32()? as usize;
        bodies.push(reader.take(len)?.to_vec());
    }
    if reader.at != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(SegmentContent {
        changes,
        bodies,
        covers,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N)?.try_into().map_err(|_| "truncated".to_owned())
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A u32 count of items that take at least `min_bytes` each, refused where the bytes left
    /// cannot hold that many (so a forged count reserves nothing).
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, String> {
        let count = self.u32()? as usize;
        let left = self.bytes.len() - self.at;
        if count > left / min_bytes {
            return Err(format!("{what} {count} cannot fit in the {left} bytes left"));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8) -> (u16, SignedChange) {
        (
            n as u16,
            SignedChange {
                bytes: vec![n; 10 + n as usize],
                signature: [n; 64],
            },
        )
    }

    #[test]
    fn segments_round_trip_and_damage_is_detected() {
        let changes = vec![change(1), change(2)];
        let covers = vec!["v1/changes/a/000000000001.seg".to_owned()];
        let bodies = vec![vec![7u8; 33], Vec::new(), vec![9u8; 2]];
        let bytes = encode(&changes, &bodies, &covers).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.changes, changes);
        assert_eq!(back.bodies, bodies);
        assert_eq!(back.covers, covers);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        assert!(decode(b"something else entirely, long enough to pass").is_err());
    }

    #[test]
    fn a_count_its_bytes_cannot_hold_is_refused_before_anything_is_reserved() {
        // No covers, then four billion changes claimed in a segment of a few bytes.
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&0u32.to_be_bytes());
        forged.extend_from_slice(&u32::MAX.to_be_bytes());
        forged.extend_from_slice(&[0; 8]);
        let digest = Sha256::digest(&forged);
        forged.extend_from_slice(&digest);
        let refused = decode(&forged).unwrap_err();
        assert!(
            refused.contains("change count 4294967295 cannot fit"),
            "{refused}"
        );
    }

    #[test]
    fn a_key_too_long_for_its_length_field_is_refused_not_cut() {
        let covers = vec!["k".repeat(usize::from(u16::MAX) + 1)];
        let refused = encode(&[], &[], &covers).unwrap_err();
        assert_eq!(refused.what, "a covered key");
    }
}
