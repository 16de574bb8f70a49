//! The source of truth: memories in sled. Everything else (the vector index, filter caches)
//! is derived from what is here and can be rebuilt from it.
//!
//! Trees: `memories` (id -> record), `by_namespace` (namespace \0 id -> ()), `labels`
//! (index label -> id), `tombstones` (id -> deletion), `meta` (generation, counts). A write
//! touches them in one sled transaction and is flushed (fsync) before it is acknowledged. The
//! generation counter moves with every write, so a saved index can tell whether it is stale.
//! The counts of live memories and tombstones move in the same transactions, because sled
//! 0.34's `Tree::len()` walks the whole tree and the gauges are read after every write.
//! `sync_changes` holds the swarm's CRDT state (murmur-sync's signed changes, key: shard then
//! a unique sequence number) and is written in the same transactions as the memories it
//! describes, so the two never disagree after a crash.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};
use uuid::Uuid;

use murmur_sync::{Persist, SignedChange};

use crate::{
    error::{AgentError, Result},
    memory::{Memory, StoredMemory, decode_row},
};

const GENERATION_KEY: &[u8] = b"generation";
const COUNTS_KEY: &[u8] = b"counts";
const FORMAT_KEY: &[u8] = b"format";
/// 3: memories hold signed records, `sync_changes` only entries (sync wire version 2).
const STORE_FORMAT: u8 = 3;

/// How many live memories and tombstones the store holds, kept in `meta` by every write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub memories: u64,
    pub tombstones: u64,
}

impl Counts {
    fn encode(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.memories.to_be_bytes());
        bytes[8..].copy_from_slice(&self.tombstones.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let memories = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let tombstones = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Self { memories, tombstones })
    }
}

/// What one transaction changed in the counts; applied to `meta` before it commits.
#[derive(Debug, Default)]
struct CountDelta {
    memories: i64,
    tombstones: i64,
}

impl CountDelta {
    fn commit(&self, meta: &TransactionalTree) -> TxResult {
        let current = match meta.get(COUNTS_KEY)? {
            Some(bytes) => Counts::decode(&bytes).ok_or_else(|| {
                ConflictableTransactionError::Abort(AgentError::CorruptRecord {
                    key: "meta/counts".into(),
                    reason: format!("{} bytes, expected 16", bytes.len()),
                })
            })?,
            None => Counts::default(),
        };
        let apply = |count: u64, delta: i64, what: &str| {
            count.checked_add_signed(delta).ok_or_else(|| {
                ConflictableTransactionError::Abort(AgentError::CorruptRecord {
                    key: "meta/counts".into(),
                    reason: format!("{what} count {count} cannot change by {delta}"),
                })
            })
        };
        let next = Counts {
            memories: apply(current.memories, self.memories, "memory")?,
            tombstones: apply(current.tombstones, self.tombstones, "tombstone")?,
        };
        meta.insert(COUNTS_KEY, &next.encode())?;
        Ok(())
    }
}

pub struct Store {
    db: sled::Db,
    memories: sled::Tree,
    by_namespace: sled::Tree,
    labels: sled::Tree,
    tombstones: sled::Tree,
    meta: sled::Tree,
    sync_changes: sled::Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub deleted_at_ms: u64,
    pub label: u64,
}

/// What `get` finds for an id.
#[derive(Debug)]
pub enum Lookup {
    Found(Memory),
    Deleted(Tombstone),
    Missing,
}

fn namespace_key(namespace: &str, id: &Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(namespace.len() + 17);
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn bump_generation(meta: &TransactionalTree) -> Result<u64, ConflictableTransactionError<AgentError>> {
    let current = meta.get(GENERATION_KEY)?.map(|v| decode_u64(&v)).unwrap_or(0);
    let next = current + 1;
    meta.insert(GENERATION_KEY, &next.to_be_bytes())?;
    Ok(next)
}

type TxResult = Result<(), ConflictableTransactionError<AgentError>>;

/// Puts one encoded memory and its namespace and label entries, inside a transaction;
/// returns whether the id was new to the store.
fn put_memory(
    trees: (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    memory: &Memory,
    (key, value): &(Vec<u8>, Vec<u8>),
) -> Result<bool, ConflictableTransactionError<AgentError>> {
    let (memories, namespaces, labels) = trees;
    let previous = memories.insert(key.as_slice(), value.as_slice())?;
    namespaces.insert(namespace_key(&memory.namespace, &memory.id), &[])?;
    labels.insert(&memory.label.to_be_bytes(), key.as_slice())?;
    Ok(previous.is_none())
}

fn encode_rows(memories: &[StoredMemory]) -> Vec<(Vec<u8>, Vec<u8>)> {
    memories
        .iter()
        .map(|m| (m.memory.id.as_bytes().to_vec(), m.encode()))
        .collect()
}

fn put_rows(tree: &TransactionalTree, rows: &[(Vec<u8>, Vec<u8>)]) -> TxResult {
    for (key, value) in rows {
        tree.insert(key.as_slice(), value.as_slice())?;
    }
    Ok(())
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn flatten(error: TransactionError<AgentError>) -> AgentError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => AgentError::Storage(e),
    }
}

impl Store {
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::LowSpace)
            .open()?;
        Ok(Self {
            memories: db.open_tree("memories")?,
            by_namespace: db.open_tree("by_namespace")?,
            labels: db.open_tree("labels")?,
            tombstones: db.open_tree("tombstones")?,
            meta: db.open_tree("meta")?,
            sync_changes: db.open_tree("sync_changes")?,
            db,
        })
    }

    /// Refuses a database written in another layout, with a reason a user can act on; marks a
    /// new one with this layout. Called at open, before anything is read.
    pub fn check_format(&self) -> Result<()> {
        match self.meta.get(FORMAT_KEY)?.as_deref() {
            Some([STORE_FORMAT]) => Ok(()),
            Some(other) => Err(AgentError::CorruptRecord {
                key: "meta/format".into(),
                reason: format!("store format {other:?}; this agent reads format {STORE_FORMAT}"),
            }),
            None if self.memories.first()?.is_some() || self.sync_changes.first()?.is_some() => {
                Err(AgentError::CorruptRecord {
                    key: "meta/format".into(),
                    reason: "written by an agent older than the bodies-by-hash format (sync wire \
                             version 1): move the data directory aside and re-import its memories"
                        .into(),
                })
            }
            None => {
                self.meta.insert(FORMAT_KEY, &[STORE_FORMAT])?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// A fresh, never reused key for the vector index.
    pub fn next_label(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    pub fn generation(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(GENERATION_KEY)?
            .map(|v| decode_u64(&v))
            .unwrap_or(0))
    }

    /// Keys for persisted sync changes: shard, then a never reused sequence number.
    fn change_rows(&self, changes: &[Persist]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        changes
            .iter()
            .map(|p| {
                let mut key = p.shard.to_be_bytes().to_vec();
                key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
                Ok((key, p.change.encode()))
            })
            .collect()
    }

    /// Stores all of `memories` and the sync changes that carry them, atomically and durably;
    /// returns the new generation.
    pub async fn insert(&self, memories: &[StoredMemory], changes: &[Persist]) -> Result<u64> {
        let encoded = encode_rows(memories);
        let change_rows = self.change_rows(changes)?;
        let generation = (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.meta,
            &self.sync_changes,
        )
            .transaction(|(tx_memories, tx_namespaces, tx_labels, tx_meta, tx_changes)| {
                let mut delta = CountDelta::default();
                for (stored, row) in memories.iter().zip(&encoded) {
                    if put_memory((tx_memories, tx_namespaces, tx_labels), &stored.memory, row)? {
                        delta.memories += 1;
                    }
                }
                put_rows(tx_changes, &change_rows)?;
                delta.commit(tx_meta)?;
                bump_generation(tx_meta)
            })
            .map_err(flatten)?;
        self.db.flush_async().await?;
        Ok(generation)
    }

    /// Stores what arrived from peers: new memories, deletes (of memories held here or not yet
    /// arrived) and the changes that carried them, in one durable transaction. Returns the
    /// memories that were removed, so their index entries can go too.
    pub async fn apply_remote(
        &self,
        inserts: &[StoredMemory],
        deletes: &[(Uuid, u64)],
        changes: &[Persist],
    ) -> Result<(Vec<Memory>, u64)> {
        let encoded = encode_rows(inserts);
        let mut removed = Vec::new();
        let mut tombstone_rows = Vec::with_capacity(deletes.len());
        for (id, deleted_at_ms) in deletes {
            let label = match self.get(*id)? {
                Lookup::Found(memory) => {
                    let label = memory.label;
                    removed.push(memory);
                    label
                }
                // The delete overtook the memory: nothing to remove, and it will never be
                // shown here.
                _ => u64::MAX,
            };
            tombstone_rows.push(encode_tombstone(
                id,
                &Tombstone {
                    deleted_at_ms: *deleted_at_ms,
                    label,
                },
            )?);
        }
        let change_rows = self.change_rows(changes)?;
        let generation = (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.tombstones,
            &self.meta,
            &self.sync_changes,
        )
            .transaction(
                |(tx_memories, tx_namespaces, tx_labels, tx_tombstones, tx_meta, tx_changes)| {
                    let mut delta = CountDelta::default();
                    for (stored, row) in inserts.iter().zip(&encoded) {
                        if put_memory((tx_memories, tx_namespaces, tx_labels), &stored.memory, row)? {
                            delta.memories += 1;
                        }
                    }
                    for memory in &removed {
                        if tx_memories.remove(memory.id.as_bytes())?.is_some() {
                            delta.memories -= 1;
                        }
                        tx_namespaces.remove(namespace_key(&memory.namespace, &memory.id))?;
                        tx_labels.remove(&memory.label.to_be_bytes())?;
                    }
                    for (id, tombstone) in deletes.iter().map(|(id, _)| id).zip(&tombstone_rows) {
                        if tx_tombstones
                            .insert(id.as_bytes(), tombstone.as_slice())?
                            .is_none()
                        {
                            delta.tombstones += 1;
                        }
                    }
                    put_rows(tx_changes, &change_rows)?;
                    delta.commit(tx_meta)?;
                    bump_generation(tx_meta)
                },
            )
            .map_err(flatten)?;
        self.db.flush_async().await?;
        Ok((removed, generation))
    }

    /// Every persisted sync change, for rebuilding the engine at start.
    pub fn sync_changes(&self) -> Result<Vec<(u16, SignedChange)>> {
        self.sync_changes
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let corrupt = |reason: String| AgentError::CorruptRecord {
                    key: format!("sync_changes/{}", hex::encode(&key)),
                    reason,
                };
                let shard = key
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or_else(|| corrupt("short key".into()))?;
                let change = SignedChange::decode(&value).map_err(|e| corrupt(e.to_string()))?;
                Ok((shard, change))
            })
            .collect()
    }

    /// Replaces a memory with its tombstone, durably. Returns what was deleted.
    pub async fn delete(&self, id: Uuid, now_ms: u64, changes: &[Persist]) -> Result<(Memory, u64)> {
        let memory = match self.get(id)? {
            Lookup::Found(memory) => memory,
            Lookup::Deleted(_) => return Err(AgentError::Deleted(id.to_string())),
            Lookup::Missing => return Err(AgentError::NotFound(id.to_string())),
        };
        let tombstone = Tombstone {
            deleted_at_ms: now_ms,
            label: memory.label,
        };
        let tombstone_bytes = encode_tombstone(&id, &tombstone)?;
        let change_rows = self.change_rows(changes)?;
        let generation = (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.tombstones,
            &self.meta,
            &self.sync_changes,
        )
            .transaction(
                |(tx_memories, tx_namespaces, tx_labels, tx_tombstones, tx_meta, tx_changes)| {
                    if tx_memories.remove(id.as_bytes())?.is_none() {
                        // Deleted concurrently by another request.
                        return Err(ConflictableTransactionError::Abort(AgentError::Deleted(
                            id.to_string(),
                        )));
                    }
                    let mut delta = CountDelta {
                        memories: -1,
                        tombstones: 0,
                    };
                    tx_namespaces.remove(namespace_key(&memory.namespace, &id))?;
                    tx_labels.remove(&memory.label.to_be_bytes())?;
                    if tx_tombstones
                        .insert(id.as_bytes(), tombstone_bytes.as_slice())?
                        .is_none()
                    {
                        delta.tombstones = 1;
                    }
                    put_rows(tx_changes, &change_rows)?;
                    delta.commit(tx_meta)?;
                    bump_generation(tx_meta)
                },
            )
            .map_err(flatten)?;
        self.db.flush_async().await?;
        Ok((memory, generation))
    }

    pub fn get(&self, id: Uuid) -> Result<Lookup> {
        if let Some(bytes) = self.memories.get(id.as_bytes())? {
            return Ok(Lookup::Found(Memory::decode(id, &bytes)?));
        }
        if let Some(bytes) = self.tombstones.get(id.as_bytes())? {
            let tombstone = postcard::from_bytes(&bytes).map_err(|e| AgentError::CorruptRecord {
                key: id.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(Lookup::Deleted(tombstone));
        }
        Ok(Lookup::Missing)
    }

    /// The signed record bytes of a live memory, as peers are sent them; `None` when it is not
    /// held (never arrived, or deleted and erased).
    pub fn record_bytes(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        match self.memories.get(id.as_bytes())? {
            Some(row) => Ok(Some(decode_row(id, &row)?.1.to_vec())),
            None => Ok(None),
        }
    }

    /// Whether the body of memory `id` is held here.
    pub fn holds(&self, id: Uuid) -> Result<bool> {
        Ok(self.memories.contains_key(id.as_bytes())?)
    }

    pub fn id_for_label(&self, label: u64) -> Result<Option<Uuid>> {
        Ok(self
            .labels
            .get(label.to_be_bytes())?
            .and_then(|bytes| Uuid::from_slice(&bytes).ok()))
    }

    /// Memories in id (= creation time) order after `after`, at most `limit`, optionally of
    /// one namespace. Returns them and whether more follow.
    pub fn list(
        &self,
        namespace: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<Memory>, bool)> {
        // The namespace index yields ids to look up; the memories tree yields the records
        // themselves, so the common unfiltered listing reads each record once.
        let memories: Box<dyn Iterator<Item = Result<Memory>> + '_> = match namespace {
            Some(ns) => {
                let start = match after {
                    Some(after) => {
                        let mut key = namespace_key(ns, &after);
                        key.push(0); // strictly after
                        key
                    }
                    None => namespace_key(ns, &Uuid::nil()),
                };
                let mut prefix = ns.as_bytes().to_vec();
                prefix.push(0);
                Box::new(
                    self.by_namespace
                        .range(start..)
                        .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
                        .filter_map(|item| match item {
                            Err(e) => Some(Err(e.into())),
                            Ok((key, _)) => match self.get(uuid_suffix(&key)) {
                                Ok(Lookup::Found(memory)) => Some(Ok(memory)),
                                Ok(_) => None,
                                Err(e) => Some(Err(e)),
                            },
                        }),
                )
            }
            None => {
                let start = after.map_or_else(
                    || Uuid::nil().as_bytes().to_vec(),
                    |a| {
                        let mut key = a.as_bytes().to_vec();
                        key.push(0);
                        key
                    },
                );
                Box::new(self.memories.range(start..).map(|item| {
                    let (key, value) = item?;
                    Memory::decode(uuid_suffix(&key), &value)
                }))
            }
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for memory in memories {
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(memory?);
        }
        Ok((out, false))
    }

    /// Every live memory, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Memory>> + '_ {
        self.memories.iter().map(|item| {
            let (key, value) = item?;
            Memory::decode(uuid_suffix(&key), &value)
        })
    }

    /// Live memories and tombstones, as the last committed write left them: no scan.
    pub fn counts(&self) -> Result<Counts> {
        match self.meta.get(COUNTS_KEY)? {
            Some(bytes) => Counts::decode(&bytes).ok_or_else(|| AgentError::CorruptRecord {
                key: "meta/counts".into(),
                reason: format!("{} bytes, expected 16", bytes.len()),
            }),
            None => Ok(Counts::default()),
        }
    }

    /// Counts by walking the trees: once at open, to check the kept counts (or to write them
    /// for a store made before they were kept).
    pub fn count_by_scan(&self) -> Result<Counts> {
        Ok(Counts {
            memories: self.memories.len() as u64,
            tombstones: self.tombstones.len() as u64,
        })
    }

    /// Makes the kept counts agree with the trees; returns what they said before, when they
    /// said something else. Called at open, before any write.
    pub fn reconcile_counts(&self) -> Result<Option<Counts>> {
        let scanned = self.count_by_scan()?;
        let kept = self.meta.get(COUNTS_KEY)?.and_then(|b| Counts::decode(&b));
        if kept == Some(scanned) {
            return Ok(None);
        }
        self.meta.insert(COUNTS_KEY, &scanned.encode())?;
        self.db.flush()?;
        Ok(Some(kept.unwrap_or_default()))
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn encode_tombstone(id: &Uuid, tombstone: &Tombstone) -> Result<Vec<u8>> {
    postcard::to_allocvec(tombstone).map_err(|e| AgentError::CorruptRecord {
        key: format!("tombstones/{id}"),
        reason: format!("encoding: {e}"),
    })
}

fn uuid_suffix(key: &[u8]) -> Uuid {
    let start = key.len().saturating_sub(16);
    Uuid::from_slice(&key[start..]).unwrap_or_else(|_| Uuid::nil())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed memory in `namespace`; `n` picks its text, nonce and label, so each `n` is one
    /// distinct memory.
    fn memory(n: u64, namespace: &str) -> StoredMemory {
        let draft = murmur_sync::MemoryDraft {
            namespace: namespace.into(),
            text: format!("memory {n}"),
            metadata_json: "{}".into(),
            tags: vec![],
            model_id: "m".into(),
            vector: vec![0.5, 0.5],
        };
        let key = murmur_sync::SigningKey::from_bytes(&[1; 32]);
        let (record, _) =
            murmur_sync::MemoryRecord::sign(&draft, &key, 1_000 + n, n, &Default::default()).unwrap();
        StoredMemory::from_record(&record, n)
    }

    fn id(memory: &StoredMemory) -> Uuid {
        memory.memory.id
    }

    fn assert_counts(store: &Store, memories: u64, tombstones: u64) {
        let expected = Counts { memories, tombstones };
        assert_eq!(store.counts().unwrap(), expected, "kept counts");
        assert_eq!(store.count_by_scan().unwrap(), expected, "counts by scan");
    }

    #[tokio::test]
    async fn counts_move_with_every_write_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path, 1 << 20).unwrap();
            assert_counts(&store, 0, 0);
            store
                .insert(&[memory(1, "a"), memory(2, "a"), memory(3, "b")], &[])
                .await
                .unwrap();
            assert_counts(&store, 3, 0);
            // Storing the same memory again (a replayed write) adds nothing.
            store.insert(&[memory(3, "b")], &[]).await.unwrap();
            assert_counts(&store, 3, 0);
            store.delete(id(&memory(1, "a")), 5, &[]).await.unwrap();
            assert_counts(&store, 2, 1);
            // From peers: two new memories, a delete of one held here, a delete that overtook
            // its memory, and a repeated delete of one already gone.
            let (removed, _) = store
                .apply_remote(
                    &[memory(4, "a"), memory(5, "c")],
                    &[
                        (id(&memory(2, "a")), 6),
                        (id(&memory(9, "a")), 6),
                        (id(&memory(1, "a")), 7),
                    ],
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(removed.len(), 1);
            assert_counts(&store, 3, 3);
            assert_eq!(store.reconcile_counts().unwrap(), None, "nothing to fix");
        }
        let store = Store::open(&path, 1 << 20).unwrap();
        assert_counts(&store, 3, 3);
    }

    #[tokio::test]
    async fn wrong_or_missing_kept_counts_are_recounted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        store
            .insert(&[memory(1, "a"), memory(2, "a")], &[])
            .await
            .unwrap();

        // A store from before the counts were kept has none.
        store.meta.remove(COUNTS_KEY).unwrap();
        assert_eq!(store.reconcile_counts().unwrap(), Some(Counts::default()));
        assert_counts(&store, 2, 0);

        // Wrong ones are reported and replaced.
        let wrong = Counts {
            memories: 7,
            tombstones: 1,
        };
        store.meta.insert(COUNTS_KEY, &wrong.encode()).unwrap();
        assert_eq!(store.reconcile_counts().unwrap(), Some(wrong));
        assert_counts(&store, 2, 0);

        // Unreadable ones make reads fail with a clear error rather than a guess.
        store.meta.insert(COUNTS_KEY, b"xyz").unwrap();
        let error = store.counts().unwrap_err().to_string();
        assert!(error.contains("meta/counts"), "{error}");
    }

    #[tokio::test]
    async fn a_store_of_another_format_is_refused_and_a_new_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        store.check_format().unwrap();
        store.insert(&[memory(1, "a")], &[]).await.unwrap();
        store.check_format().unwrap();

        // Data without the marker: an agent from before the bodies-by-hash format.
        store.meta.remove(FORMAT_KEY).unwrap();
        let error = store.check_format().unwrap_err().to_string();
        assert!(error.contains("older than the bodies-by-hash format"), "{error}");
        store.meta.insert(FORMAT_KEY, &[9]).unwrap();
        let error = store.check_format().unwrap_err().to_string();
        assert!(error.contains("meta/format"), "{error}");
    }
}
