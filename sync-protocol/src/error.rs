use thiserror::Error;

/// Bytes that are not a valid encoding of what they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("{what}: input ends early")]
    Truncated { what: &'static str },
    #[error("{what}: {len} is over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("wire version {found} is not supported (this build speaks {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
}

/// A record (memory or tombstone) that decodes but must not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("signature does not verify")]
    BadSignature,
    #[error("the id is not derived from the author's key")]
    IdNotBoundToAuthor,
    #[error("{0}")]
    Invalid(String),
    #[error("{deleter} may not delete a memory written by {author}")]
    DeleteNotAuthorized { deleter: String, author: String },
}

/// Why bytes received from a peer were refused. Nothing about the engine's state changed; the
/// driver should count it against the peer (and may disconnect it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    #[error("message of {len} bytes is over the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("peer uses {theirs} shards, this swarm uses {ours}")]
    ShardCountMismatch { ours: u16, theirs: u16 },
    #[error("shard {shard} does not exist (the swarm has {shards})")]
    NoSuchShard { shard: u16, shards: u16 },
    #[error("automerge refused the data: {0}")]
    Automerge(String),
    #[error("change {hash} rejected: {reason}")]
    RejectedChange { hash: String, reason: String },
    #[error("body rejected: {0}")]
    RejectedBody(String),
}

/// A local write or delete that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriteError {
    #[error("invalid memory: {0}")]
    Invalid(String),
    #[error("memory {0} is not known here")]
    UnknownMemory(String),
    #[error("memory {0} is already deleted")]
    AlreadyDeleted(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("automerge failed: {0}")]
    Automerge(String),
    /// This replica's own history may be ahead elsewhere (its store was restored or lost while
    /// its key was kept): a change signed now could reuse a sequence number its author already
    /// used, which every replica would refuse for good. Writes wait for one round in sync.
    #[error(
        "this replica is catching up with its own history from its peers; writes resume once a round with a peer or the manager ends in sync"
    )]
    CatchingUp,
}

/// Persisted state that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    #[error("persisted change for shard {shard}: {reason}")]
    BadChange { shard: u16, reason: String },
    #[error("replica snapshot: {0}")]
    BadSnapshot(String),
}
