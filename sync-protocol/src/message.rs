//! The wire messages between replicas: versioned, compact, size-bounded.
//!
//! Frame: `version u8 | kind u8 | body`. Integers are little-endian, lengths LEB128. Every
//! length is checked against a limit and against the bytes left before anything is allocated.

use crate::{
    codec::{Reader, Writer},
    error::DecodeError,
};

pub const WIRE_VERSION: u8 = 1;
/// No message may exceed this, whatever a configuration says.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most shards a swarm may have, and so most shard digests in one message.
pub const MAX_SHARDS: u16 = 4096;
/// Most changes in one push or sync message.
pub const MAX_CHANGES_PER_MESSAGE: usize = 65_536;

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
    /// New local changes, published to every peer at once.
    Push { shard: u16, changes: Vec<SignedChange> },
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
}

const KIND_PUSH: u8 = 1;
const KIND_DIGEST_PROBE: u8 = 2;
const KIND_DIGEST_REPLY: u8 = 3;
const KIND_IN_SYNC: u8 = 4;
const KIND_SYNC: u8 = 5;

impl Message {
    /// A stable name for metrics and logs.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Push { .. } => MessageKind::Push,
            Message::DigestProbe { .. } => MessageKind::DigestProbe,
            Message::DigestReply { .. } => MessageKind::DigestReply,
            Message::InSync { .. } => MessageKind::InSync,
            Message::Sync { .. } => MessageKind::Sync,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(WIRE_VERSION);
        match self {
            Message::Push { shard, changes } => {
                w.u8(KIND_PUSH);
                w.u16(*shard);
                w.varint(changes.len() as u64);
                for change in changes {
                    w.raw(&change.signature);
                    w.bytes(&change.bytes);
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
        }
        w.finish()
    }

    /// Decodes one message of at most `max_bytes` (itself capped at [`MAX_MESSAGE_BYTES`]).
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
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
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: WIRE_VERSION,
            });
        }
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
                Message::Push { shard, changes }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Push,
    DigestProbe,
    DigestReply,
    InSync,
    Sync,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Push => "push",
            MessageKind::DigestProbe => "digest_probe",
            MessageKind::DigestReply => "digest_reply",
            MessageKind::InSync => "in_sync",
            MessageKind::Sync => "sync",
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
            _ => None,
        }
    }

    /// Every kind, in the order of [`MessageKind::index`].
    pub const ALL: [MessageKind; 5] = [
        MessageKind::Push,
        MessageKind::DigestProbe,
        MessageKind::DigestReply,
        MessageKind::InSync,
        MessageKind::Sync,
    ];

    /// A dense index (0-4), for per-kind counters kept in arrays.
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

    #[test]
    fn messages_round_trip_and_every_prefix_is_refused() {
        for message in samples() {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes, MAX_MESSAGE_BYTES).unwrap(), message);
            for len in 0..bytes.len() {
                assert!(Message::decode(&bytes[..len], MAX_MESSAGE_BYTES).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Message::decode(&longer, MAX_MESSAGE_BYTES).is_err());
            assert!(Message::decode(&bytes, bytes.len() - 1).is_err());
        }
    }

    #[test]
    fn a_frame_names_its_kind() {
        for message in samples() {
            assert_eq!(MessageKind::of_frame(&message.encode()), Some(message.kind()));
        }
        assert_eq!(MessageKind::of_frame(&[1]), None);
        assert_eq!(MessageKind::of_frame(&[1, 99]), None);
    }

    #[test]
    fn other_versions_and_kinds_are_refused() {
        let mut bytes = Message::InSync { round: 1 }.encode();
        bytes[0] = 2;
        assert_eq!(
            Message::decode(&bytes, 1024),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        bytes[0] = 1;
        bytes[1] = 99;
        assert!(Message::decode(&bytes, 1024).is_err());
    }

    #[test]
    fn an_idle_round_is_tiny() {
        let probe = Message::DigestProbe {
            round: 1,
            shards: 64,
            root: [0; 16],
        };
        assert_eq!(probe.encode().len(), 24);
        assert_eq!(Message::InSync { round: 1 }.encode().len(), 6);
    }
}
