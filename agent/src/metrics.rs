//! Prometheus metrics of one agent, served at `/metrics` in the format the scraper asks for.

use std::{
    sync::{Mutex, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SearchLabels {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwarmLabels {
    /// `in` or `out`.
    pub direction: &'static str,
    /// The sync message kind (`push`, `digest_probe`, `digest_reply`, `in_sync`, `sync`).
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RequestLabels, Histogram>,
    pub searches: Family<SearchLabels, Counter>,
    pub memories_written: Counter,
    pub memories_deleted: Counter,
    pub memories_received: Counter,
    pub swarm_messages: Family<SwarmLabels, Counter>,
    pub swarm_bytes: Family<SwarmLabels, Counter>,
    pub swarm_refused: Counter,
    pub swarm_peers: Gauge,
    pub uplink_messages: Family<SwarmLabels, Counter>,
    pub uplink_bytes: Family<SwarmLabels, Counter>,
    /// Which of the listed managers the uplink is on: 0 the first, -1 none.
    pub uplink_manager_rank: Gauge,
    pub quota_rejections: Counter,
    pub quota_declined: Counter,
    pub quota_evicted: Counter,
    pub declined_bodies: Gauge,
    pub retention_evicted: Counter,
    pub evicted_bodies: Gauge,
    pub embedding_seconds: Histogram,
    pub memories: Gauge,
    pub tombstones: Gauge,
    pub index_size: Gauge,
    pub disk_bytes: Gauge,
    /// 0 where there is no quota.
    pub disk_quota_bytes: Gauge,
    /// Unix time of the newest anti-entropy round that found this agent equal to a peer or its
    /// manager; set at each scrape, 0 before the first.
    pub last_in_sync_seconds: Gauge<f64, AtomicU64>,
    /// Peers and manager the sync engine talks to now; set at each scrape.
    pub sync_peers: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
    embedded_texts: Counter,
    embedding_batches: Counter,
    embedded_tokens: Counter,
    embedded_padded_tokens: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("murmur_agent")),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            searches: Family::default(),
            memories_written: Counter::default(),
            memories_deleted: Counter::default(),
            memories_received: Counter::default(),
            swarm_messages: Family::default(),
            swarm_bytes: Family::default(),
            swarm_refused: Counter::default(),
            swarm_peers: Gauge::default(),
            uplink_messages: Family::default(),
            uplink_bytes: Family::default(),
            uplink_manager_rank: Gauge::default(),
            quota_rejections: Counter::default(),
            quota_declined: Counter::default(),
            quota_evicted: Counter::default(),
            declined_bodies: Gauge::default(),
            retention_evicted: Counter::default(),
            evicted_bodies: Gauge::default(),
            embedding_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            memories: Gauge::default(),
            tombstones: Gauge::default(),
            index_size: Gauge::default(),
            disk_bytes: Gauge::default(),
            disk_quota_bytes: Gauge::default(),
            last_in_sync_seconds: Gauge::default(),
            sync_peers: Gauge::default(),
            start_time_seconds: Gauge::default(),
            embedded_texts: Counter::default(),
            embedding_batches: Counter::default(),
            embedded_tokens: Counter::default(),
            embedded_padded_tokens: Counter::default(),
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.start_time_seconds.set(started);
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "http_requests",
                "HTTP requests by route and status",
                m.requests.clone(),
            );
            r.register(
                "http_request_seconds",
                "HTTP request latency",
                m.request_seconds.clone(),
            );
            r.register(
                "searches",
                "Searches by how they were answered",
                m.searches.clone(),
            );
            r.register(
                "memories_written",
                "Memories durably written",
                m.memories_written.clone(),
            );
            r.register(
                "memories_deleted",
                "Memories deleted (tombstoned)",
                m.memories_deleted.clone(),
            );
            r.register(
                "memories_received",
                "Memories received from peers and stored",
                m.memories_received.clone(),
            );
            r.register(
                "swarm_messages",
                "Sync messages to and from peers by kind",
                m.swarm_messages.clone(),
            );
            r.register(
                "swarm_bytes",
                "Sync message bytes to and from peers by kind",
                m.swarm_bytes.clone(),
            );
            r.register(
                "swarm_refused_messages",
                "Messages from peers refused (malformed, forged or oversize)",
                m.swarm_refused.clone(),
            );
            r.register("swarm_peers", "Connected swarm peers", m.swarm_peers.clone());
            r.register(
                "uplink_messages",
                "Sync messages over the manager uplink, by direction and kind",
                m.uplink_messages.clone(),
            );
            r.register(
                "uplink_bytes",
                "Sync message bytes over the manager uplink, by direction and kind",
                m.uplink_bytes.clone(),
            );
            r.register(
                "uplink_manager_rank",
                "Which of the listed managers the uplink is connected to (0: the first; -1: none)",
                m.uplink_manager_rank.clone(),
            );
            r.register(
                "quota_rejections",
                "Writes refused by the disk quota",
                m.quota_rejections.clone(),
            );
            r.register(
                "quota_declined",
                "Memories from peers not kept because the disk quota was reached",
                m.quota_declined.clone(),
            );
            r.register(
                "quota_evicted",
                "Memories from other devices let go here to make room under the disk quota (held elsewhere)",
                m.quota_evicted.clone(),
            );
            r.register(
                "declined_bodies",
                "Memories from peers not held for the disk quota, to fetch again once there is room",
                m.declined_bodies.clone(),
            );
            r.register(
                "retention_evicted",
                "Memories from other devices let go here by the retention policy (held elsewhere)",
                m.retention_evicted.clone(),
            );
            r.register(
                "evicted_bodies",
                "Memories evicted here (retention or the disk quota) and not deleted since",
                m.evicted_bodies.clone(),
            );
            r.register(
                "embedding_seconds",
                "Time to embed one request's texts",
                m.embedding_seconds.clone(),
            );
            r.register("memories", "Live memories", m.memories.clone());
            r.register("tombstones", "Deleted memories' tombstones", m.tombstones.clone());
            r.register(
                "index_vectors",
                "Vectors in the search index",
                m.index_size.clone(),
            );
            r.register(
                "disk_bytes",
                "Bytes used on disk by the database and index",
                m.disk_bytes.clone(),
            );
            r.register(
                "disk_quota_bytes",
                "The disk quota of the database and index (0: none)",
                m.disk_quota_bytes.clone(),
            );
            r.register(
                "last_in_sync_timestamp_seconds",
                "When an anti-entropy round last found this agent equal to a peer or its manager (0: never)",
                m.last_in_sync_seconds.clone(),
            );
            r.register(
                "sync_peers",
                "Peers and manager the sync engine is talking to",
                m.sync_peers.clone(),
            );
            r.register(
                "start_time_seconds",
                "When this agent process started (Unix time)",
                m.start_time_seconds.clone(),
            );
            r.register(
                "embedded_texts",
                "Texts embedded by the model",
                m.embedded_texts.clone(),
            );
            r.register(
                "embedding_batches",
                "Inference calls",
                m.embedding_batches.clone(),
            );
            r.register(
                "embedded_tokens",
                "Real tokens fed to the model",
                m.embedded_tokens.clone(),
            );
            r.register(
                "embedded_padded_tokens",
                "Token slots fed to the model, padding included",
                m.embedded_padded_tokens.clone(),
            );
        }
        m
    }

    pub fn observe_embedding(&self, elapsed: Duration) {
        self.embedding_seconds.observe(elapsed.as_secs_f64());
    }

    /// The exposition in the format `accept` prefers, with the embedder's counters brought up
    /// to date.
    pub fn render(
        &self,
        embedder: murmur_models::EmbedderStats,
        accept: Option<&str>,
    ) -> murmur_telemetry::Exposition {
        // Held across the catch-up so two scrapes cannot both add the same difference.
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let catch_up = |counter: &Counter, total: u64| {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        catch_up(&self.embedded_texts, embedder.texts);
        catch_up(&self.embedding_batches, embedder.batches);
        catch_up(&self.embedded_tokens, embedder.tokens);
        catch_up(&self.embedded_padded_tokens, embedder.padded_tokens);
        murmur_telemetry::exposition(&registry, accept)
    }
}
