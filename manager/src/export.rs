//! Analytics exports: Parquet files in the bucket that DuckDB, Spark, Trino or Athena read as
//! they are (layout in `docs/manager.md`).
//!
//! - `v1/analytics/memories/date=YYYY-MM-DD/part-0.parquet`: the live memories created that
//!   day (UTC). A partition is rewritten whole when its content changed, so a deleted memory
//!   leaves the current view at the next export; a day with no live memory left is removed.
//! - `v1/analytics/agents/agents.parquet`: every agent this manager knows, rewritten each time.
//! - `v1/analytics/sync_events/date=YYYY-MM-DD/<writer>-<seq>.parquet`: append-only; one new
//!   object per export and manager, never overwritten.
//!
//! With encryption at rest on, every file is written with Parquet modular encryption (AES-GCM,
//! footer and every column under one key), under the key `murmur-manager parquet-key` prints:
//! a subkey of the at-rest key that opens no segment. PyArrow reads them with it (tested);
//! DuckDB's own reader does not, as it fails on encrypted LIST columns such as `tags`
//! (docs/manager.md, "Encryption at rest").

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use futures::StreamExt;
use murmur_at_rest::Sealer;
use murmur_sync::MemoryRecord;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::{
    basic::Compression,
    data_type::{BoolType, ByteArray, ByteArrayType, Int32Type, Int64Type},
    encryption::encrypt::FileEncryptionProperties,
    errors::ParquetError,
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};

use crate::{bucket::Bucket, view::View};

const ROWS_PER_GROUP: usize = 65_536;
const DAY_MS: u64 = 86_400_000;

const MEMORY_SCHEMA: &str = "message memory {
  required binary id (STRING);
  required binary namespace (STRING);
  required binary author (STRING);
  required int64 created_at (TIMESTAMP(MILLIS,true));
  required binary text (STRING);
  required binary metadata (STRING);
  required group tags (LIST) { repeated group list { required binary element (STRING); } }
  required binary model_id (STRING);
  required int32 dimension;
}";

const AGENT_SCHEMA: &str = "message agent {
  required binary key (STRING);
  required boolean connected;
  optional binary address (STRING);
  optional binary software (STRING);
  optional int64 first_seen (TIMESTAMP(MILLIS,true));
  optional int64 last_seen (TIMESTAMP(MILLIS,true));
  optional int64 last_in_sync (TIMESTAMP(MILLIS,true));
  required int64 memories_authored;
  optional int64 reported_memories;
  required int32 peers;
  required int64 refused_messages;
}";

const EVENT_SCHEMA: &str = "message sync_event {
  required int64 at (TIMESTAMP(MILLIS,true));
  required binary manager (STRING);
  required binary agent (STRING);
  required binary kind (STRING);
  required int64 changes;
  required int64 bytes;
  required binary detail (STRING);
}";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("bucket: {0}")]
    Bucket(#[from] crate::bucket::BucketError),
}

/// What one export did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub partitions_written: usize,
    pub partitions_removed: usize,
    pub memories_written: usize,
    pub events_written: usize,
    pub bytes: u64,
    /// How long the view was locked to copy what changed: merges and searches wait that long.
    pub view_locked: std::time::Duration,
}

/// Remembers what the last export wrote, so an unchanged day is not rewritten.
#[derive(Default)]
pub struct Exporter {
    fingerprints: HashMap<String, (usize, u64)>,
    event_seq: u64,
    /// The view generation whose memories are all in the bucket: nothing to compare while the
    /// view stays at it.
    exported_generation: Option<u64>,
}

/// UTC calendar date of a Unix time in ms (proleptic Gregorian; Hinnant's civil_from_days).
pub fn utc_date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn fingerprint<'a>(records: impl Iterator<Item = &'a MemoryRecord>) -> (usize, u64) {
    let mut count = 0;
    let mut sum = 0u64;
    for record in records {
        count += 1;
        // Records are immutable once signed: the id and signature name the content.
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&record.signature[..8]);
        sum = sum.wrapping_add(
            u64::from_le_bytes(bytes) ^ u64::from_le_bytes(record.id.0[8..16].try_into().unwrap_or([0; 8])),
        );
    }
    (count, sum)
}

impl Exporter {
    /// Writes what changed since the last call. `view` is read under its lock only to pick and
    /// copy the partitions that changed; encoding and uploads run without it.
    pub async fn export(
        &mut self,
        bucket: &Bucket,
        view: &std::sync::RwLock<View>,
        connected_lags: &HashMap<[u8; 32], Option<u64>>,
    ) -> Result<ExportSummary, ExportError> {
        let lock_started = std::time::Instant::now();
        let (generation, changed, removed, agents, events) = {
            let mut view = view.write().unwrap_or_else(|p| p.into_inner());
            let unchanged = self.exported_generation == Some(view.generation);
            // Grouped by day number: formatting a date string per record under the lock costs
            // more than the grouping itself.
            let mut by_day: BTreeMap<u64, Vec<&MemoryRecord>> = BTreeMap::new();
            for record in view.memories.values().filter(|_| !unchanged) {
                by_day
                    .entry(record.created_at_ms() / DAY_MS)
                    .or_default()
                    .push(record);
            }
            let by_date: BTreeMap<String, Vec<&MemoryRecord>> = by_day
                .into_iter()
                .map(|(day, records)| (utc_date(day * DAY_MS), records))
                .collect();
            let mut changed = Vec::new();
            for (date, records) in &by_date {
                let print = fingerprint(records.iter().copied());
                if self.fingerprints.get(date) != Some(&print) {
                    // Only the exported columns are copied (no vector, no signature): a
                    // million-memory export would otherwise double the manager's RAM.
                    let rows: Vec<MemoryRow> = records.iter().map(|r| MemoryRow::from(*r)).collect();
                    changed.push((date.clone(), print, rows));
                }
            }
            let removed: Vec<String> = self
                .fingerprints
                .keys()
                .filter(|d| !unchanged && !by_date.contains_key(*d))
                .cloned()
                .collect();
            let agents = agent_rows(&view, connected_lags);
            let events = std::mem::take(&mut view.sync_events);
            (view.generation, changed, removed, agents, events)
        };

        let mut summary = ExportSummary {
            view_locked: lock_started.elapsed(),
            ..ExportSummary::default()
        };
        let properties = properties(bucket.sealer())?;
        // Partitions encode in parallel (one per core), and upload in order as they finish.
        let parallel = std::thread::available_parallelism().map_or(1, usize::from);
        let mut encoded = futures::stream::iter(changed.into_iter().map(|(date, print, rows)| {
            let properties = Arc::clone(&properties);
            async move {
                // Sorted here, not under the view's lock.
                let encoded = tokio::task::spawn_blocking(move || {
                    let mut rows = rows;
                    rows.sort_unstable_by_key(|r| r.id);
                    encode_memories(&rows, &properties).map(|b| (b, rows.len()))
                })
                .await
                .map_err(|e| ParquetError::General(e.to_string()));
                (date, print, encoded)
            }
        }))
        .buffered(parallel);
        while let Some((date, print, encoded)) = encoded.next().await {
            let (body, rows) = encoded??;
            let path = bucket.path(&format!("v1/analytics/memories/date={date}/part-0.parquet"));
            summary.bytes += body.len() as u64;
            summary.memories_written += rows;
            bucket
                .store()
                .put(&path, PutPayload::from(Bytes::from(body)))
                .await?;
            self.fingerprints.insert(date, print);
            summary.partitions_written += 1;
        }
        for date in removed {
            let path = bucket.path(&format!("v1/analytics/memories/date={date}/part-0.parquet"));
            bucket.delete(path.as_ref()).await?;
            self.fingerprints.remove(&date);
            summary.partitions_removed += 1;
        }
        self.exported_generation = Some(generation);

        let agents_body = encode_agents(&agents, &properties)?;
        summary.bytes += agents_body.len() as u64;
        bucket
            .store()
            .put(
                &bucket.path("v1/analytics/agents/agents.parquet"),
                PutPayload::from(Bytes::from(agents_body)),
            )
            .await?;

        let mut by_day: BTreeMap<String, Vec<&crate::view::SyncEvent>> = BTreeMap::new();
        for event in &events {
            by_day.entry(utc_date(event.at_ms)).or_default().push(event);
        }
        for (date, day) in by_day {
            let body = encode_events(bucket.writer(), &day, &properties)?;
            self.event_seq += 1;
            let path = bucket.path(&format!(
                "v1/analytics/sync_events/date={date}/{}-{:06}.parquet",
                bucket.writer(),
                self.event_seq
            ));
            summary.bytes += body.len() as u64;
            bucket.put_new(&path, Bytes::from(body)).await?;
            summary.events_written += day.len();
        }
        Ok(summary)
    }
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

/// What the Parquet footer key is derived for: changing it changes every analyst's key.
pub const PARQUET_KEY_PURPOSE: &str = "parquet export v1";

/// The export's AES-256 key: 32 hex digits (128 bits of a subkey) used as its 32 bytes, so
/// that readers which take a key as text (DuckDB's `PRAGMA add_parquet_key`) take it as it is.
pub fn parquet_key(sealer: &Sealer) -> String {
    hex::encode(&sealer.subkey(PARQUET_KEY_PURPOSE)[..16])
}

/// How every export file is written: Snappy, and encrypted under a subkey of `sealer`'s key.
pub fn properties(sealer: Option<&Sealer>) -> Result<Arc<WriterProperties>, ParquetError> {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(concat!("murmur-manager ", env!("CARGO_PKG_VERSION")).into());
    if let Some(sealer) = sealer {
        let key = parquet_key(sealer).into_bytes();
        builder = builder.with_file_encryption_properties(FileEncryptionProperties::builder(key).build()?);
    }
    Ok(Arc::new(builder.build()))
}

/// Column values of one row group, in schema order.
enum Column {
    Bytes(Vec<ByteArray>, Option<Vec<i16>>, Option<Vec<i16>>),
    Int64(Vec<i64>, Option<Vec<i16>>),
    Int32(Vec<i32>),
    Bool(Vec<bool>),
}

fn write_file(
    schema: &str,
    groups: Vec<Vec<Column>>,
    properties: &Arc<WriterProperties>,
) -> Result<Vec<u8>, ParquetError> {
    let schema = Arc::new(parse_message_type(schema)?);
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::clone(properties))?;
    for columns in groups {
        let mut group = writer.next_row_group()?;
        let mut columns = columns.into_iter();
        while let Some(mut column) = group.next_column()? {
            let Some(values) = columns.next() else {
                return Err(ParquetError::General("fewer columns than the schema".into()));
            };
            match values {
                Column::Bytes(v, def, rep) => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&v, def.as_deref(), rep.as_deref())?;
                }
                Column::Int64(v, def) => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(&v, def.as_deref(), None)?;
                }
                Column::Int32(v) => {
                    column.typed::<Int32Type>().write_batch(&v, None, None)?;
                }
                Column::Bool(v) => {
                    column.typed::<BoolType>().write_batch(&v, None, None)?;
                }
            }
            column.close()?;
        }
        group.close()?;
    }
    writer.into_inner()
}

/// The exported columns of one memory, copied out of the view so encoding runs without its lock.
pub struct MemoryRow {
    id: [u8; 16],
    namespace: String,
    author: [u8; 32],
    created_at_ms: u64,
    text: String,
    metadata_json: String,
    tags: Vec<String>,
    model_id: String,
    dimension: usize,
}

impl From<&MemoryRecord> for MemoryRow {
    fn from(record: &MemoryRecord) -> Self {
        Self {
            id: record.id.0,
            namespace: record.namespace.clone(),
            author: record.author,
            created_at_ms: record.created_at_ms(),
            text: record.text.clone(),
            metadata_json: record.metadata_json.clone(),
            tags: record.tags.clone(),
            model_id: record.model_id.clone(),
            dimension: record.dimension(),
        }
    }
}

pub fn encode_memories(
    records: &[MemoryRow],
    properties: &Arc<WriterProperties>,
) -> Result<Vec<u8>, ParquetError> {
    let groups = records
        .chunks(ROWS_PER_GROUP)
        .map(|chunk| {
            let mut tags = Vec::new();
            let mut tag_def = Vec::new();
            let mut tag_rep = Vec::new();
            for record in chunk {
                if record.tags.is_empty() {
                    tag_def.push(0);
                    tag_rep.push(0);
                }
                for (i, tag) in record.tags.iter().enumerate() {
                    tags.push(text(tag));
                    tag_def.push(1);
                    tag_rep.push(i16::from(i > 0));
                }
            }
            vec![
                Column::Bytes(
                    chunk
                        .iter()
                        .map(|r| text(&uuid::Uuid::from_bytes(r.id).to_string()))
                        .collect(),
                    None,
                    None,
                ),
                Column::Bytes(chunk.iter().map(|r| text(&r.namespace)).collect(), None, None),
                Column::Bytes(
                    chunk.iter().map(|r| text(&hex::encode(r.author))).collect(),
                    None,
                    None,
                ),
                Column::Int64(chunk.iter().map(|r| r.created_at_ms as i64).collect(), None),
                Column::Bytes(chunk.iter().map(|r| text(&r.text)).collect(), None, None),
                Column::Bytes(chunk.iter().map(|r| text(&r.metadata_json)).collect(), None, None),
                Column::Bytes(tags, Some(tag_def), Some(tag_rep)),
                Column::Bytes(chunk.iter().map(|r| text(&r.model_id)).collect(), None, None),
                Column::Int32(chunk.iter().map(|r| r.dimension as i32).collect()),
            ]
        })
        .collect();
    write_file(MEMORY_SCHEMA, groups, properties)
}

pub struct AgentRow {
    key: String,
    connected: bool,
    address: Option<String>,
    software: Option<String>,
    first_seen_ms: Option<u64>,
    last_seen_ms: Option<u64>,
    last_in_sync_ms: Option<u64>,
    memories_authored: u64,
    reported_memories: Option<u64>,
    peers: usize,
    refused_messages: u64,
}

/// `last_in_sync` holds, per connected agent, when its state last matched the manager's.
fn agent_rows(view: &View, last_in_sync: &HashMap<[u8; 32], Option<u64>>) -> Vec<AgentRow> {
    let authored = view.authored_counts();
    view.agents
        .iter()
        .map(|(key, entry)| AgentRow {
            key: hex::encode(key),
            connected: entry.connected,
            address: entry.address.clone(),
            software: entry.software.clone(),
            first_seen_ms: entry.first_seen_ms,
            last_seen_ms: entry.last_seen_ms,
            last_in_sync_ms: last_in_sync.get(key).copied().flatten(),
            memories_authored: authored.get(key).copied().unwrap_or(0),
            reported_memories: entry.report.as_ref().and_then(|r| r.memories),
            peers: entry.report.as_ref().map_or(0, |r| r.peers.len()),
            refused_messages: entry.refused_messages,
        })
        .collect()
}

fn optional_bytes(values: impl Iterator<Item = Option<String>>) -> Column {
    let mut present = Vec::new();
    let mut def = Vec::new();
    for value in values {
        def.push(i16::from(value.is_some()));
        present.extend(value.map(|v| text(&v)));
    }
    Column::Bytes(present, Some(def), None)
}

fn optional_i64(values: impl Iterator<Item = Option<u64>>) -> Column {
    let mut present = Vec::new();
    let mut def = Vec::new();
    for value in values {
        def.push(i16::from(value.is_some()));
        present.extend(value.map(|v| v as i64));
    }
    Column::Int64(present, Some(def))
}

fn encode_agents(rows: &[AgentRow], properties: &Arc<WriterProperties>) -> Result<Vec<u8>, ParquetError> {
    let columns = vec![
        Column::Bytes(rows.iter().map(|r| text(&r.key)).collect(), None, None),
        Column::Bool(rows.iter().map(|r| r.connected).collect()),
        optional_bytes(rows.iter().map(|r| r.address.clone())),
        optional_bytes(rows.iter().map(|r| r.software.clone())),
        optional_i64(rows.iter().map(|r| r.first_seen_ms)),
        optional_i64(rows.iter().map(|r| r.last_seen_ms)),
        optional_i64(rows.iter().map(|r| r.last_in_sync_ms)),
        Column::Int64(rows.iter().map(|r| r.memories_authored as i64).collect(), None),
        optional_i64(rows.iter().map(|r| r.reported_memories)),
        Column::Int32(rows.iter().map(|r| r.peers as i32).collect()),
        Column::Int64(rows.iter().map(|r| r.refused_messages as i64).collect(), None),
    ];
    write_file(AGENT_SCHEMA, vec![columns], properties)
}

fn encode_events(
    manager: &str,
    events: &[&crate::view::SyncEvent],
    properties: &Arc<WriterProperties>,
) -> Result<Vec<u8>, ParquetError> {
    let columns = vec![
        Column::Int64(events.iter().map(|e| e.at_ms as i64).collect(), None),
        Column::Bytes(events.iter().map(|_| text(manager)).collect(), None, None),
        Column::Bytes(
            events.iter().map(|e| text(&hex::encode(e.agent))).collect(),
            None,
            None,
        ),
        Column::Bytes(events.iter().map(|e| text(e.kind)).collect(), None, None),
        Column::Int64(events.iter().map(|e| e.changes as i64).collect(), None),
        Column::Int64(events.iter().map(|e| e.bytes as i64).collect(), None),
        Column::Bytes(events.iter().map(|e| text(&e.detail)).collect(), None, None),
    ];
    write_file(EVENT_SCHEMA, vec![columns], properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_795_478_399_999), "2026-11-23");
        assert_eq!(utc_date(1_795_478_400_000), "2026-11-24");
        assert_eq!(utc_date(4_107_542_400_000), "2100-03-01");
    }
}
