//! A replica as one blob, so a driver's start does not replay every change it ever persisted.
//!
//! [`Engine::snapshot`](crate::Engine::snapshot) copies what a replica holds (each shard's
//! document and the signatures of its changes, and which memories are shown, deleted or
//! awaiting their bodies) under the driver's lock; [`Snapshot::encode`] serialises the copy
//! afterwards, off that lock. [`Engine::resume`](crate::Engine::resume) rebuilds the replica
//! from the bytes and the changes persisted after them. The snapshot is derived state, like
//! an index: the persisted changes stay the truth, and a snapshot that does not decode (its
//! checksum, its header, a document) is refused whole, so the driver replays instead.
//!
//! Layout (version 2), all integers as in the wire codec:
//!
//! ```text
//! "MMSNAP02" | shards u16 | format u8 | author [32]
//! per shard, in order: signatures (count, then hash [32] + signature [64] each),
//!                      document (length-prefixed automerge save, uncompressed)
//! visible, deleted, awaiting: count, then ids [16] each
//! CRC-32 of everything before, little-endian [4]
//! ```
//!
//! A CRC, not a cryptographic hash: the snapshot is the driver's own file, and the check is
//! against damage (a SHA-256 over 150 MB was a third of a start at 1M memories). A driver that
//! keeps it where others could write it seals it, as the agent does.

use automerge::{ActorId, Automerge, ChangeHash, LoadOptions, VerificationMode};

use crate::{
    AuthorKey, MemoryId,
    codec::{Reader, Writer},
    error::DecodeError,
    message::Format,
};

const MAGIC: &[u8; 8] = b"MMSNAP02";
const CHECKSUM_BYTES: usize = 4;

/// What [`Engine::snapshot`](crate::Engine::snapshot) copied; [`Snapshot::encode`] is the
/// expensive part, so it runs without the engine.
pub struct Snapshot {
    pub(crate) format: Format,
    pub(crate) author: AuthorKey,
    pub(crate) shards: Vec<ShardImage>,
    pub(crate) visible: Vec<MemoryId>,
    pub(crate) deleted: Vec<MemoryId>,
    pub(crate) awaiting: Vec<MemoryId>,
}

pub(crate) struct ShardImage {
    pub doc: Automerge,
    pub signatures: Vec<(ChangeHash, [u8; 64])>,
}

/// A decoded snapshot, ready to become an engine's state.
pub(crate) struct Decoded {
    pub shards: Vec<ShardImage>,
    pub visible: Vec<MemoryId>,
    pub deleted: Vec<MemoryId>,
    pub awaiting: Vec<MemoryId>,
}

impl Snapshot {
    /// How many memories it shows.
    pub fn visible_count(&self) -> usize {
        self.visible.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 << 16);
        w.raw(MAGIC);
        w.u16(self.shards.len() as u16);
        w.u8(format_byte(self.format));
        w.raw(&self.author);
        for shard in &self.shards {
            w.varint(shard.signatures.len() as u64);
            for (hash, signature) in &shard.signatures {
                w.raw(&hash.0);
                w.raw(signature);
            }
            w.bytes(&shard.doc.save_nocompress());
        }
        for ids in [&self.visible, &self.deleted, &self.awaiting] {
            w.varint(ids.len() as u64);
            for id in ids {
                w.raw(&id.0);
            }
        }
        let mut out = w.finish();
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }
}

fn format_byte(format: Format) -> u8 {
    match format {
        Format::InlineBodies => 1,
        Format::BodiesByHash => 2,
    }
}

/// Checks the checksum and that the snapshot is of this replica (`shards`, `format`,
/// `author`), then loads every document. Heads are not re-verified by automerge: the
/// checksum covers every byte, and the bytes are the driver's own.
pub(crate) fn decode(
    bytes: &[u8],
    shards: u16,
    format: Format,
    author: &AuthorKey,
) -> Result<Decoded, String> {
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(match bytes.get(..6) {
            Some(b"MMSNAP") => "a replica snapshot of another version (this one reads version 2)".into(),
            _ => "not a Murmur replica snapshot".into(),
        });
    }
    let body_len = bytes
        .len()
        .checked_sub(CHECKSUM_BYTES)
        .filter(|len| *len >= MAGIC.len())
        .ok_or_else(|| format!("{} bytes, shorter than its header and checksum", bytes.len()))?;
    let (body, checksum) = bytes.split_at(body_len);
    if crc32fast::hash(body).to_le_bytes() != checksum {
        return Err("checksum does not match: the snapshot is damaged".into());
    }
    let text = |e: DecodeError| e.to_string();
    let mut r = Reader::new(&body[MAGIC.len()..]);
    let held_shards = r.u16("shards").map_err(text)?;
    let held_format = r.u8("format").map_err(text)?;
    let held_author: [u8; 32] = r.array("author").map_err(text)?;
    if held_shards != shards || held_format != format_byte(format) {
        return Err(format!(
            "made for {held_shards} shards in format {held_format}; this replica has {shards} in format {}",
            format_byte(format)
        ));
    }
    if held_author != *author {
        return Err("made by another author key".into());
    }
    let mut images = Vec::with_capacity(shards as usize);
    for index in 0..shards {
        let count = r.count(usize::MAX, 96, "signatures").map_err(text)?;
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let hash: [u8; 32] = r.array("change hash").map_err(text)?;
            let signature: [u8; 64] = r.array("signature").map_err(text)?;
            signatures.push((ChangeHash(hash), signature));
        }
        let doc_bytes = r.bytes(usize::MAX, "document").map_err(text)?;
        let doc = Automerge::load_with_options(
            doc_bytes,
            LoadOptions::new().verification_mode(VerificationMode::DontCheck),
        )
        .map_err(|e| format!("shard {index}'s document: {e}"))?
        .with_actor(ActorId::from(&author[..]));
        images.push(ShardImage { doc, signatures });
    }
    let mut sets: [Vec<MemoryId>; 3] = Default::default();
    for set in &mut sets {
        let count = r.count(usize::MAX, 16, "ids").map_err(text)?;
        set.reserve_exact(count);
        for _ in 0..count {
            set.push(MemoryId(r.array("id").map_err(text)?));
        }
    }
    r.finish("snapshot").map_err(text)?;
    let [visible, deleted, awaiting] = sets;
    Ok(Decoded {
        shards: images,
        visible,
        deleted,
        awaiting,
    })
}

#[cfg(test)]
mod tests {
    use crate::{Config, Engine, LoadError, MemoryDraft, Signatures, SigningKey};

    fn resume(config: &Config, key: &SigningKey, bytes: &[u8]) -> Result<Engine<u8>, LoadError> {
        Engine::resume(
            config.clone(),
            key.clone(),
            1,
            0,
            bytes,
            std::iter::empty(),
            Signatures::Trusted,
            |_| true,
        )
    }

    #[test]
    fn a_snapshot_resumes_its_replica_and_nothing_else() {
        let config = Config::default();
        let key = SigningKey::from_bytes(&[4; 32]);
        let mut engine: Engine<u8> = Engine::new(config.clone(), key.clone(), 1, 0).unwrap();
        let drafts: Vec<MemoryDraft> = (0..5)
            .map(|i| MemoryDraft {
                namespace: "n".into(),
                text: format!("memory {i}"),
                metadata_json: "{}".into(),
                tags: Vec::new(),
                model_id: "m".into(),
                vector: vec![0.5, 0.5],
            })
            .collect();
        let records = engine.write(10, &drafts).unwrap();
        engine.delete(11, &records[0].id).unwrap();
        let bytes = engine.snapshot().encode();

        let resumed = resume(&config, &key, &bytes).unwrap();
        assert_eq!(resumed.root_digest(), engine.root_digest());
        assert_eq!(resumed.visible_count(), 4);
        assert!(resumed.is_deleted(&records[0].id));
        // Its own next write goes on from where the snapshot left off.
        let mut resumed = resumed;
        resumed.write(12, &drafts[..1]).unwrap();

        let refused =
            |bytes: &[u8], config: &Config, key: &SigningKey, why: &str| match resume(config, key, bytes) {
                Err(LoadError::BadSnapshot(reason)) => assert!(reason.contains(why), "{reason}"),
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("resumed from a snapshot that should be refused ({why})"),
            };
        for at in [9, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            refused(&damaged, &config, &key, "checksum");
        }
        let mut damaged = bytes.clone();
        damaged[0] ^= 0x10;
        refused(&damaged, &config, &key, "not a Murmur replica snapshot");
        let mut older = bytes.clone();
        older[..8].copy_from_slice(b"MMSNAP01");
        refused(&older, &config, &key, "another version");
        refused(&bytes[..bytes.len() - 3], &config, &key, "checksum");
        refused(&bytes[..10], &config, &key, "shorter");
        refused(
            &bytes,
            &config,
            &SigningKey::from_bytes(&[5; 32]),
            "another author",
        );
        let fewer = Config {
            shards: 8,
            ..config.clone()
        };
        refused(&bytes, &fewer, &key, "shards");
    }
}
