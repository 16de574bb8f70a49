//! Prometheus metrics of the manager, served at `/metrics` in the format the scraper asks for.

use std::sync::Mutex;

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
pub struct MessageLabels {
    pub direction: &'static str,
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub uplink_messages: Family<MessageLabels, Counter>,
    pub uplink_bytes: Family<MessageLabels, Counter>,
    pub uplinks: Gauge,
    pub uplinks_refused: Counter,
    pub uplinks_dropped: Counter,
    pub refused_messages: Counter,
    pub batches: Counter,
    pub batch_messages: Histogram,
    pub segments_written: Counter,
    pub segment_seconds: Histogram,
    pub changes_persisted: Counter,
    pub compactions: Counter,
    pub bucket_errors: Counter,
    pub bucket_changes_refused: Counter,
    pub segments_unreadable: Counter,
    pub outbox_dropped: Counter,
    pub outbox_bytes: Gauge,
    pub backlogs: Counter,
    pub memories_live: Gauge,
    pub memories_deleted: Gauge,
    pub exports: Counter,
    pub export_seconds: Histogram,
    pub export_bytes: Counter,
    pub searches: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("murmur_manager");
        let metrics = Self {
            uplink_messages: Family::default(),
            uplink_bytes: Family::default(),
            uplinks: Gauge::default(),
            uplinks_refused: Counter::default(),
            uplinks_dropped: Counter::default(),
            refused_messages: Counter::default(),
            batches: Counter::default(),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            segments_written: Counter::default(),
            segment_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            changes_persisted: Counter::default(),
            compactions: Counter::default(),
            bucket_errors: Counter::default(),
            bucket_changes_refused: Counter::default(),
            segments_unreadable: Counter::default(),
            outbox_dropped: Counter::default(),
            outbox_bytes: Gauge::default(),
            backlogs: Counter::default(),
            memories_live: Gauge::default(),
            memories_deleted: Gauge::default(),
            exports: Counter::default(),
            export_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            export_bytes: Counter::default(),
            searches: Counter::default(),
            registry: Mutex::new(Registry::default()),
        };
        registry.register(
            "uplink_messages",
            "Sync messages over agent uplinks",
            metrics.uplink_messages.clone(),
        );
        registry.register(
            "uplink_bytes",
            "Sync message bytes over agent uplinks",
            metrics.uplink_bytes.clone(),
        );
        registry.register("uplinks", "Agents connected now", metrics.uplinks.clone());
        registry.register(
            "uplinks_refused",
            "Uplink handshakes refused (credentials)",
            metrics.uplinks_refused.clone(),
        );
        registry.register(
            "uplinks_dropped",
            "Uplinks dropped for malformed streams",
            metrics.uplinks_dropped.clone(),
        );
        registry.register(
            "refused_messages",
            "Sync messages the engine refused",
            metrics.refused_messages.clone(),
        );
        registry.register(
            "merge_batches",
            "Merge batches committed",
            metrics.batches.clone(),
        );
        registry.register(
            "merge_batch_messages",
            "Messages per merge batch",
            metrics.batch_messages.clone(),
        );
        registry.register(
            "segments_written",
            "Segments written to the bucket",
            metrics.segments_written.clone(),
        );
        registry.register(
            "segment_write_seconds",
            "Time to write one segment",
            metrics.segment_seconds.clone(),
        );
        registry.register(
            "changes_persisted",
            "Signed changes written to the bucket",
            metrics.changes_persisted.clone(),
        );
        registry.register("compactions", "Segment compactions", metrics.compactions.clone());
        registry.register(
            "bucket_errors",
            "Failed bucket operations",
            metrics.bucket_errors.clone(),
        );
        registry.register(
            "bucket_changes_refused",
            "Batches of changes read from the bucket (one shard's) that failed verification",
            metrics.bucket_changes_refused.clone(),
        );
        registry.register(
            "segments_unreadable",
            "Segments in the bucket skipped as damaged (checksum or format)",
            metrics.segments_unreadable.clone(),
        );
        registry.register(
            "outbox_dropped",
            "Sync messages for a slow agent dropped because its outbox or the total budget was full (anti-entropy resends)",
            metrics.outbox_dropped.clone(),
        );
        registry.register(
            "outbox_bytes",
            "Bytes of sync messages queued for agents, all outboxes together",
            metrics.outbox_bytes.clone(),
        );
        registry.register(
            "uplink_backlogs",
            "Times an agent's outbox grew long and sync replies to it were held back until it emptied",
            metrics.backlogs.clone(),
        );
        registry.register("memories", "Live memories held", metrics.memories_live.clone());
        registry.register(
            "tombstones",
            "Deleted memories known",
            metrics.memories_deleted.clone(),
        );
        registry.register("exports", "Parquet exports written", metrics.exports.clone());
        registry.register(
            "export_seconds",
            "Time of one Parquet export",
            metrics.export_seconds.clone(),
        );
        registry.register(
            "export_bytes",
            "Parquet bytes written",
            metrics.export_bytes.clone(),
        );
        registry.register("searches", "Dashboard and API searches", metrics.searches.clone());
        *metrics.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        metrics
    }
}

impl Metrics {
    pub fn count_message(&self, direction: &'static str, kind: &'static str, bytes: usize) {
        let labels = MessageLabels { direction, kind };
        self.uplink_messages.get_or_create(&labels).inc();
        self.uplink_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// The exposition in the format `accept` prefers.
    pub fn render(&self, accept: Option<&str>) -> murmur_telemetry::Exposition {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        murmur_telemetry::exposition(&registry, accept)
    }
}
