//! Murmur's swarm state and sync protocol, sans-IO.
//!
//! The state of a swarm is a set of signed memories and signed tombstones, spread over
//! `Config::shards` automerge documents by memory id. [`Engine`] is the whole protocol as a
//! state machine: no sockets, no clocks, no threads, no randomness but the seed it is given.
//! The agent drives it over libp2p, the manager over QUIC and the simulator over a modelled
//! network, so all three run exactly this code.

mod bodies;
mod codec;
mod engine;
mod entry;
mod error;
mod id;
mod message;
mod record;
mod shard;
mod snapshot;

pub use bodies::InMemoryBodies;
pub use engine::{BodyRequest, Config, Destination, Engine, Event, PeerStatus, Persist, Stats, Transmit};
pub use entry::{BodyHash, ENTRY_BYTES, MemoryEntry, body_hash};
pub use error::{DecodeError, LoadError, ProtocolError, RecordError, WriteError};
pub use id::{AuthorKey, MAX_ID_TIME_MS, MemoryId, short_key};
pub use message::{
    Format, MAX_BODIES_PER_MESSAGE, MAX_CHANGES_PER_MESSAGE, MAX_MESSAGE_BYTES, MAX_SHARDS, Message,
    MessageKind, RootDigest, ShardDigest, SignedChange, WIRE_VERSION,
};
pub use record::{
    MemoryDraft, MemoryRecord, RecordLimits, Signatures, Tombstone, may_delete, validate_namespace,
};
pub use shard::{MAX_OPS_PER_CHANGE, sign_change};
pub use snapshot::Snapshot;

/// The automerge version this crate's documents and sync messages are made with.
pub use automerge;

pub use ed25519_dalek::SigningKey;
