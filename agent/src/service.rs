//! The agent's core: the store, the index derived from it, the embedder and the write path
//! that keeps them consistent. Transport-agnostic; `api.rs` puts HTTP in front of it.

use std::{
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use murmur_models::{CacheDir, Embedder, ModelConfig};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    attrs::Attrs,
    config::AgentConfig,
    error::{AgentError, Result},
    filter::{Filter, FilterRequest},
    identity::Identity,
    index::{StorePoint, VectorIndex},
    memory::{Memory, NewMemory, StoredMemory, validate_namespace, validate_text, validate_vector},
    metrics::Metrics,
    replica::{self, Replica, SyncStatus},
    state_file::SavedState,
    store::{Lookup, Store},
    time::now_ms,
};

pub const MAX_K: usize = 1000;
/// Backups the API is writing; one left by a crash is removed at the next start.
const PARTIAL_BACKUP_SUFFIX: &str = ".backup-partial";
pub const MAX_LIST_LIMIT: usize = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    #[serde(default = "default_k", deserialize_with = "crate::whole_number::deserialize")]
    pub k: usize,
    #[serde(default)]
    pub filter: FilterRequest,
}

fn default_k() -> usize {
    10
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub memory: Memory,
    pub score: f32,
}

/// How a search was answered, for metrics and tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    Index,
    FilteredIndex,
    Exact,
}

impl SearchPath {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchPath::Index => "index",
            SearchPath::FilteredIndex => "filtered_index",
            SearchPath::Exact => "exact",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub memories: usize,
    pub tombstones: usize,
    pub namespaces: std::collections::BTreeMap<String, usize>,
    pub index_size: usize,
    pub index_memory_bytes: usize,
    pub index_file_bytes: u64,
    pub disk_bytes: u64,
    pub disk_quota_bytes: u64,
    pub model_id: String,
    pub dimension: usize,
    pub author: String,
    pub generation: u64,
    pub sync: SyncStatus,
    /// Per namespace holding memories from other devices: how many and their bytes (what
    /// retention may evict), and the limits that apply to it.
    pub retention: std::collections::BTreeMap<String, RetentionStatus>,
    /// The network as the swarm driver sees it (absent when the swarm is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<crate::swarm::NetworkView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionStatus {
    pub from_other_devices: u64,
    pub bytes_from_other_devices: u64,
    pub limits: Option<crate::retention::Limits>,
}

pub struct Agent {
    config: AgentConfig,
    store: Store,
    index: VectorIndex,
    embedder: Embedder,
    identity: Identity,
    replica: Replica,
    swarm: std::sync::OnceLock<crate::swarm::SwarmHandle>,
    uplink: std::sync::Mutex<Option<crate::uplink::UplinkSink>>,
    uplink_notify: Arc<tokio::sync::Notify>,
    attrs: RwLock<Attrs>,
    /// Serialises writes so store generation, index and attrs move together.
    write_lock: tokio::sync::Mutex<()>,
    /// One index save at a time, so an older snapshot never lands after a newer one.
    index_save_lock: tokio::sync::Mutex<()>,
    index_dirty: AtomicBool,
    /// Encryption at rest (the store has its own handle on it); the index is sealed with it.
    sealer: Option<Arc<murmur_at_rest::Sealer>>,
    pub metrics: Metrics,
}

impl Agent {
    /// Opens (or creates) the agent's data directory: identity, store, model, index.
    pub fn open(config: AgentConfig) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
        remove_partial_backups(dir);
        let identity = Identity::load_or_create(&dir.join("identity.key"))?;
        let sealer = config
            .encryption
            .sealer()
            .context("loading the encryption key")?
            .map(Arc::new);
        let store = Store::open_sealed(&dir.join("db"), config.cache_bytes, sealer.clone())
            .context("opening the database")?;
        let new_store = store.check_format().context("opening the database")?;
        store
            .track_retention(&identity.public_hex())
            .context("listing what retention may evict")?;
        if new_store && !identity.created() {
            // A device that kept its key and lost its store (or a restore): what the key signed
            // before may be ahead of this store elsewhere.
            store.set_catching_up(true)?;
        }
        replica::check_limits(&config.limits)?;
        // Every body is read against its row's CRC before anything is served. That pass reads
        // the whole body file, so it runs beside the rest of the start (the replica, the model,
        // the index; only a catch-up or a rebuild reads bodies too, a rebuild all of them
        // again); its verdict comes first, as it names the damage.
        let (replica, embedder, derived) = std::thread::scope(|scope| {
            let checked = scope.spawn(|| store.verify_bodies());
            let opened = Self::open_derived(&config, &identity, &store, sealer.as_deref());
            match checked.join() {
                Ok(Ok(_)) => opened,
                Ok(Err(damage)) => Err(anyhow::Error::new(damage).context("checking the database")),
                Err(_) => Err(anyhow::anyhow!("checking the database: the check panicked")),
            }
        })?;
        let crate::derived::Derived { index, attrs, stale } = derived;

        let agent = Arc::new(Self {
            metrics: Metrics::new(),
            config,
            store,
            index,
            embedder,
            identity,
            replica,
            swarm: std::sync::OnceLock::new(),
            uplink: std::sync::Mutex::new(None),
            uplink_notify: Arc::new(tokio::sync::Notify::new()),
            attrs: RwLock::new(attrs),
            write_lock: tokio::sync::Mutex::new(()),
            index_save_lock: tokio::sync::Mutex::new(()),
            // What was saved is behind the store or missing: the next save writes it.
            index_dirty: AtomicBool::new(stale),
            sealer,
        });
        agent.refresh_gauges();
        Ok(agent)
    }

    /// The start's work besides the body check: the replica from its saved state, the counts
    /// against it, the model, and the index and filter facts.
    fn open_derived(
        config: &AgentConfig,
        identity: &Identity,
        store: &Store,
        sealer: Option<&murmur_at_rest::Sealer>,
    ) -> anyhow::Result<(Replica, Embedder, crate::derived::Derived)> {
        use anyhow::Context;
        let dir = &config.data_dir;
        let saved = match SavedState::read(dir, sealer) {
            Ok(saved) => saved,
            Err(reason) => {
                tracing::warn!(%reason, "the saved state is not usable; rebuilding it from the store");
                None
            }
        };
        let replica = Replica::resume(
            store,
            config.sync.engine_config()?,
            identity.signing_key().clone(),
            saved.as_ref().map(|s| (&s.replica[..], s.change_mark)),
        )
        .context("loading the swarm state")?;
        if store.is_catching_up()? {
            if config.swarm.enabled || !config.manager.address.is_empty() {
                tracing::warn!(
                    "this agent's identity key is older than its store (a restore or a replaced \
                     device): writes wait until a round with a peer or the manager ends in sync"
                );
                replica.lock().set_catching_up(true);
            } else {
                // No peer and no manager: nothing else can hold what this key signed since.
                store.set_catching_up(false)?;
            }
        }
        if let Some(kept) = store.reconcile_counts().context("counting the database")? {
            tracing::warn!(
                kept_memories = kept.memories,
                kept_tombstones = kept.tombstones,
                "the database's kept counts did not match its contents (a store from an older agent?); recounted"
            );
        }
        let held = store.counts()?.memories as usize;
        anyhow::ensure!(
            replica.visible_count() == held,
            "the database holds {held} memories but its swarm state {}; it was written by an older agent \
             or damaged: move it aside and re-import",
            replica.visible_count()
        );

        let cache = CacheDir::resolve(config.model.cache_dir.as_deref())?;
        let model = match &config.model.config {
            Some(path) => ModelConfig::from_toml_file(path)?,
            None => {
                murmur_models::ensure_default_model(&cache)
                    .with_context(|| format!("fetching the default model into {}", cache.root().display()))?;
                ModelConfig::default_model(&cache)
            }
        };
        let embedder = murmur_models::load_embedder(
            &cache,
            config.model.runtime.as_deref(),
            &model,
            &config.model.embedder,
        )
        .context("loading the embedding model (run `murmur-models fetch` first?)")?;
        anyhow::ensure!(
            config.limits.max_text_bytes <= embedder.max_text_bytes(),
            "limits.max_text_bytes ({}) exceeds what the model accepts ({})",
            config.limits.max_text_bytes,
            embedder.max_text_bytes()
        );

        let inputs = crate::derived::Inputs {
            store,
            dir,
            embedder: &embedder,
            settings: config.index,
            sealer,
        };
        let derived = crate::derived::open(&inputs, saved)?;
        Ok((replica, embedder, derived))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn data_dir(&self) -> &PathBuf {
        &self.config.data_dir
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    pub fn author(&self) -> String {
        self.identity.public_hex()
    }

    fn attrs_read(&self) -> std::sync::RwLockReadGuard<'_, Attrs> {
        self.attrs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn attrs_write(&self) -> std::sync::RwLockWriteGuard<'_, Attrs> {
        self.attrs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates, embeds and durably stores memories, all or none. Returns them as stored.
    #[tracing::instrument(skip_all, fields(count = new.len()))]
    pub async fn add(&self, new: Vec<NewMemory>) -> Result<Vec<Memory>> {
        if new.is_empty() {
            return Err(AgentError::invalid("no memories given"));
        }
        if new.len() > self.config.limits.max_batch {
            return Err(AgentError::invalid(format!(
                "{} memories in one request; the limit is {}",
                new.len(),
                self.config.limits.max_batch
            )));
        }
        let dimension = self.embedder.dimension();
        let valid = new
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.validate(&self.config.limits, dimension).map_err(|e| match e {
                    AgentError::InvalidInput(message) => {
                        AgentError::InvalidInput(format!("memory #{i}: {message}"))
                    }
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Refused before the embedding's cost when nothing could make room (the quota is
        // checked again, after making room, under the write lock).
        if self.quota_exceeded()?.is_some() && self.store.evictable_bytes()? == 0 {
            self.check_quota()?;
        }

        let to_embed: Vec<String> = valid
            .iter()
            .filter(|m| m.vector.is_none())
            .map(|m| m.text.clone())
            .collect();
        let started = Instant::now();
        let mut embedded = if to_embed.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed_batch_async(to_embed).await?.into_vecs()
        }
        .into_iter();
        self.metrics.observe_embedding(started.elapsed());

        let model_id = self.embedder.model_id().to_string();
        let _guard = self.write_lock.lock().await;
        let mut drafts = Vec::with_capacity(valid.len());
        for m in valid {
            let vector = match m.vector {
                Some(v) => v,
                None => embedded
                    .next()
                    .ok_or_else(|| AgentError::Index("embedder returned too few vectors".into()))?,
            };
            drafts.push(murmur_sync::MemoryDraft {
                namespace: m.namespace,
                text: m.text,
                metadata_json: serde_json::to_string(&m.metadata)
                    .map_err(|e| AgentError::invalid(format!("metadata: {e}")))?,
                tags: m.tags,
                model_id: model_id.clone(),
                vector,
            });
        }
        // Past the quota, copies of other devices' memories make room for this device's own.
        self.make_room(drafts.iter().map(draft_bytes).sum()).await?;
        self.check_quota()?;
        // The replica signs each memory and gives it its id; the store keeps it at the
        // precision the record carries, so search answers with what a restart gives back.
        let (records, changes) = self.replica.write(&drafts)?;
        let memories = self
            .replica
            .stored_or_forgotten(&self.store, async {
                let memories = records
                    .iter()
                    .map(|record| Ok(StoredMemory::from_record(record, self.store.next_label()?)))
                    .collect::<Result<Vec<_>>>()?;
                self.store.insert(&memories, &changes).await?;
                Ok(memories)
            })
            .await?;
        let memories: Vec<Memory> = memories.into_iter().map(|m| m.memory).collect();
        self.wake_network();
        // Durable from here on; the index and attrs are derived and rebuilt if we die now.
        // Never hold the attrs lock while taking the index lock: a filtered search holds the
        // index lock and takes the attrs lock inside its predicate.
        for memory in &memories {
            self.index.add(memory.label, &memory.vector)?;
        }
        {
            let mut attrs = self.attrs_write();
            for memory in &memories {
                attrs.insert(memory);
            }
        }
        self.index_dirty.store(true, Ordering::Release);
        self.metrics.memories_written.inc_by(memories.len() as u64);
        self.refresh_gauges();
        Ok(memories)
    }

    pub fn get(&self, id: Uuid) -> Result<Memory> {
        match self.store.get(id)? {
            Lookup::Found(memory) => Ok(memory),
            Lookup::Deleted(_) => Err(AgentError::Deleted(id.to_string())),
            Lookup::Missing => Err(AgentError::NotFound(id.to_string())),
        }
    }

    /// Serialises everything that writes the store or releases the replica's messages, so a
    /// message is never sent before what it announces is durable here.
    pub async fn write_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn signing_key(&self) -> &murmur_sync::SigningKey {
        self.identity.signing_key()
    }

    /// Connects the agent to its network driver, which it wakes after each durable write.
    pub fn attach_swarm(&self, handle: crate::swarm::SwarmHandle) {
        let _ = self.swarm.set(handle);
    }

    /// Tells whichever driver sends the engine's messages that there are some: the swarm
    /// driver when there is one (it also routes the manager's share), else the uplink.
    fn wake_network(&self) {
        match self.swarm.get() {
            Some(handle) => handle.wake(),
            None => self.uplink_notify.notify_one(),
        }
    }

    pub fn has_swarm(&self) -> bool {
        self.swarm.get().is_some()
    }

    pub fn network_view(&self) -> Option<crate::swarm::NetworkView> {
        self.swarm.get().map(crate::swarm::SwarmHandle::view)
    }

    pub fn attach_uplink(&self, sink: Option<crate::uplink::UplinkSink>) {
        *self.uplink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    pub fn uplink_notify(&self) -> Arc<tokio::sync::Notify> {
        self.uplink_notify.clone()
    }

    /// Sends what the engine queued, after the uplink stored what it received: through the
    /// swarm driver when there is one, or straight to the manager when the uplink is alone.
    pub async fn flush_network(&self) {
        if self.has_swarm() {
            self.wake_network();
            return;
        }
        let _guard = self.write_guard().await;
        let transmits = self.replica.take_transmits();
        // No libp2p peers exist without a swarm: what is not for the manager has no taker.
        let _ = self.route_transmits(transmits);
    }

    /// Hands the manager its messages (pushes to all peers include it) and returns the rest,
    /// for libp2p peers.
    pub fn route_transmits(
        &self,
        transmits: Vec<murmur_sync::Transmit<crate::replica::PeerKey>>,
    ) -> Vec<murmur_sync::Transmit<crate::replica::PeerKey>> {
        let uplink = self.uplink.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sink) = uplink.as_ref() else {
            return transmits;
        };
        let mut rest = Vec::with_capacity(transmits.len());
        for transmit in transmits {
            let to_manager = match &transmit.to {
                murmur_sync::Destination::Peer(key) => *key == sink.manager,
                murmur_sync::Destination::AllPeers => true,
            };
            if to_manager {
                let labels = crate::metrics::SwarmLabels {
                    direction: "out",
                    kind: transmit.kind.as_str(),
                };
                self.metrics.uplink_messages.get_or_create(&labels).inc();
                self.metrics
                    .uplink_bytes
                    .get_or_create(&labels)
                    .inc_by(transmit.bytes.len() as u64);
                let _ = sink.outbox.send(transmit.bytes.clone());
            }
            if !matches!(&transmit.to, murmur_sync::Destination::Peer(key) if *key == sink.manager) {
                rest.push(transmit);
            }
        }
        rest
    }

    /// Stores what the replica accepted from peers, then answers the bodies they asked for:
    /// the persist-then-answer step every network driver runs after feeding the replica. The
    /// caller holds [`Agent::write_guard`] and sends nothing the replica queued until this
    /// returns.
    pub async fn store_received(&self) -> Result<()> {
        let (events, persists) = self.replica.take_received();
        self.apply_remote(events, persists).await?;
        // Cleared only now, after what made the replica equal to a peer is stored.
        if !self.replica.lock().is_catching_up() && self.store.is_catching_up()? {
            self.store.set_catching_up(false)?;
            tracing::info!("in sync with a peer: this agent holds its own history again and takes writes");
        }
        self.replica.answer_body_requests(&self.store)
    }

    /// Stores and indexes what the replica accepted from a peer.
    #[tracing::instrument(skip_all, fields(events = events.len(), changes = changes.len()))]
    async fn apply_remote(
        &self,
        events: Vec<murmur_sync::Event>,
        changes: Vec<murmur_sync::Persist>,
    ) -> Result<()> {
        let mut added: Vec<Box<murmur_sync::MemoryRecord>> = Vec::new();
        let mut deletes = Vec::new();
        for event in events {
            match event {
                murmur_sync::Event::MemoryAdded(record) => added.push(record),
                murmur_sync::Event::MemoryDeleted {
                    id, deleted_at_ms, ..
                } => {
                    added.retain(|record| record.id != id);
                    deletes.push((id.as_uuid(), deleted_at_ms));
                }
            }
        }
        if added.is_empty() && deletes.is_empty() && changes.is_empty() {
            return Ok(());
        }
        let (inserts, declined, removed) = self
            .replica
            .stored_or_forgotten(&self.store, async {
                let received = added
                    .iter()
                    .map(|record| Ok(StoredMemory::from_record(record, self.store.next_label()?)))
                    .collect::<Result<Vec<_>>>()?;
                // Past the disk quota, the oldest memories from other devices make room, in
                // retention's order. What still finds none is not kept, as local writes are
                // refused; its changes are (entries and tombstones are small), so this agent
                // keeps syncing and fetches the bodies again once there is room.
                self.make_room(received.iter().map(|m| m.record.len() as u64).sum())
                    .await?;
                let (inserts, declined): (_, Vec<murmur_sync::MemoryId>) = match self.quota_exceeded()? {
                    Some(_) => (Vec::new(), added.iter().map(|record| record.id).collect()),
                    None => (received, Vec::new()),
                };
                let (removed, _generation) = self.store.apply_remote(&inserts, &deletes, &changes).await?;
                Ok((inserts, declined, removed))
            })
            .await?;
        let inserts: Vec<Memory> = inserts.into_iter().map(|m| m.memory).collect();
        if !declined.is_empty() {
            self.replica.lock().decline_bodies(&declined);
            self.metrics.quota_declined.inc_by(declined.len() as u64);
            tracing::warn!(
                declined = declined.len(),
                quota = self.config.disk_quota_bytes,
                "disk quota reached: memories from peers are not kept until there is room"
            );
        }
        if !removed.is_empty() {
            self.fetch_declined_if_room();
        }
        let dimension = self.embedder.dimension();
        let model_id = self.embedder.model_id();
        for memory in &removed {
            self.index.remove(memory.label)?;
        }
        let mut skipped = 0usize;
        for memory in &inserts {
            if memory.model_id == model_id && memory.vector.len() == dimension {
                self.index.add(memory.label, &memory.vector)?;
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "memories from another model are stored but not searchable here"
            );
        }
        {
            let mut attrs = self.attrs_write();
            for memory in &removed {
                attrs.remove(memory.label);
            }
            for memory in &inserts {
                attrs.insert(memory);
            }
        }
        self.index_dirty.store(true, Ordering::Release);
        self.metrics.memories_received.inc_by(inserts.len() as u64);
        let touched: std::collections::BTreeSet<String> =
            inserts.iter().map(|memory| memory.namespace.clone()).collect();
        self.evict_past_limits(touched, now_ms()).await?;
        self.refresh_gauges();
        Ok(())
    }

    /// Lets go, oldest first, the memories from other devices that the retention policy no
    /// longer keeps in these namespaces: erased from the store (durably first), the index and
    /// the filter facts, and never asked for again by the replica. The caller holds the write
    /// guard. Each pass reads only what it evicts, so its cost does not grow with the store.
    async fn evict_past_limits(
        &self,
        namespaces: std::collections::BTreeSet<String>,
        now: u64,
    ) -> Result<()> {
        for namespace in namespaces {
            let Some(limits) = self.config.retention.limits_for(&namespace) else {
                continue;
            };
            loop {
                let held = self.store.evictable(&namespace)?;
                let ids = self
                    .store
                    .oldest_evictable(&namespace, limits.walker(held, now))?;
                if ids.is_empty() {
                    break;
                }
                let evicted = self.evict(&namespace, &ids).await?;
                self.metrics.retention_evicted.inc_by(evicted as u64);
                tracing::debug!(%namespace, evicted, "retention let memories from other devices go");
                if ids.len() < crate::retention::EVICTIONS_PER_PASS {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Makes room for `incoming` bytes under the disk quota by letting go of the oldest
    /// memories from other devices, across namespaces, as retention would. Once over, it goes
    /// down to [`QUOTA_LOW_WATER`] of the quota, so the database's own growth (sled's log grows
    /// by segments) does not make the very next write refuse, and evictions come in runs rather
    /// than one per write. Does nothing when that cannot make the room (this device's own
    /// writes are never let go): the caller's quota check then refuses or declines. The caller
    /// holds the write guard.
    async fn make_room(&self, incoming: u64) -> Result<()> {
        let quota = self.config.disk_quota_bytes;
        if quota == 0 {
            return Ok(());
        }
        let wanted = self.disk_bytes()? + incoming;
        if wanted < quota {
            return Ok(());
        }
        let low_water = (quota as f64 * QUOTA_LOW_WATER) as u64;
        let need = wanted - low_water;
        if self.store.evictable_bytes()? < need {
            return Ok(());
        }
        let mut freed = 0u64;
        while freed < need {
            let mut taken = 0usize;
            let oldest = self.store.oldest_evictable_anywhere(|_, len| {
                let take = freed < need && taken < crate::retention::EVICTIONS_PER_PASS;
                if take {
                    freed += len;
                    taken += 1;
                }
                take
            })?;
            if oldest.is_empty() {
                break;
            }
            for (namespace, ids) in oldest {
                let evicted = self.evict(&namespace, &ids).await?;
                self.metrics.quota_evicted.inc_by(evicted as u64);
                tracing::debug!(%namespace, evicted, "the disk quota let memories from other devices go");
            }
        }
        Ok(())
    }

    /// Lets these memories from other devices go here: durably out of the store first, then
    /// out of the replica (never asked for again), the index and the filter facts. Returns how
    /// many it let go. The caller holds the write guard.
    async fn evict(&self, namespace: &str, ids: &[Uuid]) -> Result<usize> {
        let labels = self.store.evict(namespace, ids).await?;
        self.replica
            .lock()
            .evict(ids.iter().map(|id| murmur_sync::MemoryId(id.into_bytes())));
        for label in &labels {
            self.index.remove(*label)?;
        }
        {
            let mut attrs = self.attrs_write();
            for label in &labels {
                attrs.remove(*label);
            }
        }
        self.index_dirty.store(true, Ordering::Release);
        Ok(labels.len())
    }

    /// Applies the retention policy to every namespace holding memories from other devices:
    /// at start (limits may have been lowered) and on a timer when a limit is by age.
    pub async fn enforce_retention(&self) -> Result<()> {
        if self.config.retention.is_empty() {
            return Ok(());
        }
        let _guard = self.write_guard().await;
        let namespaces = self
            .store
            .evictable_namespaces()?
            .into_iter()
            .map(|(namespace, _)| namespace)
            .collect();
        self.evict_past_limits(namespaces, now_ms()).await?;
        self.refresh_gauges();
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        // Refuse what the store would refuse before the replica signs anything.
        match self.store.get(id)? {
            Lookup::Found(_) => {}
            Lookup::Deleted(_) => return Err(AgentError::Deleted(id.to_string())),
            Lookup::Missing => return Err(AgentError::NotFound(id.to_string())),
        }
        let (_tombstone, changes) = self.replica.delete(id)?;
        let (memory, _generation) = self
            .replica
            .stored_or_forgotten(&self.store, self.store.delete(id, now_ms(), &changes))
            .await?;
        self.wake_network();
        self.fetch_declined_if_room();
        self.index.remove(memory.label)?;
        self.attrs_write().remove(memory.label);
        self.index_dirty.store(true, Ordering::Release);
        self.metrics.memories_deleted.inc();
        self.refresh_gauges();
        Ok(())
    }

    pub fn list(
        &self,
        namespace: Option<&str>,
        cursor: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Memory>, bool)> {
        if let Some(ns) = namespace {
            validate_namespace(ns)?;
        }
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(AgentError::invalid(format!("limit must be 1-{MAX_LIST_LIMIT}")));
        }
        self.store.list(namespace, cursor, limit)
    }

    /// Top-k memories by cosine similarity that pass the filter. Selective filters are
    /// answered exactly over their candidates, so k results come back whenever k exist.
    #[tracing::instrument(skip_all, fields(k = request.k, path))]
    pub async fn search(&self, request: SearchRequest) -> Result<(Vec<Hit>, SearchPath)> {
        if request.k == 0 || request.k > MAX_K {
            return Err(AgentError::invalid(format!("k must be 1-{MAX_K}")));
        }
        let filter = Filter::compile(request.filter, &self.config.limits)?;
        let query = match (request.query, request.vector) {
            (Some(_), Some(_)) => return Err(AgentError::invalid("give either query or vector, not both")),
            (None, None) => return Err(AgentError::invalid("give a query text or a vector")),
            (Some(text), None) => {
                validate_text("query", &text, &self.config.limits)?;
                let started = Instant::now();
                let vector = self.embedder.embed_batch_async(vec![text]).await?;
                self.metrics.observe_embedding(started.elapsed());
                vector.row(0).to_vec()
            }
            (None, Some(vector)) => {
                validate_vector(&vector, self.embedder.dimension())?;
                unit_length(&vector)
            }
        };
        let k = request.k;
        let (labels, path) = if filter.is_empty() {
            (self.index.search(&query, k, None)?, SearchPath::Index)
        } else {
            let candidates: Vec<u64> = {
                let attrs = self.attrs_read();
                attrs
                    .by_label
                    .iter()
                    .filter(|(_, a)| filter.matches_attrs(a))
                    .map(|(label, _)| *label)
                    .collect()
            };
            if candidates.len() <= self.config.exact_search_threshold {
                return Ok((self.exact(&query, k, &candidates, &filter)?, SearchPath::Exact));
            }
            // One read guard for the whole search, not one per candidate the graph visits.
            // add() never holds the attrs lock while taking the index lock, so this is safe.
            let attrs = self.attrs_read();
            let accept = |label: u64| -> bool {
                let attrs_ok = attrs
                    .by_label
                    .get(&label)
                    .is_some_and(|a| filter.matches_attrs(a));
                attrs_ok && (!filter.needs_record() || self.record_matches(label, &filter))
            };
            let found = self.index.search(&query, k, Some(&accept))?;
            drop(attrs);
            if found.len() < k.min(candidates.len()) && filter.needs_record() {
                // The metadata predicate was more selective than the attrs let us see.
                return Ok((self.exact(&query, k, &candidates, &filter)?, SearchPath::Exact));
            }
            (found, SearchPath::FilteredIndex)
        };
        tracing::Span::current().record("path", path.as_str());
        let mut hits = Vec::with_capacity(labels.len());
        for (label, score) in labels {
            // A memory deleted since the search ran is simply left out.
            if let Some(id) = self.store.id_for_label(label)?
                && let Lookup::Found(memory) = self.store.get(id)?
            {
                hits.push(Hit { memory, score });
            }
        }
        Ok((hits, path))
    }

    fn record_matches(&self, label: u64, filter: &Filter) -> bool {
        matches!(self.store.id_for_label(label), Ok(Some(id))
            if matches!(self.store.get(id), Ok(Lookup::Found(m)) if filter.matches_record(&m)))
    }

    /// Brute force over `candidates`, scoring with the stored full-precision vectors.
    fn exact(&self, query: &[f32], k: usize, candidates: &[u64], filter: &Filter) -> Result<Vec<Hit>> {
        let mut hits = Vec::new();
        for &label in candidates {
            let Some(id) = self.store.id_for_label(label)? else {
                continue;
            };
            let Lookup::Found(memory) = self.store.get(id)? else {
                continue;
            };
            if !filter.matches_record(&memory) || memory.vector.len() != query.len() {
                continue;
            }
            let score = murmur_models::pooling::cosine(query, &memory.vector);
            hits.push(Hit { memory, score });
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.memory.id.cmp(&b.memory.id)));
        hits.truncate(k);
        Ok(hits)
    }

    fn check_quota(&self) -> Result<()> {
        if let Some((used, quota)) = self.quota_exceeded()? {
            self.metrics.quota_rejections.inc();
            return Err(AgentError::QuotaExceeded { used, quota });
        }
        Ok(())
    }

    /// `(used, quota)` when the disk quota is reached.
    fn quota_exceeded(&self) -> Result<Option<(u64, u64)>> {
        let quota = self.config.disk_quota_bytes;
        if quota == 0 {
            return Ok(None);
        }
        let used = self.disk_bytes()?;
        Ok((used >= quota).then_some((used, quota)))
    }

    /// After a delete made room: bodies declined for the quota are asked for again. Runs
    /// after the delete committed, so nothing here may fail it: an unreadable disk size only
    /// postpones the fetch (to the next delete or start).
    fn fetch_declined_if_room(&self) {
        if self.replica.lock().declined_bodies() == 0 {
            return;
        }
        match self.quota_exceeded() {
            Ok(None) => self.replica.lock().want_declined(),
            Ok(Some(_)) => {}
            Err(error) => tracing::warn!(%error, "reading the disk usage; declined bodies wait"),
        }
    }

    fn disk_bytes(&self) -> Result<u64> {
        Ok(self.store.size_on_disk()?
            + VectorIndex::file_bytes(&self.config.data_dir)
            + SavedState::file_bytes(&self.config.data_dir))
    }

    /// Saves the index and the saved state (replica snapshot, filter facts) if writes happened
    /// since the last save. Writes go on while they serialise: the agent's write lock is held
    /// only to read the generation and copy the replica and the filter facts.
    pub async fn save_if_dirty(&self) -> Result<bool> {
        let _saving = self.index_save_lock.lock().await;
        let (generation, snapshot, change_mark, attrs) = {
            let _guard = self.write_lock.lock().await;
            if !self.index_dirty.swap(false, Ordering::AcqRel) {
                return Ok(false);
            }
            (
                self.store.generation()?,
                self.replica.lock().snapshot(),
                self.store.change_mark()?,
                self.attrs_read().encode(),
            )
        };
        // Every write up to `generation` updated the index before releasing the write lock, so
        // the file holds all of them. A write that lands meanwhile may be in it too, but it moved
        // the store past `generation`, so a later load sees the mismatch and rebuilds instead of
        // trusting the file; it also marked the index dirty again for the next save.
        let at = StorePoint {
            generation,
            change_mark,
        };
        let saved = self
            .index
            .save(
                &self.config.data_dir,
                at,
                self.embedder.model_id(),
                self.sealer.as_deref(),
            )
            .and_then(|()| {
                SavedState {
                    change_mark,
                    generation,
                    replica: snapshot.encode(),
                    attrs,
                }
                .write(&self.config.data_dir, self.sealer.as_deref())
            });
        if let Err(error) = saved {
            self.index_dirty.store(true, Ordering::Release);
            return Err(error);
        }
        tracing::debug!(
            generation,
            size = self.index.len(),
            "vector index and state saved"
        );
        Ok(true)
    }

    /// Where the API writes a backup before it streams it: in the data directory (the same
    /// disk as the store), under a name no other backup uses.
    pub fn partial_backup_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.config.data_dir.join(format!(
            ".backup-{}-{n}{PARTIAL_BACKUP_SUFFIX}",
            std::process::id()
        ))
    }

    /// Writes a backup of this agent to `path` (a new file), fsynced. The sync changes and the
    /// ids of the live memories are read under the write lock, so the backup is this agent as
    /// of one instant; the bodies are read after it is released, since a stored body never
    /// changes. A memory deleted in between is left without its body: after a restore its
    /// tombstone comes from the swarm, never the deleted text. Blocking: run it off the runtime.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn write_backup(&self, path: &std::path::Path) -> Result<crate::backup::Summary> {
        use crate::backup;
        let header = backup::Header {
            author: self.identity.public_hex(),
            shards: self.replica.sync_config().shards,
            created_ms: now_ms(),
            model_id: self.embedder.model_id().to_string(),
        };
        let mut writer = backup::Writer::new(backup::create(path)?, header, self.sealer.clone())?;
        let started = Instant::now();
        let ids = {
            let _guard = self.write_lock.blocking_lock();
            self.store
                .for_each_change(|shard, change| Ok(writer.change(shard, change)?))?;
            self.store.live_ids()?
        };
        let locked = started.elapsed();
        for id in ids {
            if let Some(body) = self.store.record_bytes(id)? {
                writer.body(&body)?;
            }
        }
        let (out, summary) = writer.finish()?;
        out.into_inner()
            .map_err(|e| AgentError::io(format!("writing {}", path.display()))(e.into_error()))?
            .sync_all()
            .map_err(AgentError::io(format!("syncing {}", path.display())))?;
        tracing::info!(
            changes = summary.changes,
            bodies = summary.bodies,
            bytes = summary.bytes,
            writes_paused_ms = locked.as_millis() as u64,
            seconds = started.elapsed().as_secs_f64(),
            "backup written"
        );
        Ok(summary)
    }

    /// Everything durable, for a clean exit.
    pub async fn shutdown(&self) -> Result<()> {
        self.save_if_dirty().await?;
        self.store.close_cleanly().await?;
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats> {
        let namespaces = self
            .attrs_read()
            .namespace_counts
            .iter()
            .map(|(namespace, count)| (namespace.to_string(), *count))
            .collect();
        let counts = self.store.counts()?;
        Ok(Stats {
            memories: counts.memories as usize,
            tombstones: counts.tombstones as usize,
            namespaces,
            index_size: self.index.len(),
            index_memory_bytes: self.index.memory_bytes(),
            index_file_bytes: VectorIndex::file_bytes(&self.config.data_dir),
            disk_bytes: self.disk_bytes()?,
            disk_quota_bytes: self.config.disk_quota_bytes,
            model_id: self.embedder.model_id().to_string(),
            dimension: self.embedder.dimension(),
            author: self.identity.public_hex(),
            generation: self.store.generation()?,
            sync: self.replica.status(),
            retention: self
                .store
                .evictable_namespaces()?
                .into_iter()
                .map(|(namespace, held)| {
                    let status = RetentionStatus {
                        from_other_devices: held.count,
                        bytes_from_other_devices: held.bytes,
                        limits: self.config.retention.limits_for(&namespace),
                    };
                    (namespace, status)
                })
                .collect(),
            swarm: self.swarm.get().map(crate::swarm::SwarmHandle::view),
        })
    }

    fn refresh_gauges(&self) {
        match self.store.counts() {
            Ok(counts) => {
                self.metrics.memories.set(counts.memories as i64);
                self.metrics.tombstones.set(counts.tombstones as i64);
            }
            Err(error) => tracing::warn!(%error, "reading the store's counts"),
        }
        self.metrics.index_size.set(self.index.len() as i64);
        {
            let engine = self.replica.lock();
            self.metrics.declined_bodies.set(engine.declined_bodies() as i64);
            self.metrics.evicted_bodies.set(engine.evicted_bodies() as i64);
        }
        if let Ok(bytes) = self.disk_bytes() {
            self.metrics.disk_bytes.set(bytes as i64);
        }
        self.metrics
            .disk_quota_bytes
            .set(i64::try_from(self.config.disk_quota_bytes).unwrap_or(i64::MAX));
    }

    /// The metrics exposition in the format `accept` prefers, with what is read at scrape time
    /// (the embedder's counters, the last time in sync) brought up to date.
    pub fn render_metrics(&self, accept: Option<&str>) -> murmur_telemetry::Exposition {
        let (peers, last_in_sync_ms) = {
            let engine = self.replica.lock();
            let last = engine
                .peers()
                .filter_map(|(_, status)| status.last_in_sync_ms)
                .max();
            (engine.peers().count(), last)
        };
        self.metrics.sync_peers.set(peers as i64);
        if let Some(ms) = last_in_sync_ms {
            self.metrics.last_in_sync_seconds.set(ms as f64 / 1e3);
        }
        self.metrics.render(self.embedder.stats(), accept)
    }
}

/// Removes backups a crashed agent left half-written in its data directory. Failing to only
/// costs disk space, so it is logged, not fatal.
fn remove_partial_backups(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(PARTIAL_BACKUP_SUFFIX)
            && let Err(error) = std::fs::remove_file(&path)
        {
            tracing::warn!(%error, path = %path.display(), "removing a half-written backup");
        }
    }
}

/// `vector` scaled to unit length, the norm taken in f64: cosine does not depend on a query's
/// length, but f32 arithmetic on a valid vector of large components overflows to NaN scores.
fn unit_length(vector: &[f32]) -> Vec<f32> {
    let norm = vector
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    vector.iter().map(|&v| (f64::from(v) / norm) as f32).collect()
}

/// The share of the disk quota that making room goes down to.
const QUOTA_LOW_WATER: f64 = 0.9;

/// About what a draft's signed record takes on disk (text, metadata, tags, names, the vector
/// at f16, signature and ids), to know how much room a local write needs before it is signed.
fn draft_bytes(draft: &murmur_sync::MemoryDraft) -> u64 {
    let tags: usize = draft.tags.iter().map(|tag| tag.len() + 1).sum();
    let bytes = draft.text.len()
        + draft.metadata_json.len()
        + tags
        + draft.namespace.len()
        + draft.model_id.len()
        + draft.vector.len() * 2
        + 160;
    bytes as u64
}
