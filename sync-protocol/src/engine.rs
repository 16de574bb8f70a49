//! The sync engine: a state machine with no I/O. The driver feeds it the time, local writes,
//! peers coming and going, bytes from peers and timer expiries; it answers with bytes to send
//! (`poll_transmit`), changes to persist (`poll_persist`), what became visible or deleted
//! (`poll_event`) and when it next wants to be woken (`poll_timeout`).
//!
//! Driver contract: drain `poll_persist` and make it durable before sending what
//! `poll_transmit` returns or acknowledging a local write, so nothing a peer or a user was told
//! about can be lost in a crash. Where bodies travel by hash ([`Format::BodiesByHash`]) the
//! driver also keeps the bodies: it stores the record of each `MemoryAdded` event (by the same
//! rule), erases it on `MemoryDeleted`, and answers each [`BodyRequest`] from what it holds with
//! [`Engine::answer_bodies`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use automerge::{
    ChangeHash,
    sync::{self, Capability, ChunkList, SyncDoc},
};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use tracing::{debug, trace, warn};

use crate::{
    entry::MemoryEntry,
    error::{LoadError, ProtocolError, WriteError},
    id::{AuthorKey, MemoryId},
    message::{
        Format, MAX_BODIES_PER_MESSAGE, MAX_MESSAGE_BYTES, MAX_SHARDS, Message, MessageKind, RootDigest,
        SignedChange,
    },
    record::{MemoryDraft, MemoryRecord, RecordLimits, Signatures, Tombstone},
    shard::{
        Effect, MAX_OPS_PER_CHANGE, Rules, Shard, ValidatedChange, memory_key, parse_change, tombstone_key,
    },
    snapshot::{self, Snapshot},
};

/// Swarm-wide settings: every replica of one swarm must agree on `shards`, `admins` and
/// `limits`; the rest is local tuning.
#[derive(Debug, Clone)]
pub struct Config {
    /// Documents the id space is split over. Fixed for the life of a swarm.
    pub shards: u16,
    /// Keys that may delete any memory (operators). Authors may always delete their own.
    pub admins: Vec<AuthorKey>,
    pub limits: RecordLimits,
    /// Mean time between anti-entropy rounds; each wait is drawn from 0.5x to 1.5x of it.
    pub anti_entropy_interval_ms: u64,
    /// Largest message this replica sends or accepts.
    pub max_message_bytes: usize,
    /// Pushed changes held while their dependencies are missing; the oldest go first.
    pub max_pending_changes: usize,
    /// Where memory bodies live. Swarm-wide: it is the wire version.
    pub format: Format,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shards: 64,
            admins: Vec::new(),
            limits: RecordLimits::default(),
            anti_entropy_interval_ms: 2_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_pending_changes: 4096,
            format: Format::default(),
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(format!("shards must be 1-{MAX_SHARDS}, not {}", self.shards));
        }
        if self.anti_entropy_interval_ms == 0 {
            return Err("anti_entropy_interval_ms must be positive".into());
        }
        let floor = self.limits.max_record_bytes() * 2 + 4096;
        if self.max_message_bytes < floor || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(format!(
                "max_message_bytes must be {floor}-{MAX_MESSAGE_BYTES} for these record limits"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<P> {
    Peer(P),
    /// Every peer: the driver publishes (gossipsub, a broadcast in the simulator).
    AllPeers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<P> {
    pub to: Destination<P>,
    pub kind: MessageKind,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A verified memory became visible here (local write or from a peer).
    MemoryAdded(Box<MemoryRecord>),
    /// A verified, authorised tombstone for `id` became known here. The memory itself may not
    /// have arrived (and now never will be shown).
    MemoryDeleted {
        id: MemoryId,
        deleter: AuthorKey,
        deleted_at_ms: u64,
    },
}

/// Peer `peer` asked for the bodies of these memories, all shown here when it asked. The driver
/// answers with [`Engine::answer_bodies`] and what of them it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRequest<P> {
    pub peer: P,
    pub ids: Vec<MemoryId>,
}

/// A change now part of this replica's state, for the driver to store durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persist {
    pub shard: u16,
    pub change: SignedChange,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_in: [u64; KINDS],
    pub bytes_in: [u64; KINDS],
    pub messages_out: [u64; KINDS],
    pub bytes_out: [u64; KINDS],
    pub messages_rejected: u64,
    pub changes_applied: u64,
    pub changes_pending: u64,
    pub changes_dropped_pending: u64,
    pub rounds_started: u64,
    pub rounds_in_sync: u64,
    /// Bodies received and shown ([`Format::BodiesByHash`]).
    pub bodies_received: u64,
    /// Bodies sent in answer to peers' requests.
    pub bodies_sent: u64,
}

const KINDS: usize = MessageKind::ALL.len();

impl Stats {
    pub fn messages_in(&self, kind: MessageKind) -> u64 {
        self.messages_in[kind.index()]
    }
    pub fn bytes_in(&self, kind: MessageKind) -> u64 {
        self.bytes_in[kind.index()]
    }
    pub fn messages_out(&self, kind: MessageKind) -> u64 {
        self.messages_out[kind.index()]
    }
    pub fn bytes_out(&self, kind: MessageKind) -> u64 {
        self.bytes_out[kind.index()]
    }
    pub fn total_bytes_out(&self) -> u64 {
        self.bytes_out.iter().sum()
    }
    pub fn total_bytes_in(&self) -> u64 {
        self.bytes_in.iter().sum()
    }
}

/// What this replica knows of one peer, for status pages and lag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    pub connected_at_ms: u64,
    pub last_heard_ms: Option<u64>,
    /// Last time an anti-entropy round found both replicas equal.
    pub last_in_sync_ms: Option<u64>,
    pub rejected_messages: u64,
}

#[derive(Clone)]
struct PeerState {
    status: PeerStatus,
    /// automerge sync state per shard, created when a shard is first synced with this peer.
    sync: BTreeMap<u16, sync::State>,
    /// Until when a conversation with this peer counts as running: anti-entropy traffic either
    /// way pushes it on. No new round is started with a peer while one runs, because a round
    /// resets the per-shard sync state and a busy peer would be sent its in-flight changes
    /// again (under a write burst that work piled up faster than it drained).
    talking_until_ms: u64,
    /// Sync messages in a row from this peer that applied nothing. A conversation stuck in
    /// such a loop stops counting as running, so the next round resets it.
    fruitless_syncs: u32,
    /// Per shard: what changes this peer sent us depend on that we lack. The peer has them (it
    /// has what depends on them), so we ask for them by hash. Without this, a bloom filter
    /// false positive can hide a change for good: the round after has the same bloom filter.
    wanted: BTreeMap<u16, BTreeSet<ChangeHash>>,
    /// The round of our last probe to this peer: only its `InSync` ends our conversation.
    probe_round: Option<u32>,
    /// The newest of our rounds whose `DigestReply` we acted on.
    replied_round: Option<u32>,
    /// The driver cannot deliver to this peer as fast as we produce (see
    /// [`Engine::set_peer_backlogged`]): sync replies wait in `deferred` instead of being
    /// built, so nothing is spent on messages the driver would have to drop.
    backlogged: bool,
    /// Shards whose sync reply to this peer waits for the backlog to clear.
    deferred: BTreeSet<u16>,
}

impl PeerState {
    /// Whether a `DigestReply` for `round` may act: a round we probed (none from the future),
    /// newer than the last reply acted on. Round ids wrap, so "newer" is a wrapping distance.
    fn takes_reply(&self, round: u32) -> bool {
        let newer = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
        self.probe_round
            .is_some_and(|probed| probed == round || newer(probed, round))
            && self.replied_round.is_none_or(|replied| newer(round, replied))
    }
}

/// Cloning copies the whole replica (documents included): for snapshots in simulations and
/// fuzzing, not for hot paths.
#[derive(Clone)]
pub struct Engine<P> {
    config: Config,
    rules: Rules,
    key: SigningKey,
    author: AuthorKey,
    rng: fastrand::Rng,
    shards: Vec<Shard>,
    root: RootDigest,
    visible: BTreeSet<MemoryId>,
    deleted: BTreeSet<MemoryId>,
    /// Entries whose bodies have not arrived ([`Format::BodiesByHash`]): asked for from the
    /// peer that sent the entries, and again at each round until one answers.
    awaiting: BTreeSet<MemoryId>,
    /// Bodies the driver would not keep (its disk quota): not shown, not asked for, until
    /// [`Engine::want_declined`] or a restart.
    declined: BTreeSet<MemoryId>,
    /// Bodies the driver let go by its retention policy ([`Engine::evict`]): not shown, never
    /// asked for again, and a body that still arrives is not offered. Peers and the manager
    /// keep them; only a tombstone changes their state here.
    evicted: BTreeSet<MemoryId>,
    body_requests: VecDeque<BodyRequest<P>>,
    peers: BTreeMap<P, PeerState>,
    pending: VecDeque<(u16, ValidatedChange)>,
    transmits: VecDeque<Transmit<P>>,
    events: VecDeque<Event>,
    persists: VecDeque<Persist>,
    next_round_at_ms: u64,
    next_round_id: u32,
    stats: Stats,
    /// Local writes and deletes are refused until a round with a peer ends in sync
    /// ([`Engine::set_catching_up`]).
    catching_up: bool,
}

impl<P: Clone + Ord + Debug> Engine<P> {
    /// A replica with empty state. `seed` feeds every random choice it makes (nonces, peer
    /// picks, timer jitter), so a simulator can replay it exactly.
    pub fn new(config: Config, key: SigningKey, seed: u64, now_ms: u64) -> Result<Self, String> {
        config.validate()?;
        let author = key.verifying_key().to_bytes();
        let shards = (0..config.shards).map(|i| Shard::new(i, &author)).collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let first_round = now_ms + rng.u64(0..=config.anti_entropy_interval_ms);
        let mut engine = Self {
            rules: Rules {
                limits: config.limits,
                admins: config.admins.clone(),
                shards: config.shards,
                format: config.format,
            },
            config,
            key,
            author,
            rng,
            shards,
            root: [0; 16],
            visible: BTreeSet::new(),
            deleted: BTreeSet::new(),
            awaiting: BTreeSet::new(),
            declined: BTreeSet::new(),
            evicted: BTreeSet::new(),
            body_requests: VecDeque::new(),
            peers: BTreeMap::new(),
            pending: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            persists: VecDeque::new(),
            next_round_at_ms: first_round,
            next_round_id: 1,
            stats: Stats::default(),
            catching_up: false,
        };
        engine.refresh_root();
        Ok(engine)
    }

    /// Rebuilds a replica from the changes its driver persisted (in any order). No events are
    /// emitted: the driver already holds what it persisted. Structure, limits and id bindings
    /// are always checked. `Signatures::Verify` re-checks every signature, for storage others
    /// could write; `Signatures::Trusted` skips that for a driver's own store, which holds only
    /// what this replica verified on receipt, and checks each change's chunk checksum instead,
    /// so a damaged byte is refused either way. Where bodies travel by hash, `held` says which
    /// memories' bodies the driver holds: the others are asked for from peers.
    pub fn load(
        config: Config,
        key: SigningKey,
        seed: u64,
        now_ms: u64,
        persisted: impl IntoIterator<Item = (u16, SignedChange)>,
        signatures: Signatures,
        held: impl Fn(&MemoryId) -> bool,
    ) -> Result<Self, LoadError> {
        let mut engine = Self::new(config, key, seed, now_ms)
            .map_err(|reason| LoadError::BadChange { shard: 0, reason })?;
        engine.apply_persisted(persisted, signatures)?;
        engine.settle_awaiting(held);
        Ok(engine)
    }

    /// A copy of this replica's state for [`Engine::resume`]: the documents are cloned, so
    /// the driver can encode it after releasing whatever keeps the replica and its store in
    /// step. Take it where nothing the replica holds is unpersisted.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format: self.config.format,
            author: self.author,
            shards: self.shards.iter().map(Shard::image).collect(),
            visible: self.visible.iter().copied().collect(),
            deleted: self.deleted.iter().copied().collect(),
            // Declined bodies are wanted again at the next start.
            awaiting: self.awaiting.union(&self.declined).copied().collect(),
        }
    }

    /// Rebuilds a replica from a [`Snapshot`]'s bytes and the changes persisted after it was
    /// taken (any that it already holds are skipped), as [`Engine::load`] would from all of
    /// them. A snapshot that is damaged or of another replica (author, shards, format) is
    /// refused with [`LoadError::BadSnapshot`]: the driver then loads from its changes.
    /// `held` is asked only about memories awaiting their bodies.
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        config: Config,
        key: SigningKey,
        seed: u64,
        now_ms: u64,
        snapshot: &[u8],
        persisted: impl IntoIterator<Item = (u16, SignedChange)>,
        signatures: Signatures,
        held: impl Fn(&MemoryId) -> bool,
    ) -> Result<Self, LoadError> {
        let mut engine = Self::new(config, key, seed, now_ms)
            .map_err(|reason| LoadError::BadChange { shard: 0, reason })?;
        let decoded = snapshot::decode(
            snapshot,
            engine.config.shards,
            engine.config.format,
            &engine.author,
        )
        .map_err(LoadError::BadSnapshot)?;
        engine.shards = decoded
            .shards
            .into_iter()
            .zip(0u16..)
            .map(|(image, index)| Shard::from_image(index, image))
            .collect();
        engine.visible = decoded.visible.into_iter().collect();
        engine.deleted = decoded.deleted.into_iter().collect();
        engine.awaiting = decoded.awaiting.into_iter().collect();
        engine.apply_persisted(persisted, signatures)?;
        engine.settle_awaiting(held);
        Ok(engine)
    }

    /// Validates and applies persisted changes (in any order) without emitting events.
    fn apply_persisted(
        &mut self,
        persisted: impl IntoIterator<Item = (u16, SignedChange)>,
        signatures: Signatures,
    ) -> Result<(), LoadError> {
        let mut by_shard: BTreeMap<u16, Vec<ValidatedChange>> = BTreeMap::new();
        for (shard, change) in persisted {
            let target = self
                .shards
                .get(shard as usize)
                .ok_or_else(|| LoadError::BadChange {
                    shard,
                    reason: "no such shard".into(),
                })?;
            let validated = target
                .validate(&change, &self.rules, signatures)
                .map_err(|reason| LoadError::BadChange { shard, reason })?;
            by_shard.entry(shard).or_default().push(validated);
        }
        for (shard, changes) in by_shard {
            let target = &mut self.shards[shard as usize];
            let (ready, missing) = target.applicable(&changes);
            if !missing.is_empty() {
                return Err(LoadError::BadChange {
                    shard,
                    reason: format!(
                        "{} changes depend on changes that were not persisted",
                        missing.len()
                    ),
                });
            }
            let ready: Vec<ValidatedChange> = ready.into_iter().map(|i| changes[i].clone()).collect();
            target
                .apply(&ready)
                .map_err(|reason| LoadError::BadChange { shard, reason })?;
            for change in &ready {
                self.note_effects(&change.effects, false);
            }
        }
        Ok(())
    }

    /// Shows the memories awaiting bodies that the driver holds after all.
    fn settle_awaiting(&mut self, held: impl Fn(&MemoryId) -> bool) {
        let held: Vec<MemoryId> = self.awaiting.iter().filter(|id| held(id)).copied().collect();
        for id in held {
            self.awaiting.remove(&id);
            self.visible.insert(id);
        }
        self.refresh_root();
    }

    pub fn author(&self) -> AuthorKey {
        self.author
    }

    /// Holds local writes and deletes ([`WriteError::CatchingUp`]) until an anti-entropy round
    /// with any peer ends in sync. For a replica whose persisted state may be older than what
    /// its key already signed elsewhere (restored from a backup, or a device that lost its
    /// store and kept its key): automerge numbers each author's changes, and a change that
    /// reuses a number its author gave another change is refused by every replica that holds
    /// the other, so this one would fork from the swarm for good. The driver persists the
    /// flag and clears it once [`Engine::is_catching_up`] turns false.
    pub fn set_catching_up(&mut self, catching_up: bool) {
        self.catching_up = catching_up;
    }

    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn root_digest(&self) -> RootDigest {
        self.root
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Ids of memories shown here: verified and not deleted, in id (so creation time) order.
    pub fn visible_ids(&self) -> impl Iterator<Item = &MemoryId> {
        self.visible.iter()
    }

    pub fn visible_count(&self) -> usize {
        self.visible.len()
    }

    pub fn is_deleted(&self, id: &MemoryId) -> bool {
        self.deleted.contains(id)
    }

    /// Memories whose entries are here but whose bodies have not arrived.
    pub fn awaiting_bodies(&self) -> usize {
        self.awaiting.len()
    }

    /// Memories whose bodies the driver declined to keep ([`Engine::decline_bodies`]).
    pub fn declined_bodies(&self) -> usize {
        self.declined.len()
    }

    /// The driver will not keep these memories' bodies (its disk quota is reached): they stop
    /// being shown here, are not asked for again and not sent on, until
    /// [`Engine::want_declined`] (or a restart, which asks for every body not held). Their
    /// entries stay, so this replica still agrees with its peers on what exists, and a push
    /// that carries one of them offers it to the driver again.
    pub fn decline_bodies(&mut self, ids: &[MemoryId]) {
        for id in ids {
            if self.visible.remove(id) | self.awaiting.remove(id) {
                self.declined.insert(*id);
            }
        }
    }

    /// The driver let these memories' bodies go for good by its retention policy (they are
    /// held elsewhere): they stop being shown here and are never asked for again, whatever
    /// anti-entropy or a repeated push brings; their entries stay, so digests still agree
    /// with peers. Deleted memories are skipped. The set is not in [`Snapshot`]: the driver
    /// keeps it durably and evicts it again after [`Engine::load`] or [`Engine::resume`],
    /// before it feeds the replica anything else.
    pub fn evict(&mut self, ids: impl IntoIterator<Item = MemoryId>) {
        for id in ids {
            if self.deleted.contains(&id) {
                continue;
            }
            self.visible.remove(&id);
            self.awaiting.remove(&id);
            self.declined.remove(&id);
            self.evicted.insert(id);
        }
    }

    /// Memories whose bodies the driver evicted ([`Engine::evict`]).
    pub fn evicted_bodies(&self) -> usize {
        self.evicted.len()
    }

    /// The driver has room again: the declined bodies are asked for from peers.
    pub fn want_declined(&mut self) {
        let declined = std::mem::take(&mut self.declined);
        self.awaiting.extend(declined);
    }

    /// What the documents say of memory `id` (deleted or not): author, nonce, body hash.
    pub fn entry(&self, id: &MemoryId) -> Option<MemoryEntry> {
        self.shards[id.shard(self.config.shards) as usize].entry(id, &self.rules)
    }

    /// A visible memory, read back from the shard document (and verified again). Only in
    /// [`Format::InlineBodies`]: otherwise the driver holds the bodies and this is `None`.
    pub fn memory(&self, id: &MemoryId) -> Option<MemoryRecord> {
        if !self.visible.contains(id) || self.config.format != Format::InlineBodies {
            return None;
        }
        let shard = &self.shards[id.shard(self.config.shards) as usize];
        shard
            .values(&memory_key(id))
            .iter()
            .find_map(|bytes| MemoryRecord::decode_verified(bytes, &self.config.limits).ok())
    }

    pub fn change_count(&self) -> usize {
        self.shards.iter().map(Shard::change_count).sum()
    }

    pub fn peers(&self) -> impl Iterator<Item = (&P, &PeerStatus)> {
        self.peers.iter().map(|(p, s)| (p, &s.status))
    }

    pub fn pending_changes(&self) -> usize {
        self.pending.len()
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Signs and stores new memories (one change per shard touched), publishes them and
    /// reports them as events. All or nothing: one invalid draft refuses the whole batch.
    pub fn write(&mut self, now_ms: u64, drafts: &[MemoryDraft]) -> Result<Vec<MemoryRecord>, WriteError> {
        if self.catching_up {
            return Err(WriteError::CatchingUp);
        }
        let mut signed = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let nonce = self.rng.u64(..);
            signed.push(MemoryRecord::sign(
                draft,
                &self.key,
                now_ms,
                nonce,
                &self.config.limits,
            )?);
        }
        // Per shard: (document key, document value, the body that travels beside it).
        let mut by_shard: BTreeMap<u16, Vec<DocumentWrite>> = BTreeMap::new();
        for (record, bytes) in &signed {
            let (value, body) = match self.config.format {
                Format::InlineBodies => (bytes.clone(), Vec::new()),
                Format::BodiesByHash => (MemoryEntry::of(record, bytes).encode(), bytes.clone()),
            };
            by_shard
                .entry(record.id.shard(self.config.shards))
                .or_default()
                .push((memory_key(&record.id), value, body));
        }
        // A push (change and bodies) must fit in one message with room to spare.
        let budget = self.config.max_message_bytes / 2;
        let cost = |(_, value, body): &DocumentWrite| value.len() + body.len() + 128;
        for (shard, entries) in by_shard {
            let mut start = 0;
            while start < entries.len() {
                let mut end = start;
                let mut size = 0;
                while end < entries.len()
                    && end - start < MAX_OPS_PER_CHANGE
                    && (end == start || size + cost(&entries[end]) <= budget)
                {
                    size += cost(&entries[end]);
                    end += 1;
                }
                let batch = &entries[start..end];
                let values: Vec<(String, Vec<u8>)> =
                    batch.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
                let bodies: Vec<Vec<u8>> = batch
                    .iter()
                    .filter(|(_, _, body)| !body.is_empty())
                    .map(|(_, _, body)| body.clone())
                    .collect();
                self.commit_local(now_ms, shard, &values, bodies)?;
                start = end;
            }
        }
        let effects: Vec<Effect> = signed
            .iter()
            .map(|(record, bytes)| match self.config.format {
                Format::InlineBodies => Effect::Memory(record.clone()),
                Format::BodiesByHash => Effect::Entry {
                    entry: MemoryEntry::of(record, bytes),
                    body: Some(Box::new(record.clone())),
                },
            })
            .collect();
        self.note_effects(&effects, true);
        Ok(signed.into_iter().map(|(r, _)| r).collect())
    }

    /// Deletes a memory this replica holds, if this replica's key may (author or admin).
    pub fn delete(&mut self, now_ms: u64, id: &MemoryId) -> Result<Tombstone, WriteError> {
        if self.catching_up {
            return Err(WriteError::CatchingUp);
        }
        if self.deleted.contains(id) {
            return Err(WriteError::AlreadyDeleted(id.to_string()));
        }
        // Where bodies travel by hash, a memory whose body has not arrived can be deleted too:
        // the entry holds all a tombstone names.
        let known = self.visible.contains(id)
            || self.awaiting.contains(id)
            || self.declined.contains(id)
            || self.evicted.contains(id);
        let entry = self
            .entry(id)
            .filter(|_| known)
            .ok_or_else(|| WriteError::UnknownMemory(id.to_string()))?;
        let (tombstone, bytes) = Tombstone::sign_for(
            entry.id,
            entry.author,
            entry.nonce,
            &self.key,
            now_ms,
            &self.config.admins,
        )?;
        let shard = id.shard(self.config.shards);
        self.commit_local(now_ms, shard, &[(tombstone_key(id), bytes)], Vec::new())?;
        self.note_effects(&[Effect::Tombstone(tombstone.clone())], true);
        Ok(tombstone)
    }

    pub fn peer_connected(&mut self, now_ms: u64, peer: P) {
        debug!(?peer, "peer connected");
        self.peers.insert(
            peer,
            PeerState {
                status: PeerStatus {
                    connected_at_ms: now_ms,
                    ..PeerStatus::default()
                },
                sync: BTreeMap::new(),
                talking_until_ms: 0,
                fruitless_syncs: 0,
                wanted: BTreeMap::new(),
                probe_round: None,
                replied_round: None,
                backlogged: false,
                deferred: BTreeSet::new(),
            },
        );
    }

    pub fn peer_disconnected(&mut self, peer: &P) {
        debug!(?peer, "peer disconnected");
        self.peers.remove(peer);
    }

    /// The driver's link to `peer` is backlogged (its send queue is long) or clear again.
    /// While backlogged, the sync replies owed to the peer are not built, only remembered per
    /// shard; clearing builds them at once. Everything from the peer is still applied, and
    /// pushes and probes still go out: they are small, and a peer that uploads must not wait
    /// for its downloads. Building a large reply costs more than applying it, so a driver
    /// serving many slow peers would otherwise spend its CPU on messages it then drops.
    pub fn set_peer_backlogged(&mut self, peer: &P, backlogged: bool) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.backlogged = backlogged;
        if backlogged {
            return;
        }
        let deferred = std::mem::take(&mut state.deferred);
        debug!(
            ?peer,
            shards = deferred.len(),
            "backlog cleared: sending deferred sync replies"
        );
        for shard in deferred {
            self.sync_out(peer, shard);
        }
    }

    /// Bytes from `peer`. On `Err` the message was refused whole and nothing changed; the
    /// driver should count it against the peer.
    pub fn handle_incoming(&mut self, now_ms: u64, peer: &P, bytes: &[u8]) -> Result<(), ProtocolError> {
        let result = self.handle_incoming_inner(now_ms, peer, bytes);
        if let Err(error) = &result {
            self.stats.messages_rejected += 1;
            if let Some(state) = self.peers.get_mut(peer) {
                state.status.rejected_messages += 1;
            }
            warn!(?peer, %error, len = bytes.len(), "refused a message");
        }
        result
    }

    fn handle_incoming_inner(&mut self, now_ms: u64, peer: &P, bytes: &[u8]) -> Result<(), ProtocolError> {
        if bytes.len() > self.config.max_message_bytes {
            return Err(ProtocolError::Oversize {
                len: bytes.len(),
                max: self.config.max_message_bytes,
            });
        }
        let message = Message::decode(bytes, self.config.max_message_bytes, self.config.format)?;
        let kind = message.kind();
        trace!(?peer, kind = kind.as_str(), len = bytes.len(), "message in");
        if !self.peers.contains_key(peer) {
            self.peer_connected(now_ms, peer.clone());
        }
        match message {
            Message::Push {
                shard,
                changes,
                bodies,
            } => self.on_push(shard, changes, bodies)?,
            Message::DigestProbe { round, shards, root } => {
                self.on_probe(now_ms, peer, round, shards, root)?
            }
            Message::DigestReply { round, root, shards } => {
                self.on_reply(now_ms, peer, round, root, shards)?
            }
            Message::InSync { round } => {
                // A late answer to an older probe must not end the current conversation.
                if self.peers.get(peer).is_some_and(|p| p.probe_round == Some(round)) {
                    self.mark_in_sync(now_ms, peer);
                }
            }
            Message::Sync {
                shard,
                message,
                signatures,
            } => self.on_sync(now_ms, peer, shard, &message, &signatures)?,
            Message::WantBodies { ids } => self.on_want_bodies(peer, ids),
            Message::Bodies { records } => self.on_bodies(records)?,
        }
        self.stats.messages_in[kind.index()] += 1;
        self.stats.bytes_in[kind.index()] += bytes.len() as u64;
        if let Some(state) = self.peers.get_mut(peer) {
            state.status.last_heard_ms = Some(now_ms);
        }
        Ok(())
    }

    /// Changes another replica persisted in storage this one shares (the managers' common
    /// bucket), with the bodies stored beside them: verified and applied as a push would be.
    /// What applies is reported as events and handed to `poll_persist` like any other change;
    /// the driver can skip storing those it read from storage.
    pub fn apply_stored(
        &mut self,
        shard: u16,
        changes: Vec<SignedChange>,
        bodies: Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        self.on_push(shard, changes, bodies)
    }

    /// Sends `peer` the bodies it asked for in a [`BodyRequest`], as many messages as the size
    /// limit needs. Bodies of memories deleted since are left out: a deleted body never
    /// travels again.
    pub fn answer_bodies(&mut self, peer: &P, bodies: impl IntoIterator<Item = Vec<u8>>) {
        let budget = self.config.max_message_bytes / 2;
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for body in bodies {
            if !MemoryRecord::id_in(&body).is_some_and(|id| self.visible.contains(&id)) {
                continue;
            }
            if !batch.is_empty() && (size + body.len() + 8 > budget || batch.len() >= MAX_BODIES_PER_MESSAGE)
            {
                self.send_bodies(peer, std::mem::take(&mut batch));
                size = 0;
            }
            size += body.len() + 8;
            batch.push(body);
        }
        if !batch.is_empty() {
            self.send_bodies(peer, batch);
        }
    }

    /// Runs what is due: an anti-entropy round with one random peer.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms < self.next_round_at_ms {
            return;
        }
        let interval = self.config.anti_entropy_interval_ms;
        self.next_round_at_ms = now_ms + interval / 2 + self.rng.u64(0..=interval);
        self.retry_bodies();
        let idle: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, state)| now_ms >= state.talking_until_ms)
            .map(|(peer, _)| peer.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        let peer = idle[self.rng.usize(..idle.len())].clone();
        self.start_round(now_ms, peer);
    }

    /// Starts an anti-entropy round with `peer` now, whatever the timer says: for a driver
    /// that knows this peer has been away (an uplink that just reconnected) and should catch
    /// up at once rather than when the random pick lands on it.
    pub fn start_round(&mut self, now_ms: u64, peer: P) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.note_conversation(now_ms, &peer);
        let round = self.next_round_id;
        self.next_round_id = self.next_round_id.wrapping_add(1);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.probe_round = Some(round);
            state.fruitless_syncs = 0;
        }
        self.stats.rounds_started += 1;
        debug!(?peer, round, awaiting = self.awaiting.len(), "anti-entropy round");
        self.send(
            Destination::Peer(peer),
            Message::DigestProbe {
                round,
                shards: self.config.shards,
                root: self.root,
            },
        );
    }

    // ---- outputs ------------------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_persist(&mut self) -> Option<Persist> {
        self.persists.pop_front()
    }

    pub fn poll_body_request(&mut self) -> Option<BodyRequest<P>> {
        self.body_requests.pop_front()
    }

    /// When `handle_timeout` next has work.
    pub fn poll_timeout(&self) -> u64 {
        self.next_round_at_ms
    }

    // ---- internals ----------------------------------------------------------------------

    fn commit_local(
        &mut self,
        now_ms: u64,
        shard: u16,
        entries: &[(String, Vec<u8>)],
        bodies: Vec<Vec<u8>>,
    ) -> Result<(), WriteError> {
        let change = self.shards[shard as usize]
            .commit_local(entries, now_ms, &self.key)
            .map_err(WriteError::Automerge)?;
        self.stats.changes_applied += 1;
        self.refresh_root();
        self.persists.push_back(Persist {
            shard,
            change: change.clone(),
        });
        self.send(
            Destination::AllPeers,
            Message::Push {
                shard,
                changes: vec![change],
                bodies,
            },
        );
        Ok(())
    }

    /// Asks a random peer, busy or not, for bodies an earlier request did not bring (lost, or
    /// that peer lacked them too). Not only idle peers: a replica whose peers keep probing it
    /// is never idle itself, and would otherwise never ask again.
    fn retry_bodies(&mut self) {
        if self.awaiting.is_empty() || self.peers.is_empty() {
            return;
        }
        let pick = self.rng.usize(..self.peers.len());
        let Some(peer) = self.peers.keys().nth(pick).cloned() else {
            return;
        };
        let retry: Vec<MemoryId> = self
            .awaiting
            .iter()
            .take(MAX_BODIES_ASKED_PER_ROUND)
            .copied()
            .collect();
        self.want_bodies(&peer, retry);
    }

    fn send_bodies(&mut self, peer: &P, records: Vec<Vec<u8>>) {
        self.stats.bodies_sent += records.len() as u64;
        self.send(Destination::Peer(peer.clone()), Message::Bodies { records });
    }

    /// Asks `peer` for bodies, in messages of at most the size limit.
    fn want_bodies(&mut self, peer: &P, ids: Vec<MemoryId>) {
        if ids.is_empty() {
            return;
        }
        let per_message = (self.config.max_message_bytes / 2 / 16).clamp(1, MAX_BODIES_PER_MESSAGE);
        for part in ids.chunks(per_message) {
            self.send(
                Destination::Peer(peer.clone()),
                Message::WantBodies { ids: part.to_vec() },
            );
        }
    }

    fn send(&mut self, to: Destination<P>, message: Message) {
        let kind = message.kind();
        let bytes = message.encode(self.config.format);
        self.stats.messages_out[kind.index()] += 1;
        self.stats.bytes_out[kind.index()] += bytes.len() as u64;
        self.transmits.push_back(Transmit { to, kind, bytes });
    }

    fn shard_index(&self, shard: u16) -> Result<usize, ProtocolError> {
        if shard < self.config.shards {
            Ok(shard as usize)
        } else {
            Err(ProtocolError::NoSuchShard {
                shard,
                shards: self.config.shards,
            })
        }
    }

    fn validate_all(
        &self,
        shard: usize,
        changes: &[SignedChange],
    ) -> Result<Vec<ValidatedChange>, ProtocolError> {
        let target = &self.shards[shard];
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            let rejected = |reason| ProtocolError::RejectedChange {
                hash: short_hash(&change.bytes),
                reason,
            };
            let parsed = parse_change(change).map_err(rejected)?;
            // Gossip delivers most changes more than once: skip the signature checks for
            // those already here (their hash covers every byte).
            if target.has_change(&parsed.hash()) {
                continue;
            }
            out.push(
                target
                    .validate_parsed(parsed, change, &self.rules, Signatures::Verify)
                    .map_err(rejected)?,
            );
        }
        Ok(out)
    }

    /// Pairs each body with the entry it belongs to: one in `fresh` (attached to it) or one
    /// already in the shard (returned, to show once the message is accepted). A body that
    /// belongs to neither, or does not match, refuses the message.
    fn attach_bodies(
        &self,
        index: usize,
        fresh: &mut [ValidatedChange],
        bodies: Vec<Vec<u8>>,
    ) -> Result<Vec<(MemoryEntry, MemoryRecord)>, ProtocolError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        if self.config.format == Format::InlineBodies {
            return Err(ProtocolError::RejectedBody(
                "bodies beside changes that hold their records".into(),
            ));
        }
        let mut known = Vec::new();
        for bytes in bodies {
            let record = MemoryRecord::decode_verified(&bytes, &self.config.limits)
                .map_err(|e| ProtocolError::RejectedBody(e.to_string()))?;
            let slot = fresh
                .iter_mut()
                .flat_map(|c| c.effects.iter_mut())
                .find_map(|effect| match effect {
                    Effect::Entry { entry, body } if entry.id == record.id => Some((*entry, body)),
                    _ => None,
                });
            match slot {
                Some((entry, body)) => {
                    entry
                        .check_body(&record, &bytes)
                        .map_err(|e| ProtocolError::RejectedBody(e.to_string()))?;
                    *body = Some(Box::new(record));
                }
                None => {
                    let entry = self.shards[index].entry(&record.id, &self.rules).ok_or_else(|| {
                        ProtocolError::RejectedBody(format!("no entry in this shard for {}", record.id))
                    })?;
                    entry
                        .check_body(&record, &bytes)
                        .map_err(|e| ProtocolError::RejectedBody(e.to_string()))?;
                    known.push((entry, record));
                }
            }
        }
        Ok(known)
    }

    fn on_push(
        &mut self,
        shard: u16,
        changes: Vec<SignedChange>,
        bodies: Vec<Vec<u8>>,
    ) -> Result<(), ProtocolError> {
        let index = self.shard_index(shard)?;
        let mut fresh = self.validate_all(index, &changes)?;
        let known = self.attach_bodies(index, &mut fresh, bodies)?;
        let mut candidates: Vec<ValidatedChange> = Vec::new();
        let mut others = VecDeque::new();
        for (s, change) in self.pending.drain(..) {
            if s == shard {
                candidates.push(change);
            } else {
                others.push_back((s, change));
            }
        }
        self.pending = others;
        candidates.extend(fresh);
        let (ready, waiting) = self.shards[index].applicable(&candidates);
        let ready_changes: Vec<ValidatedChange> = ready.iter().map(|&i| candidates[i].clone()).collect();
        self.apply_validated(index, &ready_changes)?;
        self.hold_pending(shard, waiting.into_iter().map(|i| candidates[i].clone()));
        self.show_bodies(known);
        Ok(())
    }

    fn show_bodies(&mut self, bodies: Vec<(MemoryEntry, MemoryRecord)>) {
        let effects: Vec<Effect> = bodies
            .into_iter()
            .map(|(entry, record)| Effect::Entry {
                entry,
                body: Some(Box::new(record)),
            })
            .collect();
        self.note_effects(&effects, true);
    }

    fn on_want_bodies(&mut self, peer: &P, mut ids: Vec<MemoryId>) {
        ids.retain(|id| self.visible.contains(id));
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            self.body_requests.push_back(BodyRequest {
                peer: peer.clone(),
                ids,
            });
        }
    }

    /// Bodies a peer sent in answer to our request. All are checked before any is shown, so
    /// a bad one refuses the message whole; those already held or deleted are skipped unread.
    fn on_bodies(&mut self, records: Vec<Vec<u8>>) -> Result<(), ProtocolError> {
        let mut accepted = Vec::new();
        for bytes in records {
            let Some(id) = MemoryRecord::id_in(&bytes) else {
                return Err(ProtocolError::RejectedBody("not a memory record".into()));
            };
            if self.visible.contains(&id) || self.deleted.contains(&id) || self.evicted.contains(&id) {
                continue;
            }
            let record = MemoryRecord::decode_verified(&bytes, &self.config.limits)
                .map_err(|e| ProtocolError::RejectedBody(format!("{id}: {e}")))?;
            let entry = self
                .entry(&id)
                .ok_or_else(|| ProtocolError::RejectedBody(format!("no entry for {id}")))?;
            entry
                .check_body(&record, &bytes)
                .map_err(|e| ProtocolError::RejectedBody(e.to_string()))?;
            accepted.push((entry, record));
        }
        self.stats.bodies_received += accepted.len() as u64;
        self.show_bodies(accepted);
        Ok(())
    }

    /// Keeps changes whose dependencies are missing, each once, in the bounded pending buffer
    /// (the oldest are dropped first); they apply when what they need arrives.
    fn hold_pending(&mut self, shard: u16, changes: impl IntoIterator<Item = ValidatedChange>) {
        let mut held: BTreeSet<ChangeHash> = self
            .pending
            .iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, c)| c.hash())
            .collect();
        for change in changes {
            let hash = change.hash();
            if !self.shards[shard as usize].has_change(&hash) && held.insert(hash) {
                self.pending.push_back((shard, change));
            }
        }
        while self.pending.len() > self.config.max_pending_changes {
            self.pending.pop_front();
            self.stats.changes_dropped_pending += 1;
        }
        self.stats.changes_pending = self.pending.len() as u64;
    }

    fn apply_validated(&mut self, index: usize, changes: &[ValidatedChange]) -> Result<(), ProtocolError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.shards[index]
            .apply(changes)
            .map_err(ProtocolError::Automerge)?;
        self.after_apply(index, changes);
        Ok(())
    }

    fn after_apply(&mut self, index: usize, changes: &[ValidatedChange]) {
        for change in changes {
            self.stats.changes_applied += 1;
            self.persists.push_back(Persist {
                shard: index as u16,
                change: change.signed.clone(),
            });
            self.note_effects(&change.effects, true);
        }
        self.refresh_root();
        // Pushes that were waiting on these may now apply.
        if self.pending.iter().any(|(s, _)| *s as usize == index) {
            let _ = self.on_push(index as u16, Vec::new(), Vec::new());
        }
    }

    fn note_effects(&mut self, effects: &[Effect], emit: bool) {
        for effect in effects {
            match effect {
                Effect::Memory(record) => {
                    if !self.deleted.contains(&record.id) && self.visible.insert(record.id) && emit {
                        self.events
                            .push_back(Event::MemoryAdded(Box::new(record.clone())));
                    }
                }
                Effect::Entry { entry, body } => {
                    if self.deleted.contains(&entry.id)
                        || self.visible.contains(&entry.id)
                        || self.evicted.contains(&entry.id)
                    {
                        continue;
                    }
                    match body {
                        Some(record) => {
                            self.awaiting.remove(&entry.id);
                            self.declined.remove(&entry.id);
                            self.visible.insert(entry.id);
                            if emit {
                                self.events.push_back(Event::MemoryAdded(record.clone()));
                            }
                        }
                        None if self.declined.contains(&entry.id) => {}
                        None => {
                            self.awaiting.insert(entry.id);
                        }
                    }
                }
                Effect::Tombstone(t) => {
                    self.awaiting.remove(&t.id);
                    self.declined.remove(&t.id);
                    self.evicted.remove(&t.id);
                    if self.deleted.insert(t.id) {
                        self.visible.remove(&t.id);
                        if emit {
                            self.events.push_back(Event::MemoryDeleted {
                                id: t.id,
                                deleter: t.deleter,
                                deleted_at_ms: t.deleted_at_ms,
                            });
                        }
                    }
                }
            }
        }
    }

    fn refresh_root(&mut self) {
        let mut hasher = Sha256::new();
        for shard in &self.shards {
            hasher.update(shard.digest());
        }
        let hash = hasher.finalize();
        self.root.copy_from_slice(&hash[..16]);
    }

    fn note_conversation(&mut self, now_ms: u64, peer: &P) {
        // Two mean intervals: a slow peer (each message stored with an fsync) gets time to
        // answer before the conversation is taken for lost.
        let quiet_after = now_ms + 2 * self.config.anti_entropy_interval_ms;
        if let Some(state) = self.peers.get_mut(peer) {
            state.talking_until_ms = state.talking_until_ms.max(quiet_after);
        }
    }

    /// A new round: whatever happened before, the conversation starts afresh.
    fn begin_round_conversation(&mut self, now_ms: u64, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.fruitless_syncs = 0;
        }
        self.note_conversation(now_ms, peer);
    }

    fn mark_in_sync(&mut self, now_ms: u64, peer: &P) {
        self.stats.rounds_in_sync += 1;
        // Equal with a peer: this replica holds all of its own history that peer holds.
        self.catching_up = false;
        if let Some(state) = self.peers.get_mut(peer) {
            state.status.last_in_sync_ms = Some(now_ms);
            // Nothing left to say: the next round with this peer may start on time.
            state.talking_until_ms = now_ms;
        }
    }

    /// A new round: forget what was in flight (it may have been lost) but keep the heads both
    /// sides are known to share, so the next bloom filter covers only what is new.
    fn restart_sync(&mut self, peer: &P, shard: u16) {
        if let Some(state) = self.peers.get_mut(peer) {
            let shared = state
                .sync
                .get(&shard)
                .map(|s| s.shared_heads.clone())
                .unwrap_or_default();
            let mut fresh = sync::State::new();
            fresh.shared_heads = shared;
            state.sync.insert(shard, fresh);
            // Recomputed from what the peer sends in this round.
            state.wanted.remove(&shard);
        }
    }

    fn on_probe(
        &mut self,
        now_ms: u64,
        peer: &P,
        round: u32,
        shards: u16,
        root: RootDigest,
    ) -> Result<(), ProtocolError> {
        if shards != self.config.shards {
            return Err(ProtocolError::ShardCountMismatch {
                ours: self.config.shards,
                theirs: shards,
            });
        }
        if root == self.root {
            self.mark_in_sync(now_ms, peer);
            self.begin_round_conversation(now_ms, peer);
            self.send(Destination::Peer(peer.clone()), Message::InSync { round });
            return Ok(());
        }
        for shard in 0..self.config.shards {
            self.restart_sync(peer, shard);
        }
        let digests = self.shards.iter().map(Shard::digest).collect();
        self.send(
            Destination::Peer(peer.clone()),
            Message::DigestReply {
                round,
                root: self.root,
                shards: digests,
            },
        );
        self.begin_round_conversation(now_ms, peer);
        Ok(())
    }

    fn on_reply(
        &mut self,
        now_ms: u64,
        peer: &P,
        round: u32,
        _root: RootDigest,
        digests: Vec<[u8; 8]>,
    ) -> Result<(), ProtocolError> {
        if digests.len() != self.shards.len() {
            return Err(ProtocolError::ShardCountMismatch {
                ours: self.config.shards,
                theirs: digests.len() as u16,
            });
        }
        // Over a slow link rounds overlap, and their replies are acted on as they come; but a
        // reply that arrives after a newer round's describes a state both sides have moved past,
        // and acting on it would reset the conversation that newer round started.
        let Some(state) = self.peers.get_mut(peer) else {
            return Ok(());
        };
        if !state.takes_reply(round) {
            trace!(?peer, round, "digest reply to an older round ignored");
            return Ok(());
        }
        state.replied_round = Some(round);
        let differing: Vec<u16> = (0..self.config.shards)
            .filter(|&s| digests[s as usize] != self.shards[s as usize].digest())
            .collect();
        if differing.is_empty() {
            self.mark_in_sync(now_ms, peer);
        }
        for shard in differing {
            self.restart_sync(peer, shard);
            self.sync_out(peer, shard);
        }
        self.begin_round_conversation(now_ms, peer);
        Ok(())
    }

    fn on_sync(
        &mut self,
        now_ms: u64,
        peer: &P,
        shard: u16,
        bytes: &[u8],
        signatures: &[[u8; 64]],
    ) -> Result<(), ProtocolError> {
        let index = self.shard_index(shard)?;
        let mut message = sync::Message::decode(bytes)
            .map_err(|e| ProtocolError::Automerge(format!("sync message: {e}")))?;
        if message.changes.len() != signatures.len() {
            return Err(ProtocolError::RejectedChange {
                hash: String::new(),
                reason: format!(
                    "{} changes but {} signatures",
                    message.changes.len(),
                    signatures.len()
                ),
            });
        }
        let signed: Vec<SignedChange> = message
            .changes
            .iter()
            .zip(signatures)
            .map(|(bytes, signature)| SignedChange {
                bytes: bytes.to_vec(),
                signature: *signature,
            })
            .collect();
        let fresh = self.validate_all(index, &signed)?;
        let (ready, waiting) = self.shards[index].applicable(&fresh);
        let accepted: Vec<ValidatedChange> = ready.into_iter().map(|i| fresh[i].clone()).collect();
        // Only changes that passed the gate and can apply now reach automerge. The others wait
        // with the pending pushes (so they need not travel again), and what they depend on is
        // asked for by hash in our next message to this peer.
        let arrived: BTreeSet<ChangeHash> = fresh.iter().map(ValidatedChange::hash).collect();
        let waiting_here: BTreeSet<ChangeHash> = self
            .pending
            .iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, c)| c.hash())
            .collect();
        let mut missing = BTreeSet::new();
        for &i in &waiting {
            for dep in fresh[i].change.deps() {
                if !self.shards[index].has_change(dep)
                    && !arrived.contains(dep)
                    && !waiting_here.contains(dep)
                {
                    missing.insert(*dep);
                }
            }
        }
        message.changes = ChunkList::from(
            accepted
                .iter()
                .map(|c| c.signed.bytes.clone())
                .collect::<Vec<_>>(),
        );
        let Some(state) = self.peers.get_mut(peer) else {
            return Err(ProtocolError::Automerge("unknown peer".into()));
        };
        let sync_state = state.sync.entry(shard).or_default();
        self.shards[index]
            .doc
            .receive_sync_message(sync_state, message)
            .map_err(|e| ProtocolError::Automerge(e.to_string()))?;
        // Accepted: from here on nothing fails, so the refusal contract holds.
        if let Some(state) = self.peers.get_mut(peer) {
            let wanted = state.wanted.entry(shard).or_default();
            for hash in missing {
                if wanted.len() >= MAX_WANTED_PER_SHARD {
                    break;
                }
                wanted.insert(hash);
            }
        }
        self.hold_pending(shard, waiting.into_iter().map(|i| fresh[i].clone()));
        self.shards[index].record_applied(accepted.iter());
        let progress = !accepted.is_empty();
        if progress {
            self.after_apply(index, &accepted);
            // Entries came without bodies: the peer that sent them has them.
            let wanted: Vec<MemoryId> = accepted
                .iter()
                .flat_map(|c| c.effects.iter())
                .filter_map(|effect| match effect {
                    Effect::Entry { entry, .. } if self.awaiting.contains(&entry.id) => Some(entry.id),
                    _ => None,
                })
                .collect();
            self.want_bodies(peer, wanted);
        }
        if let Some(state) = self.peers.get_mut(peer) {
            state.fruitless_syncs = if progress {
                0
            } else {
                state.fruitless_syncs.saturating_add(1)
            };
        }
        // Sending changes is progress too: the peer acknowledging them applies nothing.
        if self.sync_out(peer, shard)
            && let Some(state) = self.peers.get_mut(peer)
        {
            state.fruitless_syncs = 0;
        }
        if self
            .peers
            .get(peer)
            .is_some_and(|p| p.fruitless_syncs < FRUITLESS_SYNCS_BEFORE_STALE)
        {
            self.note_conversation(now_ms, peer);
        }
        Ok(())
    }

    /// Sends what automerge's sync protocol says this peer needs for `shard`, split so that no
    /// message exceeds the size limit. Returns whether any change was sent.
    fn sync_out(&mut self, peer: &P, shard: u16) -> bool {
        if let Some(state) = self.peers.get_mut(peer)
            && state.backlogged
        {
            state.deferred.insert(shard);
            return false;
        }
        let index = shard as usize;
        let Some(state) = self.peers.get_mut(peer).map(|p| p.sync.entry(shard).or_default()) else {
            return false;
        };
        let Some(mut message) = self.shards[index].doc.generate_sync_message(state) else {
            return false;
        };
        if let Some(wanted) = self.peers.get_mut(peer).and_then(|p| p.wanted.get_mut(&shard)) {
            let held = &self.shards[index];
            wanted.retain(|hash| !held.has_change(hash));
            if !wanted.is_empty() {
                message.need.extend(wanted.iter().copied());
                // automerge's encoder insists on sorted hashes (and panics otherwise).
                message.need.sort_unstable();
                message.need.dedup();
            }
        }
        // Only plain change chunks are accepted by the gate, so never invite whole documents.
        message.supported_capabilities = Some(vec![Capability::MessageV1]);
        // Taken out of the message so that each part below clones only heads, needs and bloom
        // filter, not every change of the whole reply (that was quadratic in a large reply).
        let chunks = std::mem::replace(&mut message.changes, ChunkList::empty());
        let mut signatures = Vec::with_capacity(chunks.len());
        let mut kept = Vec::with_capacity(chunks.len());
        for chunk in chunks.iter() {
            match self.shards[index].signature_of_chunk(chunk) {
                Some(signature) => {
                    signatures.push(signature);
                    kept.push(chunk.to_vec());
                }
                None => warn!(shard, "a change in this document has no signature; not sent"),
            }
        }
        // Each part carries the same heads, needs and bloom filter; only the changes are split.
        let sent_changes = !kept.is_empty();
        let budget = (self.config.max_message_bytes / 2)
            .saturating_sub(32 * message.need.len())
            .max(1);
        let mut parts: Vec<SyncPart> = vec![(Vec::new(), Vec::new())];
        let mut size = 0usize;
        for (chunk, signature) in kept.into_iter().zip(signatures) {
            let last_has_some = parts.last().is_some_and(|(c, _)| !c.is_empty());
            if size + chunk.len() + 64 > budget && last_has_some {
                parts.push((Vec::new(), Vec::new()));
                size = 0;
            }
            size += chunk.len() + 64;
            if let Some((c, s)) = parts.last_mut() {
                c.push(chunk);
                s.push(signature);
            }
        }
        for (chunks, signatures) in parts {
            let mut part = message.clone();
            part.changes = ChunkList::from(chunks);
            self.send(
                Destination::Peer(peer.clone()),
                Message::Sync {
                    shard,
                    message: part.encode(),
                    signatures,
                },
            );
        }
        sent_changes
    }
}

/// Bodies asked for again at each round at most: a retry, kept small; entries that arrive by
/// anti-entropy have their bodies asked for at once, in full.
const MAX_BODIES_ASKED_PER_ROUND: usize = 1024;

/// Dependencies asked for per peer and shard at most: a peer sending changes with made-up
/// dependencies must not grow our state or our messages without bound.
const MAX_WANTED_PER_SHARD: usize = 256;

/// Sync messages in a row that apply nothing before a conversation no longer counts as
/// running: exchanging heads and bloom filters takes two or three.
const FRUITLESS_SYNCS_BEFORE_STALE: u32 = 4;

/// A local write to a document: key, value, and the body that travels beside it (empty when
/// the value is the record).
type DocumentWrite = (String, Vec<u8>, Vec<u8>);

/// Change chunks of one outgoing sync message, with their signatures.
type SyncPart = (Vec<Vec<u8>>, Vec<[u8; 64]>);

fn short_hash(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hex::encode(&hash[..6])
}
