//! The manager's core: its replica of the swarm state (one `murmur-sync` engine), the bucket
//! that makes it durable, and the merge loop that drives both.
//!
//! One task owns every change to the engine. It takes a batch of messages from the uplinks,
//! feeds them to the engine, writes what the engine accepted to the bucket as one segment and
//! only then sends the engine's answers and updates the view: an agent is never told the
//! manager holds something that a crash could still lose (group commit).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use murmur_sync::{
    Destination, Engine, Event, MemoryDraft, MemoryId, MemoryRecord, Persist, SignedChange, SigningKey,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    bucket::{Bucket, BucketError},
    metrics::Metrics,
    view::{AgentEntry, AgentReport, Deletion, SyncEvent, View},
};

pub type PeerKey = [u8; 32];

/// Outgoing sync messages for one connected agent, and a way to drop it.
#[derive(Clone)]
pub struct Link {
    pub conn_id: u64,
    pub outbox: crate::outbox::Outbox,
    pub connection: murmur_uplink::quinn::Connection,
}

pub enum Inbound {
    Connected {
        agent: PeerKey,
        link: Link,
        software: String,
    },
    Message {
        agent: PeerKey,
        conn_id: u64,
        bytes: Vec<u8>,
    },
    Report {
        agent: PeerKey,
        report: AgentReport,
    },
    Disconnected {
        agent: PeerKey,
        conn_id: u64,
        reason: String,
    },
    /// A backlogged agent's outbox has emptied: sync replies to it may be built again.
    Drained {
        agent: PeerKey,
        conn_id: u64,
    },
    /// Memories written by an operator, signed by the manager; answered once durable.
    Publish {
        drafts: Vec<MemoryDraft>,
        reply: oneshot::Sender<Result<Vec<MemoryRecord>, PublishError>>,
    },
}

/// Why an operator's memories were not taken.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Invalid(String),
    #[error("not stored: {0}")]
    NotStored(String),
}

pub struct Manager {
    pub engine: Mutex<Engine<PeerKey>>,
    pub bucket: Bucket,
    pub view: RwLock<View>,
    pub metrics: Metrics,
    pub key: PeerKey,
    pub started_at_ms: u64,
    /// Shared by every agent's outbox: what all of them may queue together.
    pub outbox_budget: crate::outbox::OutboxBudget,
    links: Mutex<BTreeMap<PeerKey, Link>>,
    refusals: Mutex<BTreeMap<PeerKey, u32>>,
    /// Segments whose changes this manager holds (read or written).
    seen_segments: Mutex<BTreeSet<String>>,
    max_refusals: u32,
    max_batch: usize,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing OS RNG only costs jitter diversity, never correctness.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn change_id(change: &SignedChange) -> [u8; 32] {
    Sha256::digest(&change.bytes).into()
}

impl Manager {
    /// An empty replica over `bucket`; call [`Manager::load`] before serving.
    pub fn new(
        config: murmur_sync::Config,
        key: SigningKey,
        bucket: Bucket,
        max_refusals: u32,
        max_batch: usize,
    ) -> anyhow::Result<Self> {
        let public = key.verifying_key().to_bytes();
        let engine =
            Engine::new(config, key, seed(), now_ms()).map_err(|e| anyhow::anyhow!("sync config: {e}"))?;
        let metrics = Metrics::default();
        Ok(Self {
            engine: Mutex::new(engine),
            bucket,
            view: RwLock::new(View {
                own_key: Some(public),
                ..View::default()
            }),
            outbox_budget: crate::outbox::OutboxBudget::new(
                crate::outbox::TOTAL_BYTES,
                metrics.outbox_bytes.clone(),
            ),
            metrics,
            key: public,
            started_at_ms: now_ms(),
            links: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            seen_segments: Mutex::new(BTreeSet::new()),
            max_refusals,
            max_batch,
        })
    }

    pub fn engine(&self) -> std::sync::MutexGuard<'_, Engine<PeerKey>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    fn links(&self) -> std::sync::MutexGuard<'_, BTreeMap<PeerKey, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connected_agents(&self) -> usize {
        self.links().len()
    }

    /// Reads every segment in the bucket into the engine (a restart, or a first start).
    pub async fn load(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let (segments, changes) = self.ingest_bucket().await?;
        let engine = self.engine();
        tracing::info!(
            segments,
            changes,
            memories = engine.visible_count(),
            pending = engine.pending_changes(),
            seconds = started.elapsed().as_secs_f64(),
            bucket = self.bucket.url(),
            "state loaded from the bucket"
        );
        if engine.pending_changes() > 0 {
            tracing::warn!(
                pending = engine.pending_changes(),
                "some changes in the bucket depend on changes that are not there; they wait for them"
            );
        }
        Ok(())
    }

    /// Applies segments written by others (or by earlier runs) that this manager has not read.
    /// Returns how many segments and changes were read.
    async fn ingest_bucket(&self) -> anyhow::Result<(usize, usize)> {
        let listed = self.bucket.list_segments().await?;
        let fresh: Vec<String> = {
            let seen = self.seen_segments.lock().unwrap_or_else(|p| p.into_inner());
            listed.difference(&seen).cloned().collect()
        };
        if fresh.is_empty() {
            return Ok((0, 0));
        }
        let shards = self.engine().config().shards;
        let mut by_shard: BTreeMap<u16, ShardInput> = BTreeMap::new();
        let mut read = Vec::new();
        let mut total = 0;
        for path in fresh {
            match self.bucket.read_segment(&path).await {
                Ok(Some(segment)) => {
                    total += segment.changes.len();
                    for (shard, change) in segment.changes {
                        by_shard.entry(shard).or_default().0.push(change);
                    }
                    for body in segment.bodies {
                        // A body names its id, and its id its shard. One that names none is
                        // another writer's bug: left out alone, so it refuses no shard's batch.
                        match MemoryRecord::id_in(&body) {
                            Some(id) => by_shard.entry(id.shard(shards)).or_default().1.push(body),
                            None => {
                                self.metrics.bucket_changes_refused.inc();
                                tracing::error!(%path, "a body in the bucket is not a memory record; left out");
                            }
                        }
                    }
                    read.extend(segment.covers);
                }
                Ok(None) => {}
                // A damaged object (another writer's bug, a truncated upload by hand) must not
                // stop this manager from reading everything else: it is skipped, counted and
                // left in place for an operator. Its changes still live on the agents that
                // wrote them, which sync them again.
                Err(BucketError::Corrupt { path, reason }) => {
                    self.metrics.segments_unreadable.inc();
                    tracing::error!(%path, %reason, "skipping a damaged segment in the bucket");
                }
                Err(error) => return Err(error.into()),
            }
            read.push(path);
        }
        let mut stored = Stored::default();
        {
            let mut engine = self.engine();
            for (shard, (changes, bodies)) in by_shard {
                stored.changes.extend(changes.iter().map(change_id));
                stored
                    .bodies
                    .extend(bodies.iter().filter_map(|b| MemoryRecord::id_in(b)));
                if let Err(error) = engine.apply_stored(shard, changes, bodies) {
                    // Another writer's bad segment must not stop this manager; its changes
                    // are left out (and counted) rather than trusted.
                    self.metrics.bucket_changes_refused.inc();
                    tracing::error!(shard, %error, "refused changes read from the bucket");
                }
            }
        }
        let segments = read.len();
        self.seen_segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(read);
        self.commit(&stored).await?;
        Ok((segments, total))
    }

    /// Makes what the engine accepted durable (its changes, and the bodies of the memories it
    /// showed), then lets the rest of the world see it: view, metrics, answers to agents.
    /// `already_stored` is what was read from the bucket.
    async fn commit(&self, already_stored: &Stored) -> anyhow::Result<()> {
        let (persists, events) = {
            let mut engine = self.engine();
            let mut persists: Vec<Persist> = Vec::new();
            while let Some(p) = engine.poll_persist() {
                persists.push(p);
            }
            let mut events = Vec::new();
            while let Some(e) = engine.poll_event() {
                events.push(e);
            }
            (persists, events)
        };
        let to_store: Vec<(u16, SignedChange)> = persists
            .into_iter()
            .filter(|p| !already_stored.changes.contains(&change_id(&p.change)))
            .map(|p| (p.shard, p.change))
            .collect();
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|event| match event {
                Event::MemoryAdded(record) if !already_stored.bodies.contains(&record.id) => {
                    Some(record.encode())
                }
                _ => None,
            })
            .collect();
        if !to_store.is_empty() || !bodies.is_empty() {
            let started = std::time::Instant::now();
            let mut attempt = 0u32;
            let path = loop {
                match self.bucket.write_segment(&to_store, &bodies).await {
                    Ok(path) => break path,
                    Err(error) => {
                        attempt += 1;
                        self.metrics.bucket_errors.inc();
                        tracing::error!(%error, attempt, "writing a segment failed; retrying before anything is acknowledged");
                        if attempt >= 30 {
                            anyhow::bail!("the bucket refused a segment 30 times: {error}");
                        }
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20)))).await;
                    }
                }
            };
            self.metrics.segments_written.inc();
            self.metrics.changes_persisted.inc_by(to_store.len() as u64);
            self.metrics
                .segment_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(%path, changes = to_store.len(), bodies = bodies.len(), "segment written");
            self.seen_segments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_string());
        }
        if !events.is_empty() {
            let mut view = self.view_mut();
            for event in events {
                match event {
                    Event::MemoryAdded(record) => view.add(*record),
                    Event::MemoryDeleted {
                        id,
                        deleter,
                        deleted_at_ms,
                    } => view.delete(
                        id,
                        Deletion {
                            deleter,
                            deleted_at_ms,
                        },
                    ),
                }
            }
            self.metrics.memories_live.set(view.memories.len() as i64);
            self.metrics.memories_deleted.set(view.deletions.len() as i64);
        }
        self.answer_body_requests();
        self.send_transmits();
        Ok(())
    }

    /// Answers agents that asked for bodies, from the view: it holds every memory shown here
    /// once its segment is durable, which the commit before this call made sure of.
    /// Never holds the engine and the view together, as no other path does.
    fn answer_body_requests(&self) {
        let requests: Vec<_> = {
            let mut engine = self.engine();
            std::iter::from_fn(|| engine.poll_body_request()).collect()
        };
        if requests.is_empty() {
            return;
        }
        let answers: Vec<(PeerKey, Vec<Vec<u8>>)> = {
            let view = self.view();
            requests
                .into_iter()
                .map(|request| {
                    let bodies = request
                        .ids
                        .iter()
                        .filter_map(|id| view.memories.get(id).map(MemoryRecord::encode))
                        .collect();
                    (request.peer, bodies)
                })
                .collect()
        };
        let mut engine = self.engine();
        for (peer, bodies) in answers {
            engine.answer_bodies(&peer, bodies);
        }
    }

    fn send_transmits(&self) {
        loop {
            let transmits: Vec<_> = {
                let mut engine = self.engine();
                std::iter::from_fn(|| engine.poll_transmit()).collect()
            };
            if transmits.is_empty() {
                return;
            }
            let mut backlogged = Vec::new();
            {
                let links = self.links();
                for transmit in transmits {
                    let kind = transmit.kind.as_str();
                    let targets: Vec<&Link> = match &transmit.to {
                        Destination::Peer(key) => links.get(key).into_iter().collect(),
                        Destination::AllPeers => links.values().collect(),
                    };
                    for link in targets {
                        if link.outbox.send(transmit.bytes.clone()) {
                            self.metrics.count_message("out", kind, transmit.bytes.len());
                        } else {
                            self.metrics.outbox_dropped.inc();
                        }
                    }
                }
                for (key, link) in links.iter() {
                    if link.outbox.mark_if_backlogged() {
                        backlogged.push((*key, link.outbox.clone()));
                    }
                }
            }
            if backlogged.is_empty() {
                return;
            }
            // Replies to these agents wait until their queues empty; one that emptied while
            // it was being marked is cleared here (its writer saw no mark), which builds its
            // replies at once: another pass sends them.
            let mut engine = self.engine();
            let mut cleared = false;
            for (key, outbox) in backlogged {
                self.metrics.backlogs.inc();
                tracing::debug!(agent = %hex::encode(key), "uplink backlogged: sync replies wait");
                engine.set_peer_backlogged(&key, true);
                if outbox.take_cleared() {
                    engine.set_peer_backlogged(&key, false);
                    cleared = true;
                }
            }
            if !cleared {
                return;
            }
        }
    }

    fn on_message(&self, agent: PeerKey, conn_id: u64, bytes: &[u8]) {
        let kind = murmur_sync::MessageKind::of_frame(bytes).map_or("unknown", |k| k.as_str());
        self.metrics.count_message("in", kind, bytes.len());
        let current = self.links().get(&agent).is_some_and(|l| l.conn_id == conn_id);
        if !current {
            return;
        }
        let now = now_ms();
        let (result, applied) = {
            let mut engine = self.engine();
            let before = engine.stats().changes_applied;
            let result = engine.handle_incoming(now, &agent, bytes);
            (result, engine.stats().changes_applied - before)
        };
        {
            let mut view = self.view_mut();
            let entry = view.agents.entry(agent).or_default();
            entry.last_seen_ms = Some(now);
            if result.is_err() {
                entry.refused_messages += 1;
            }
            if applied > 0 {
                view.record_event(SyncEvent {
                    at_ms: now,
                    agent,
                    kind: "merged",
                    changes: applied,
                    bytes: bytes.len() as u64,
                    detail: kind.to_owned(),
                });
            }
        }
        if let Err(error) = result {
            self.metrics.refused_messages.inc();
            let count = {
                let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                let count = refusals.entry(agent).or_default();
                *count += 1;
                *count
            };
            tracing::warn!(agent = %hex::encode(agent), %error, refusals = count, "refused a message from an agent");
            self.view_mut().record_event(SyncEvent {
                at_ms: now,
                agent,
                kind: "refused",
                changes: 0,
                bytes: bytes.len() as u64,
                detail: error.to_string(),
            });
            if count >= self.max_refusals
                && let Some(link) = self.links().get(&agent)
            {
                tracing::warn!(agent = %hex::encode(agent), "too many refused messages: closing the uplink");
                link.connection.close(2u32.into(), b"too many refused messages");
            }
        }
    }

    fn on_connected(&self, agent: PeerKey, link: Link, software: String) {
        let now = now_ms();
        let address = link.connection.remote_address().to_string();
        if let Some(old) = self.links().insert(agent, link) {
            // One uplink per agent: a reconnect replaces a connection that may not know yet
            // that it is dead.
            old.connection
                .close(3u32.into(), b"replaced by a newer connection");
        }
        self.metrics.uplinks.set(self.connected_agents() as i64);
        {
            let mut engine = self.engine();
            engine.peer_connected(now, agent);
            // It may have been away: compare state now rather than at a random later round.
            engine.start_round(now, agent);
        }
        let mut view = self.view_mut();
        let entry: &mut AgentEntry = view.agents.entry(agent).or_default();
        entry.connected = true;
        entry.address = Some(address.clone());
        entry.software = Some(software);
        entry.first_seen_ms.get_or_insert(now);
        entry.last_seen_ms = Some(now);
        view.record_event(SyncEvent {
            at_ms: now,
            agent,
            kind: "connected",
            changes: 0,
            bytes: 0,
            detail: address,
        });
    }

    fn on_disconnected(&self, agent: PeerKey, conn_id: u64, reason: String) {
        let mut links = self.links();
        if links.get(&agent).is_none_or(|l| l.conn_id != conn_id) {
            return;
        }
        links.remove(&agent);
        drop(links);
        self.metrics.uplinks.set(self.connected_agents() as i64);
        self.engine().peer_disconnected(&agent);
        let now = now_ms();
        let mut view = self.view_mut();
        if let Some(entry) = view.agents.get_mut(&agent) {
            entry.connected = false;
            entry.last_seen_ms = Some(now);
        }
        view.record_event(SyncEvent {
            at_ms: now,
            agent,
            kind: "disconnected",
            changes: 0,
            bytes: 0,
            detail: reason,
        });
    }

    fn on_publish(&self, drafts: &[MemoryDraft]) -> Result<Vec<MemoryRecord>, PublishError> {
        // Answered only after the commit that follows this batch made them durable.
        self.engine()
            .write(now_ms(), drafts)
            .map_err(|e| PublishError::Invalid(e.to_string()))
    }

    /// The merge loop: runs until `shutdown` turns true, then commits what it holds.
    pub async fn run(
        self: Arc<Self>,
        mut inbox: mpsc::Receiver<Inbound>,
        mut shutdown: watch::Receiver<bool>,
        poll_every: Duration,
        compact_after: usize,
    ) -> anyhow::Result<()> {
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let none = Stored::default();
        loop {
            let wake_at = self.engine().poll_timeout();
            let sleep = Duration::from_millis(wake_at.saturating_sub(now_ms()));
            tokio::select! {
                first = inbox.recv() => {
                    let Some(first) = first else { break };
                    let mut replies = Vec::new();
                    let mut batch = vec![first];
                    while batch.len() < self.max_batch {
                        match inbox.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let messages = batch.len();
                    for inbound in batch {
                        self.handle(inbound, &mut replies);
                    }
                    let committed = self.commit(&none).await;
                    self.metrics.batches.inc();
                    self.metrics.batch_messages.observe(messages as f64);
                    for (reply, records) in replies {
                        let result = match (&committed, records) {
                            (Ok(()), Ok(records)) => Ok(records),
                            (Err(e), _) => Err(PublishError::NotStored(format!("{e:#}"))),
                            (_, Err(e)) => Err(e),
                        };
                        let _ = reply.send(result);
                    }
                    committed?;
                }
                _ = tokio::time::sleep(sleep) => {
                    self.engine().handle_timeout(now_ms());
                    self.commit(&none).await?;
                }
                _ = poll.tick() => {
                    if let Err(error) = self.ingest_bucket().await {
                        self.metrics.bucket_errors.inc();
                        tracing::warn!(%error, "reading other managers' segments failed; will retry");
                    }
                    self.view_mut().sample(now_ms());
                    if let Err(error) = self.compact(compact_after).await {
                        self.metrics.bucket_errors.inc();
                        tracing::warn!(%error, "compaction failed; the segments stay as they are");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Nothing is pending here: every batch was committed before its answers went out.
        tracing::info!("merge loop stopped");
        Ok(())
    }

    fn handle(&self, inbound: Inbound, replies: &mut Vec<PublishReply>) {
        match inbound {
            Inbound::Connected {
                agent,
                link,
                software,
            } => self.on_connected(agent, link, software),
            Inbound::Message {
                agent,
                conn_id,
                bytes,
            } => self.on_message(agent, conn_id, &bytes),
            Inbound::Report { agent, report } => {
                let mut view = self.view_mut();
                let entry = view.agents.entry(agent).or_default();
                entry.last_seen_ms = Some(now_ms());
                entry.report = Some(report);
            }
            Inbound::Disconnected {
                agent,
                conn_id,
                reason,
            } => self.on_disconnected(agent, conn_id, reason),
            Inbound::Drained { agent, conn_id } => {
                if self.links().get(&agent).is_some_and(|l| l.conn_id == conn_id) {
                    self.engine().set_peer_backlogged(&agent, false);
                }
            }
            Inbound::Publish { drafts, reply } => {
                let result = self.on_publish(&drafts);
                replies.push((reply, result));
            }
        }
    }

    /// Merges every segment this manager has read into one, then deletes them: fewer objects
    /// to list and read at the next start. Safe beside other managers: a segment is deleted
    /// only after a durable segment holding its changes exists, and every manager reads
    /// compacted segments it has not seen.
    pub async fn compact(&self, min_segments: usize) -> anyhow::Result<Option<usize>> {
        let listed = self.bucket.list_segments().await?;
        let seen: BTreeSet<String> = self
            .seen_segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let covered: Vec<String> = listed.intersection(&seen).cloned().collect();
        if covered.len() < min_segments {
            return Ok(None);
        }
        let mut changes = Vec::new();
        let mut ids = HashSet::new();
        let mut bodies = Vec::new();
        let mut body_ids = HashSet::new();
        let mut covers = Vec::new();
        for path in &covered {
            match self.bucket.read_segment(path).await {
                Ok(Some(segment)) => {
                    for (shard, change) in segment.changes {
                        if ids.insert(change_id(&change)) {
                            changes.push((shard, change));
                        }
                    }
                    // A deleted memory's body is not carried over: this is where the bucket
                    // erases it. Its entry and tombstone stay in the changes.
                    let engine = self.engine();
                    for body in segment.bodies {
                        if let Some(id) = MemoryRecord::id_in(&body)
                            && !engine.is_deleted(&id)
                            && body_ids.insert(id)
                        {
                            bodies.push(body);
                        }
                    }
                    drop(engine);
                    covers.push(path.clone());
                }
                // Neither covered nor deleted: a damaged segment stays for an operator to see.
                Ok(None) | Err(BucketError::Corrupt { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let path = self.bucket.write_compacted(&changes, &bodies, &covers).await?;
        self.seen_segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string());
        for old in &covers {
            self.bucket.delete(old).await?;
        }
        self.metrics.compactions.inc();
        tracing::info!(%path, segments = covers.len(), changes = changes.len(), bodies = bodies.len(), "compacted segments");
        Ok(Some(covers.len()))
    }
}

/// What was read from the bucket in one pass, so committing it does not write it again.
#[derive(Default)]
struct Stored {
    changes: HashSet<[u8; 32]>,
    bodies: HashSet<MemoryId>,
}

/// One shard's changes and bodies read from the bucket.
type ShardInput = (Vec<SignedChange>, Vec<Vec<u8>>);

type PublishReply = (
    oneshot::Sender<Result<Vec<MemoryRecord>, PublishError>>,
    Result<Vec<MemoryRecord>, PublishError>,
);
