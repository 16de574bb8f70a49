//! This agent's replica of the swarm state: the `murmur-sync` engine, loaded from and persisted
//! to the agent's own sled database. Every memory the agent stores exists here as a record
//! signed by its author; the store and the engine move together in one transaction.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

use murmur_sync::{
    AuthorKey, BodyRequest, Config as SyncConfig, Engine, Event, LoadError, MemoryDraft, MemoryId,
    MemoryRecord, Persist, RecordLimits, Signatures, SigningKey, Tombstone, Transmit, WriteError,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    error::{AgentError, Result},
    memory::Limits,
    store::Store,
    time::now_ms,
};

/// How a peer is named to the engine: its ed25519 public key (also its libp2p identity).
pub type PeerKey = AuthorKey;

/// Swarm-wide sync settings: every agent of one swarm must use the same `shards` and `admins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    pub shards: u16,
    /// Hex ed25519 public keys of operators who may delete any memory.
    pub admins: Vec<String>,
    pub anti_entropy_interval_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        let defaults = SyncConfig::default();
        Self {
            shards: defaults.shards,
            admins: Vec::new(),
            anti_entropy_interval_ms: defaults.anti_entropy_interval_ms,
        }
    }
}

impl SyncSettings {
    pub fn engine_config(&self) -> anyhow::Result<SyncConfig> {
        let mut admins = Vec::with_capacity(self.admins.len());
        for admin in &self.admins {
            let mut key = [0u8; 32];
            hex::decode_to_slice(admin, &mut key)
                .map_err(|_| anyhow::anyhow!("sync.admins: {admin:?} is not a 64-hex-digit ed25519 key"))?;
            admins.push(key);
        }
        Ok(SyncConfig {
            shards: self.shards,
            admins,
            anti_entropy_interval_ms: self.anti_entropy_interval_ms,
            ..SyncConfig::default()
        })
    }
}

/// The agent's write limits must fit what the swarm accepts from any member.
pub fn check_limits(limits: &Limits) -> anyhow::Result<()> {
    let swarm = RecordLimits::default();
    anyhow::ensure!(
        limits.max_text_bytes <= swarm.max_text_bytes
            && limits.max_metadata_bytes <= swarm.max_metadata_bytes
            && limits.max_tags <= swarm.max_tags
            && limits.max_tag_bytes <= swarm.max_tag_bytes,
        "limits exceed what the swarm accepts (text {} B, metadata {} B, {} tags of {} B)",
        swarm.max_text_bytes,
        swarm.max_metadata_bytes,
        swarm.max_tags,
        swarm.max_tag_bytes
    );
    Ok(())
}

pub struct Replica {
    engine: Mutex<Engine<PeerKey>>,
    config: SyncConfig,
    key: SigningKey,
    /// Whether a network driver takes what the engine wants to send; without one it is dropped.
    networked: AtomicBool,
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing OS RNG only costs nonce and jitter diversity, never correctness.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

impl Replica {
    /// Rebuilds the engine from the changes in the store.
    pub fn load(store: &Store, config: SyncConfig, key: SigningKey) -> Result<Self> {
        Self::resume(store, config, key, None)
    }

    /// Rebuilds the engine from a saved snapshot and the changes stored after it, or from all
    /// the store's changes where there is no snapshot or it cannot be used (said in the log).
    pub fn resume(
        store: &Store,
        config: SyncConfig,
        key: SigningKey,
        saved: Option<(&[u8], u64)>,
    ) -> Result<Self> {
        let engine = Self::load_engine(store, &config, &key, saved)?;
        Ok(Self {
            engine: Mutex::new(engine),
            config,
            key,
            networked: AtomicBool::new(false),
        })
    }

    /// `saved`: a snapshot's bytes, and the change mark taken with it.
    fn load_engine(
        store: &Store,
        config: &SyncConfig,
        key: &SigningKey,
        saved: Option<(&[u8], u64)>,
    ) -> Result<Engine<PeerKey>> {
        // A store read error here counts as not held: the body is asked for from peers again.
        let held = |id: &MemoryId| store.holds(id.as_uuid()).unwrap_or(false);
        let corrupt = |e: LoadError| AgentError::CorruptRecord {
            key: "sync_changes".into(),
            reason: e.to_string(),
        };
        // What retention let go stays gone: given back before anything counts what is shown.
        let evicted: Vec<MemoryId> = store
            .evicted_ids()?
            .into_iter()
            .map(|id| MemoryId(id.into_bytes()))
            .collect();
        if let Some((snapshot, mark)) = saved {
            let newer = store.sync_changes_since(mark, config.shards)?;
            let replayed = newer.len();
            match Engine::resume(
                config.clone(),
                key.clone(),
                seed(),
                now_ms(),
                snapshot,
                newer,
                Signatures::Trusted,
                held,
            )
            .map(|mut engine| {
                engine.evict(evicted.iter().copied());
                engine
            }) {
                Ok(engine) if engine.visible_count() as u64 == store.counts()?.memories => {
                    tracing::debug!(replayed, "replica resumed from its saved snapshot");
                    return Ok(engine);
                }
                Ok(engine) => tracing::warn!(
                    shown = engine.visible_count(),
                    stored = store.counts()?.memories,
                    "the saved replica snapshot disagrees with the store; replaying every stored change"
                ),
                Err(LoadError::BadSnapshot(reason)) => tracing::warn!(
                    %reason,
                    "the saved replica snapshot is not usable; replaying every stored change"
                ),
                Err(e) => return Err(corrupt(e)),
            }
        }
        let changes = store.sync_changes()?;
        Engine::load(
            config.clone(),
            key.clone(),
            seed(),
            now_ms(),
            changes,
            Signatures::Trusted,
            held,
        )
        .map(|mut engine| {
            engine.evict(evicted);
            engine
        })
        .map_err(corrupt)
    }

    /// Answers peers that asked for bodies, from what the store holds. Called after what
    /// arrived was stored, so a body shown here a moment ago is found.
    pub fn answer_body_requests(&self, store: &Store) -> Result<()> {
        let requests: Vec<BodyRequest<PeerKey>> = {
            let mut engine = self.lock();
            std::iter::from_fn(|| engine.poll_body_request()).collect()
        };
        for request in requests {
            let mut bodies = Vec::with_capacity(request.ids.len());
            for id in &request.ids {
                if let Some(bytes) = store.record_bytes(id.as_uuid())? {
                    bodies.push(bytes);
                }
            }
            self.lock().answer_bodies(&request.peer, bodies);
        }
        Ok(())
    }

    /// After a failed store write the engine may hold changes the store does not: throw them
    /// away, or they would be synced to peers and then lost at the next restart.
    pub fn reload(&self, store: &Store) -> Result<()> {
        let engine = Self::load_engine(store, &self.config, &self.key, None)?;
        *self.lock() = engine;
        Ok(())
    }

    /// Runs the step that stores what the engine just accepted (a local write, a delete, what
    /// peers sent). If any of it fails, the engine forgets all it holds beyond the store by
    /// reloading from it: the messages it queued announce what was never stored and must not go.
    pub async fn stored_or_forgotten<T>(
        &self,
        store: &Store,
        step: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match step.await {
            Ok(done) => Ok(done),
            Err(error) => {
                self.reload(store)?;
                Err(error)
            }
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Engine<PeerKey>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `drafts` as this agent and returns the records with what must be persisted with
    /// them. Nothing is sent to peers before the caller has stored both.
    pub fn write(&self, drafts: &[MemoryDraft]) -> Result<(Vec<MemoryRecord>, Vec<Persist>)> {
        let mut engine = self.lock();
        let records = engine.write(now_ms(), drafts).map_err(write_error)?;
        let persists = self.drain_local(&mut engine);
        Ok((records, persists))
    }

    pub fn delete(&self, id: Uuid) -> Result<(Tombstone, Vec<Persist>)> {
        let mut engine = self.lock();
        let tombstone = engine
            .delete(now_ms(), &MemoryId(id.into_bytes()))
            .map_err(write_error)?;
        let persists = self.drain_local(&mut engine);
        Ok((tombstone, persists))
    }

    /// After a local write: what to persist. Its events are dropped (the agent applies its own
    /// writes directly); its messages stay queued for the driver, which sends them only after
    /// the caller stored the persists, or are dropped when no driver runs.
    fn drain_local(&self, engine: &mut Engine<PeerKey>) -> Vec<Persist> {
        let mut persists = Vec::new();
        while let Some(p) = engine.poll_persist() {
            persists.push(p);
        }
        while engine.poll_event().is_some() {}
        if !self.networked.load(Ordering::Acquire) {
            while engine.poll_transmit().is_some() {}
        }
        persists
    }

    pub fn set_networked(&self, networked: bool) {
        self.networked.store(networked, Ordering::Release);
    }

    /// What the engine accepted from peers: events to apply and changes to persist with them.
    pub fn take_received(&self) -> (Vec<Event>, Vec<Persist>) {
        let mut engine = self.lock();
        let mut events = Vec::new();
        while let Some(e) = engine.poll_event() {
            events.push(e);
        }
        let mut persists = Vec::new();
        while let Some(p) = engine.poll_persist() {
            persists.push(p);
        }
        (events, persists)
    }

    pub fn take_transmits(&self) -> Vec<Transmit<PeerKey>> {
        let mut engine = self.lock();
        let mut out = Vec::new();
        while let Some(t) = engine.poll_transmit() {
            out.push(t);
        }
        out
    }

    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    pub fn sync_config(&self) -> &SyncConfig {
        &self.config
    }

    pub fn visible_count(&self) -> usize {
        self.lock().visible_count()
    }

    pub fn status(&self) -> SyncStatus {
        let engine = self.lock();
        SyncStatus {
            root_digest: hex::encode(engine.root_digest()),
            shards: self.config.shards,
            changes: engine.change_count(),
            visible: engine.visible_count(),
            awaiting_bodies: engine.awaiting_bodies(),
            declined_bodies: engine.declined_bodies(),
            evicted_bodies: engine.evicted_bodies(),
            pending_changes: engine.pending_changes(),
            catching_up: engine.is_catching_up(),
            peers: engine
                .peers()
                .map(|(key, status)| PeerSummary {
                    author: hex::encode(key),
                    connected_at_ms: status.connected_at_ms,
                    last_heard_ms: status.last_heard_ms,
                    last_in_sync_ms: status.last_in_sync_ms,
                    refused_messages: status.rejected_messages,
                })
                .collect(),
        }
    }
}

fn write_error(error: WriteError) -> AgentError {
    match error {
        WriteError::UnknownMemory(id) => AgentError::NotFound(id),
        WriteError::AlreadyDeleted(id) => AgentError::Deleted(id),
        WriteError::Record(murmur_sync::RecordError::DeleteNotAuthorized { deleter, author }) => {
            AgentError::Forbidden(format!(
                "only the memory's author ({author}…) or a swarm admin may delete it; this agent is {deleter}…"
            ))
        }
        WriteError::Invalid(message) => AgentError::InvalidInput(message),
        WriteError::Record(e) => AgentError::InvalidInput(e.to_string()),
        WriteError::Automerge(e) => AgentError::Index(format!("sync state: {e}")),
        WriteError::CatchingUp => AgentError::CatchingUp(WriteError::CatchingUp.to_string()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub root_digest: String,
    pub shards: u16,
    pub changes: usize,
    pub visible: usize,
    /// Memories whose entries arrived and whose bodies are being fetched.
    pub awaiting_bodies: usize,
    /// Memories from peers not kept because the disk quota was reached; fetched again once a
    /// delete makes room (or at the next start).
    pub declined_bodies: usize,
    /// Memories from other devices let go here by the retention policy; never fetched again.
    pub evicted_bodies: usize,
    pub pending_changes: usize,
    /// Writes wait until a round with a peer or the manager ends in sync: the store was
    /// restored or replaced while the identity key was kept.
    pub catching_up: bool,
    /// Connected peers and how recently each was in sync with this agent (its sync lag).
    pub peers: Vec<PeerSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerSummary {
    pub author: String,
    pub connected_at_ms: u64,
    pub last_heard_ms: Option<u64>,
    pub last_in_sync_ms: Option<u64>,
    pub refused_messages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(text: &str) -> MemoryDraft {
        MemoryDraft {
            namespace: "default".into(),
            text: text.into(),
            metadata_json: "{}".into(),
            tags: vec![],
            model_id: "m".into(),
            vector: vec![0.5, 0.5],
        }
    }

    #[tokio::test]
    async fn only_authors_delete_and_a_failed_store_write_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let config = SyncSettings::default().engine_config().unwrap();
        let replica = Replica::load(&store, config.clone(), SigningKey::from_bytes(&[1; 32])).unwrap();

        // A memory by another agent arrives as a push.
        let mut other: Engine<PeerKey> =
            Engine::new(config.clone(), SigningKey::from_bytes(&[2; 32]), 5, 0).unwrap();
        let foreign = other.write(1, &[draft("not mine")]).unwrap().remove(0);
        let push = other.poll_transmit().unwrap();
        {
            let mut engine = replica.lock();
            engine.handle_incoming(2, &[2; 32], &push.bytes).unwrap();
            assert!(
                engine.poll_persist().is_some(),
                "a received change is handed over to persist"
            );
        }
        let error = replica.delete(foreign.id.as_uuid()).err().unwrap();
        assert!(matches!(error, AgentError::Forbidden(_)), "{error}");

        // Own memories delete; unknown ones are not found.
        let (mine, changes) = replica.write(&[draft("mine")]).unwrap();
        assert_eq!(changes.len(), 1);
        replica.delete(mine[0].id.as_uuid()).unwrap();
        assert!(matches!(
            replica.delete(Uuid::nil()),
            Err(AgentError::NotFound(_))
        ));

        // Nothing of the above was stored: reloading forgets it all.
        replica.reload(&store).unwrap();
        assert_eq!(replica.visible_count(), 0);
        assert_eq!(replica.status().changes, 0);
    }

    /// A write whose store step fails is forgotten whole, its queued messages included: they
    /// would announce a memory that no restart of this agent can show.
    #[tokio::test]
    async fn a_write_whose_store_step_fails_sends_nothing_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let config = SyncSettings::default().engine_config().unwrap();
        let replica = Replica::load(&store, config, SigningKey::from_bytes(&[1; 32])).unwrap();
        replica.set_networked(true);
        replica.lock().peer_connected(0, [2; 32]);
        while replica.lock().poll_transmit().is_some() {}

        let (records, _changes) = replica.write(&[draft("never stored")]).unwrap();
        assert_eq!(replica.visible_count(), 1);
        let failed = replica
            .stored_or_forgotten(&store, async {
                Err::<(), _>(AgentError::Index("disk gone".into()))
            })
            .await;
        assert!(failed.is_err());
        assert!(
            replica.take_transmits().is_empty(),
            "a push for an unstored write is still queued"
        );
        assert_eq!(replica.visible_count(), 0);
        assert!(replica.lock().memory(&records[0].id).is_none());
    }
}
