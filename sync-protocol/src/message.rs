//! The wire messages between replicas: versioned, compact, size-bounded.
//!
//! Frame: `version u8 | kind u8 | body`. Integers are little-endian, lengths LEB128. Every
//! length is checked against a limit and against the bytes left before anything is allocated.
//! The version is the swarm's [`Format`]: a replica refuses frames of any other version.

use crate::{
    codec::{Reader, Writer},
    error::DecodeError,
    id::MemoryId,
};

/// How a swarm's state holds memory bodies; every replica of one swarm must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Wire version 1: each record is a value in its shard document, so every replica keeps
    /// every body ever written (deleted ones too) in its documents.
    InlineBodies,
    /// Wire version 2: documents hold a [`MemoryEntry`](crate::MemoryEntry) per memory (author,
    /// nonce, body hash) and tombstones; bodies travel beside changes (in pushes, and asked
    /// for by id after anti-entropy), live in the driver's store and are erased on delete.
    #[default]
    BodiesByHash,
}

impl Format {
    pub fn wire_version(self) -> u8 {
        match self {
            Format::InlineBodies => 1,
            Format::BodiesByHash => 2,
        }
    }
}

/// The newest wire version this build speaks.
pub const WIRE_VERSION: u8 = 2;
/// No message may exceed this, whatever a configuration says.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most shards a swarm may have, and so most shard digests in one message.
pub const MAX_SHARDS: u16 = 4096;
/// Most changes in one push or sync message.
pub const MAX_CHANGES_PER_MESSAGE: usize = 65_536;
/// Most bodies in one message, and most ids in one request for bodies.
pub const MAX_BODIES_PER_MESSAGE: usize = 65_536;

pub type RootDigest = [u8; 16];
pub type ShardDigest = [u8; 8];

/// An automerge change with its author's signature over the change hash. The change's actor
/// id is the author's ed25519 public key, so only the holder of that key can extend its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChange {
    pub bytes: Vec<u8>,
    pub signature: [u8; 64],
}

impl SignedChange {
    /// Standalone form, for drivers that persist changes one per key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.bytes.len());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.bytes);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 64 {
            return Err(DecodeError::Truncated {
                what: "signed change",
            });
        }
        let (signature, change) = bytes.split_at(64);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        Ok(Self {
            bytes: change.to_vec(),
            signature: sig,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// New local changes, published to every peer at once, with the signed records their
    /// entries name (always empty in [`Format::InlineBodies`], where the changes hold them).
    Push {
        shard: u16,
        changes: Vec<SignedChange>,
        bodies: Vec<Vec<u8>>,
    },
    /// Opens an anti-entropy round: "this is the root of my digest".
    DigestProbe {
        round: u32,
        shards: u16,
        root: RootDigest,
    },
    /// The roots differ: here is the digest of every shard.
    DigestReply {
        round: u32,
        root: RootDigest,
        shards: Vec<ShardDigest>,
    },
    /// The roots match: nothing to do.
    InSync { round: u32 },
    /// An automerge sync message for one shard, with a signature for each change it carries,
    /// in the order of its change chunks.
    Sync {
        shard: u16,
        message: Vec<u8>,
        signatures: Vec<[u8; 64]>,
    },
    /// "Send me these memories' bodies": entries that arrived by anti-entropy without them.
    WantBodies { ids: Vec<MemoryId> },
    /// Signed records, each checked against the hash in its entry.
    Bodies { records: Vec<Vec<u8>> },
}

const KIND_PUSH: u8 = 1;
const KIND_DIGEST_PROBE: u8 = 2;
const KIND_DIGEST_REPLY: u8 = 3;
const KIND_IN_SYNC: u8 = 4;
const KIND_SYNC: u8 = 5;
const KIND_WANT_BODIES: u8 = 6;
const KIND_BODIES: u8 = 7;

impl Message {
    /// A stable name for metrics and logs.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Push { .. } => MessageKind::Push,
            Message::DigestProbe { .. } => MessageKind::DigestProbe,
            Message::DigestReply { .. } => MessageKind::DigestReply,
            Message::InSync { .. } => MessageKind::InSync,
            Message::Sync { .. } => MessageKind::Sync,
            Message::WantBodies { .. } => MessageKind::WantBodies,
            Message::Bodies { .. } => MessageKind::Bodies,
        }
    }

    /// Encodes for a swarm of `format`. Bodies in a push are written only in
    /// [`Format::BodiesByHash`]; the body kinds exist only there (a version-1 peer refuses them).
    pub fn encode(&self, format: Format) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(format.wire_version());
        match self {
            Message::Push {
                shard,
                changes,
                bodies,
            } => {
                w.u8(KIND_PUSH);
                w.u16(*shard);
                w.varint(changes.len() as u64);
                for change in changes {
                    w.raw(&change.signature);
                    w.bytes(&change.bytes);
                }
                if format == Format::BodiesByHash {
                    write_records(&mut w, bodies);
                }
            }
            Message::DigestProbe { round, shards, root } => {
                w.u8(KIND_DIGEST_PROBE);
                w.u32(*round);
                w.u16(*shards);
                w.raw(root);
            }
            Message::DigestReply { round, root, shards } => {
                w.u8(KIND_DIGEST_REPLY);
                w.u32(*round);
                w.raw(root);
                w.varint(shards.len() as u64);
                for digest in shards {
                    w.raw(digest);
                }
            }
            Message::InSync { round } => {
                w.u8(KIND_IN_SYNC);
                w.u32(*round);
            }
            Message::Sync {
                shard,
                message,
                signatures,
            } => {
                w.u8(KIND_SYNC);
                w.u16(*shard);
                w.bytes(message);
                w.varint(signatures.len() as u64);
                for signature in signatures {
                    w.raw(signature);
                }
            }
            Message::WantBodies { ids } => {
                w.u8(KIND_WANT_BODIES);
                w.varint(ids.len() as u64);
                for id in ids {
                    w.raw(&id.0);
                }
            }
            Message::Bodies { records } => {
                w.u8(KIND_BODIES);
                write_records(&mut w, records);
            }
        }
        w.finish()
    }

    /// Decodes one message of at most `max_bytes` (itself capped at [`MAX_MESSAGE_BYTES`]) from
    /// a peer of a `format` swarm: another wire version is refused as unsupported.
    pub fn decode(bytes: &[u8], max_bytes: usize, format: Format) -> Result<Self, DecodeError> {
        let max = max_bytes.min(MAX_MESSAGE_BYTES);
        if bytes.len() > max {
            return Err(DecodeError::TooLong {
                what: "message",
                len: bytes.len() as u64,
                max,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != format.wire_version() {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: format.wire_version(),
            });
        }
        let by_hash = format == Format::BodiesByHash;
        let message = match r.u8("kind")? {
            KIND_PUSH => {
                let shard = r.u16("shard")?;
                let n = r.count(MAX_CHANGES_PER_MESSAGE, 65, "changes")?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    let signature = r.array("change signature")?;
                    let bytes = r.bytes(max, "change")?.to_vec();
                    changes.push(SignedChange { bytes, signature });
                }
                let bodies = if by_hash {
                    read_records(&mut r, max)?
                } else {
                    Vec::new()
                };
                Message::Push {
                    shard,
                    changes,
                    bodies,
                }
            }
            KIND_DIGEST_PROBE => Message::DigestProbe {
                round: r.u32("round")?,
                shards: r.u16("shards")?,
                root: r.array("root digest")?,
            },
            KIND_DIGEST_REPLY => {
                let round = r.u32("round")?;
                let root = r.array("root digest")?;
                let n = r.count(MAX_SHARDS as usize, 8, "shard digests")?;
                let mut shards = Vec::with_capacity(n);
                for _ in 0..n {
                    shards.push(r.array("shard digest")?);
                }
                Message::DigestReply { round, root, shards }
            }
            KIND_IN_SYNC => Message::InSync {
                round: r.u32("round")?,
            },
            KIND_SYNC => {
                let shard = r.u16("shard")?;
                let message = r.bytes(max, "sync message")?.to_vec();
                let n = r.count(MAX_CHANGES_PER_MESSAGE, 64, "signatures")?;
                let mut signatures = Vec::with_capacity(n);
                for _ in 0..n {
                    signatures.push(r.array("signature")?);
                }
                Message::Sync {
                    shard,
                    message,
                    signatures,
                }
            }
            KIND_WANT_BODIES if by_hash => {
                let n = r.count(MAX_BODIES_PER_MESSAGE, 16, "wanted ids")?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(MemoryId(r.array("memory id")?));
                }
                Message::WantBodies { ids }
            }
            KIND_BODIES if by_hash => Message::Bodies {
                records: read_records(&mut r, max)?,
            },
            other => {
                return Err(DecodeError::Invalid {
                    what: "kind",
                    reason: format!("unknown message kind {other}"),
                });
            }
        };
        r.finish("message")?;
        Ok(message)
    }
}

fn write_records(w: &mut Writer, records: &[Vec<u8>]) {
    w.varint(records.len() as u64);
    for record in records {
        w.bytes(record);
    }
}

fn read_records(r: &mut Reader, max: usize) -> Result<Vec<Vec<u8>>, DecodeError> {
    let n = r.count(MAX_BODIES_PER_MESSAGE, 1, "bodies")?;
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        records.push(r.bytes(max, "body")?.to_vec());
    }
    Ok(records)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Push,
    DigestProbe,
    DigestReply,
    InSync,
    Sync,
    WantBodies,
    Bodies,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Push => "push",
            MessageKind::DigestProbe => "digest_probe",
            MessageKind::DigestReply => "digest_reply",
            MessageKind::InSync => "in_sync",
            MessageKind::Sync => "sync",
            MessageKind::WantBodies => "want_bodies",
            MessageKind::Bodies => "bodies",
        }
    }

    /// The kind a frame claims to be, read from its header alone (for metrics on bytes that
    /// may not decode). `None` for frames too short or of an unknown kind.
    pub fn of_frame(bytes: &[u8]) -> Option<MessageKind> {
        match *bytes.get(1)? {
            KIND_PUSH => Some(MessageKind::Push),
            KIND_DIGEST_PROBE => Some(MessageKind::DigestProbe),
            KIND_DIGEST_REPLY => Some(MessageKind::DigestReply),
            KIND_IN_SYNC => Some(MessageKind::InSync),
            KIND_SYNC => Some(MessageKind::Sync),
            KIND_WANT_BODIES => Some(MessageKind::WantBodies),
            KIND_BODIES => Some(MessageKind::Bodies),
            _ => None,
        }
    }

    /// Every kind, in the order of [`MessageKind::index`].
    pub const ALL: [MessageKind; 7] = [
        MessageKind::Push,
        MessageKind::DigestProbe,
        MessageKind::DigestReply,
        MessageKind::InSync,
        MessageKind::Sync,
        MessageKind::WantBodies,
        MessageKind::Bodies,
    ];

    /// A dense index (0-6), for per-kind counters kept in arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Push {
                shard: 3,
                changes: vec![SignedChange {
                    bytes: vec![1, 2, 3],
                    signature: [9; 64],
                }],
                bodies: Vec::new(),
            },
            Message::DigestProbe {
                round: 7,
                shards: 64,
                root: [1; 16],
            },
            Message::DigestReply {
                round: 7,
                root: [2; 16],
                shards: vec![[3; 8]; 64],
            },
            Message::InSync { round: u32::MAX },
            Message::Sync {
                shard: 0,
                message: vec![0x42, 0, 0],
                signatures: vec![[4; 64], [5; 64]],
            },
        ]
    }

    /// Messages that exist only where bodies travel by hash.
    fn by_hash_samples() -> Vec<Message> {
        vec![
            Message::Push {
                shard: 1,
                changes: vec![SignedChange {
                    bytes: vec![7; 20],
                    signature: [1; 64],
                }],
                bodies: vec![vec![5; 30], vec![6]],
            },
            Message::WantBodies {
                ids: vec![MemoryId([1; 16]), MemoryId([2; 16])],
            },
            Message::Bodies {
                records: vec![vec![3; 100]],
            },
        ]
    }

    fn all_samples() -> Vec<(Format, Message)> {
        let mut out: Vec<(Format, Message)> = Vec::new();
        for format in [Format::InlineBodies, Format::BodiesByHash] {
            out.extend(samples().into_iter().map(|m| (format, m)));
        }
        out.extend(by_hash_samples().into_iter().map(|m| (Format::BodiesByHash, m)));
        out
    }

    #[test]
    fn messages_round_trip_and_every_prefix_is_refused() {
        for (format, message) in all_samples() {
            let bytes = message.encode(format);
            assert_eq!(
                Message::decode(&bytes, MAX_MESSAGE_BYTES, format).unwrap(),
                message
            );
            for len in 0..bytes.len() {
                assert!(Message::decode(&bytes[..len], MAX_MESSAGE_BYTES, format).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer, MAX_MESSAGE_BYTES, format).is_err());
            assert!(Message::decode(&bytes, bytes.len() - 1, format).is_err());
        }
    }

    #[test]
    fn a_frame_names_its_kind() {
        for (format, message) in all_samples() {
            assert_eq!(
                MessageKind::of_frame(&message.encode(format)),
                Some(message.kind())
            );
        }
        assert_eq!(MessageKind::of_frame(&[1]), None);
        assert_eq!(MessageKind::of_frame(&[1, 99]), None);
    }

    #[test]
    fn other_versions_and_kinds_are_refused() {
        let mut bytes = Message::InSync { round: 1 }.encode(Format::BodiesByHash);
        assert_eq!(
            Message::decode(&bytes, 1024, Format::InlineBodies),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let old = Message::InSync { round: 1 }.encode(Format::InlineBodies);
        assert_eq!(
            Message::decode(&old, 1024, Format::BodiesByHash),
            Err(DecodeError::UnsupportedVersion {
                found: 1,
                supported: 2
            })
        );
        bytes[1] = 99;
        assert!(Message::decode(&bytes, 1024, Format::BodiesByHash).is_err());
        // The body kinds do not exist in version 1, even with a version-1 header.
        for message in by_hash_samples().into_iter().skip(1) {
            let mut bytes = message.encode(Format::BodiesByHash);
            bytes[0] = 1;
            assert!(Message::decode(&bytes, 1024, Format::InlineBodies).is_err());
        }
    }

    #[test]
    fn an_idle_round_is_tiny() {
        let probe = Message::DigestProbe {
            round: 1,
            shards: 64,
            root: [0; 16],
        };
        for format in [Format::InlineBodies, Format::BodiesByHash] {
            assert_eq!(probe.encode(format).len(), 24);
            assert_eq!(Message::InSync { round: 1 }.encode(format).len(), 6);
        }
    }
}
