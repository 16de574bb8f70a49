//! The source of truth: memories in sled. Everything else (the vector index, filter caches)
//! is derived from what is here and can be rebuilt from it.
//!
//! Trees: `memories` (id -> record), `by_namespace` (namespace \0 id -> ()), `labels`
//! (index label -> id), `tombstones` (id -> deletion), `meta` (generation, counts). A write
//! touches them in one sled transaction and is flushed (fsync) before it is acknowledged. The
//! generation counter moves with every write, so a saved index can tell whether it is stale.
//! The counts of live memories and tombstones move in the same transactions, because sled
//! 0.34's `Tree::len()` walks the whole tree and the gauges are read after every write.
//! Retention: `evictable` (namespace \0 id -> body bytes) lists, oldest first, the memories
//! from other authors, which a retention policy may let go (this device's own writes stay:
//! it may be the only holder); `meta` keeps its count and bytes per namespace, moved in the
//! same transactions. `evicted` (id -> namespace) holds what was let go, so the replica never
//! asks for it again.
//! `sync_changes` holds the swarm's CRDT state (murmur-sync's signed changes, key: shard then
//! a unique sequence number) and is written in the same transactions as the memories it
//! describes, so the two never disagree after a crash.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};
use uuid::Uuid;

use murmur_sync::{Persist, SignedChange};

use crate::{
    body_file::{BodyFile, Slot},
    error::{AgentError, Result},
    memory::{Memory, Row, StoredMemory},
};

const GENERATION_KEY: &[u8] = b"generation";
const COUNTS_KEY: &[u8] = b"counts";
const FORMAT_KEY: &[u8] = b"format";
/// The body file's committed length, moved with the rows that point into it.
const BODIES_END_KEY: &[u8] = b"bodies_end";
/// Present while this store may be older than what its identity key signed elsewhere (see
/// `murmur_sync::Engine::set_catching_up`).
const CATCHING_UP_KEY: &[u8] = b"catching_up";
/// Present while the store is closed after a clean stop; taken away at open, so its absence
/// at the next open means the agent stopped without closing (a crash, a kill).
const CLOSED_CLEANLY_KEY: &[u8] = b"closed_cleanly";
/// The fingerprint of the key that seals the bodies, when encryption at rest is on.
const AT_REST_KEY: &[u8] = b"at_rest_key";
/// Set once `evictable` lists every memory from another author (stores from before it kept
/// one are indexed at their first open).
const EVICTABLE_INDEXED_KEY: &[u8] = b"evictable_indexed";
/// Prefix of the per-namespace (count, bytes) of `evictable` in `meta`.
const EVICTABLE_COUNTS_PREFIX: &[u8] = b"evictable/";
/// 4: memory bodies (signed records) in the body file, rows in `memories`, `sync_changes` only
/// entries (sync wire version 2).
const STORE_FORMAT: u8 = 4;

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
    /// Per namespace: evictable memories and their body bytes.
    evictable: BTreeMap<String, (i64, i64)>,
}

/// How many memories from other authors a namespace holds here, and their bodies' bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictable {
    pub count: u64,
    pub bytes: u64,
}

impl Evictable {
    fn encode(self) -> [u8; 16] {
        Counts {
            memories: self.count,
            tombstones: self.bytes,
        }
        .encode()
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        let counts = Counts::decode(bytes).ok_or_else(|| AgentError::CorruptRecord {
            key: key.to_owned(),
            reason: format!("{} bytes, expected 16", bytes.len()),
        })?;
        Ok(Self {
            count: counts.memories,
            bytes: counts.tombstones,
        })
    }
}

fn evictable_counts_key(namespace: &str) -> Vec<u8> {
    [EVICTABLE_COUNTS_PREFIX, namespace.as_bytes()].concat()
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
        for (namespace, (count, bytes)) in &self.evictable {
            let key = evictable_counts_key(namespace);
            let name = format!("meta/evictable/{namespace}");
            let current = match meta.get(&key)? {
                Some(stored) => {
                    Evictable::decode(&name, &stored).map_err(ConflictableTransactionError::Abort)?
                }
                None => Evictable::default(),
            };
            let next = Evictable {
                count: apply(current.count, *count, "evictable memory")?,
                bytes: apply(current.bytes, *bytes, "evictable byte")?,
            };
            if next == Evictable::default() {
                meta.remove(key)?;
            } else {
                meta.insert(key, &next.encode())?;
            }
        }
        Ok(())
    }

    fn evictable(&mut self, namespace: &str, count: i64, bytes: i64) {
        let entry = self.evictable.entry(namespace.to_owned()).or_default();
        entry.0 += count;
        entry.1 += bytes;
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
    evictable: sled::Tree,
    evicted: sled::Tree,
    /// This device's author key (hex): its own memories are never evictable. Set by
    /// [`Store::track_retention`]; until then nothing is listed as evictable.
    own_author: std::sync::OnceLock<String>,
    /// Bodies of deleted memories whose bytes are still in the body file: offset -> length.
    /// Written in the delete's transaction and emptied once the bytes are erased, so a crash
    /// in between erases them at the next open.
    erasures: sled::Tree,
    bodies: BodyFile,
    /// Whether the last run closed this store cleanly ([`Store::close_cleanly`]).
    opened_clean: bool,
}

/// Bodies appended for a write, with the rows that will point to them.
struct Appended<'a> {
    rows: Vec<(&'a StoredMemory, Vec<u8>)>,
    before: u64,
    end: u64,
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
    let current = match meta.get(GENERATION_KEY)? {
        Some(bytes) => decode_u64("meta/generation", &bytes).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let next = current + 1;
    meta.insert(GENERATION_KEY, &next.to_be_bytes())?;
    Ok(next)
}

type TxResult = Result<(), ConflictableTransactionError<AgentError>>;

/// The trees every write of memories touches, inside one transaction.
struct MemoryTrees<'a> {
    memories: &'a TransactionalTree,
    namespaces: &'a TransactionalTree,
    labels: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    evictable: &'a TransactionalTree,
}

impl MemoryTrees<'_> {
    /// Puts the rows of appended memories, their namespace, label and (from other authors)
    /// evictable entries, and the body file's new end; counts the memories new to the store.
    fn put(&self, appended: &Appended, own_author: Option<&str>, delta: &mut CountDelta) -> TxResult {
        for (stored, row) in &appended.rows {
            let memory = &stored.memory;
            let key = memory.id.as_bytes();
            if self.memories.insert(key.as_slice(), row.as_slice())?.is_none() {
                delta.memories += 1;
                if own_author.is_some_and(|own| own != memory.author) {
                    let len = stored.record.len() as u32;
                    self.evictable
                        .insert(namespace_key(&memory.namespace, &memory.id), &len.to_be_bytes())?;
                    delta.evictable(&memory.namespace, 1, i64::from(len));
                }
            }
            self.namespaces
                .insert(namespace_key(&memory.namespace, &memory.id), &[])?;
            self.labels.insert(&memory.label.to_be_bytes(), key.as_slice())?;
        }
        self.meta.insert(BODIES_END_KEY, &appended.end.to_be_bytes())?;
        Ok(())
    }

    /// Takes a held memory's rows out (a delete or an eviction); false when another
    /// transaction took it first.
    fn remove(
        &self,
        id: &Uuid,
        namespace: &str,
        label: u64,
        delta: &mut CountDelta,
    ) -> Result<bool, ConflictableTransactionError<AgentError>> {
        if self.memories.remove(id.as_bytes())?.is_none() {
            return Ok(false);
        }
        delta.memories -= 1;
        let key = namespace_key(namespace, id);
        self.namespaces.remove(key.as_slice())?;
        self.labels.remove(&label.to_be_bytes())?;
        if let Some(len) = self.evictable.remove(key)? {
            let len =
                decode_u32(&format!("evictable/{id}"), &len).map_err(ConflictableTransactionError::Abort)?;
            delta.evictable(namespace, -1, -i64::from(len));
        }
        Ok(true)
    }
}

/// Records inside a delete's transaction that these bodies must be erased.
fn queue_erasures(erasures: &TransactionalTree, slots: &[Slot]) -> TxResult {
    for slot in slots {
        erasures.insert(&slot.offset.to_be_bytes(), &slot.len.to_be_bytes())?;
    }
    Ok(())
}

/// Where the body file of the database at `path` lives: beside it.
fn body_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("bodies")
}

fn put_rows(tree: &TransactionalTree, rows: &[(Vec<u8>, Vec<u8>)]) -> TxResult {
    for (key, value) in rows {
        tree.insert(key.as_slice(), value.as_slice())?;
    }
    Ok(())
}

/// The next (id, body bytes) of an `evictable` scan.
fn next_evictable(scan: &mut sled::Iter) -> Result<Option<(Uuid, u64)>> {
    let Some(item) = scan.next() else {
        return Ok(None);
    };
    let (key, value) = item?;
    let id = uuid_suffix(&key);
    let len = decode_u32(&format!("evictable/{id}"), &value)?;
    Ok(Some((id, u64::from(len))))
}

/// A stored big-endian u64 (`key` names it in the error). A damaged one is an error, never 0:
/// 0 as the body file's committed end would cut every body off at open, and 0 as an erasure's
/// offset would punch out a live body.
fn decode_u64(key: &str, bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| AgentError::CorruptRecord {
            key: key.to_owned(),
            reason: format!("{} bytes, expected 8", bytes.len()),
        })
}

fn decode_u32(key: &str, bytes: &[u8]) -> Result<u32> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| AgentError::CorruptRecord {
            key: key.to_owned(),
            reason: format!("{} bytes, expected 4", bytes.len()),
        })
}

fn flatten(error: TransactionError<AgentError>) -> AgentError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => AgentError::Storage(e),
    }
}

impl Store {
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Self> {
        Self::open_sealed(path, cache_capacity_bytes, None)
    }

    /// Opens the store with encryption at rest when `sealer` is given. The store keeps the
    /// key's fingerprint, so a start with another key, with none, or with a key over bodies
    /// written in the clear is refused before anything is read.
    pub fn open_sealed(
        path: &Path,
        cache_capacity_bytes: u64,
        sealer: Option<std::sync::Arc<murmur_at_rest::Sealer>>,
    ) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let meta = db.open_tree("meta")?;
        let committed = match meta.get(BODIES_END_KEY)? {
            Some(bytes) => decode_u64("meta/bodies_end", &bytes)?,
            None => 0,
        };
        check_at_rest_key(&db, &meta, committed, sealer.as_deref(), path)?;
        let bodies = BodyFile::open(&body_path(path), committed, sealer)?;
        let opened_clean = meta.remove(CLOSED_CLEANLY_KEY)?.is_some();
        if opened_clean {
            db.flush()?;
        }
        let store = Self {
            memories: db.open_tree("memories")?,
            by_namespace: db.open_tree("by_namespace")?,
            labels: db.open_tree("labels")?,
            tombstones: db.open_tree("tombstones")?,
            sync_changes: db.open_tree("sync_changes")?,
            erasures: db.open_tree("erasures")?,
            evictable: db.open_tree("evictable")?,
            evicted: db.open_tree("evicted")?,
            own_author: std::sync::OnceLock::new(),
            meta,
            bodies,
            db,
            opened_clean,
        };
        store.finish_erasures()?;
        Ok(store)
    }

    /// Erases the bodies that deletes committed but did not get to erase (a crash between).
    fn finish_erasures(&self) -> Result<()> {
        let mut slots = Vec::new();
        for item in self.erasures.iter() {
            let (key, value) = item?;
            let offset = decode_u64("erasures (a key)", &key)?;
            let len = decode_u32(&format!("erasures/{offset}"), &value)?;
            slots.push(Slot { offset, len });
        }
        if !slots.is_empty() {
            tracing::info!(
                bodies = slots.len(),
                "erasing the bodies of deletes a crash interrupted"
            );
            self.erase(&slots)?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Erases bodies whose deletes committed, then forgets them.
    fn erase(&self, slots: &[Slot]) -> Result<()> {
        self.bodies.erase(slots)?;
        for slot in slots {
            self.erasures.remove(slot.offset.to_be_bytes())?;
        }
        Ok(())
    }

    /// Appends the bodies of `memories` this store does not hold yet (a replayed write holds
    /// them already: writing them again would leave a copy a later delete misses).
    fn append<'a>(&self, memories: &'a [StoredMemory]) -> Result<Appended<'a>> {
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(memories.len());
        for stored in memories {
            let id = stored.memory.id;
            if seen.insert(id) && !self.memories.contains_key(id.as_bytes())? {
                fresh.push(stored);
            }
        }
        let before = self.bodies.len();
        let records: Vec<&[u8]> = fresh.iter().map(|m| m.record.as_slice()).collect();
        let (slots, end) = self.bodies.append(&records)?;
        let rows = fresh
            .into_iter()
            .zip(slots)
            .map(|(stored, slot)| (stored, stored.row(slot).encode()))
            .collect();
        Ok(Appended { rows, before, end })
    }

    /// The row of memory `id`, if the store holds it.
    fn row(&self, id: Uuid) -> Result<Option<Row>> {
        self.memories
            .get(id.as_bytes())?
            .map(|bytes| Row::decode(id, &bytes))
            .transpose()
    }

    /// Memory `id` and its row, if the store holds it (each read once).
    fn held(&self, id: Uuid) -> Result<Option<(Memory, Row)>> {
        let Some(row) = self.row(id)? else {
            return Ok(None);
        };
        let body = self.bodies.read(row.slot)?;
        Ok(Some((Memory::decode(id, &row, &body)?, row)))
    }

    /// Reads and checks the body a row points to.
    fn body(&self, id: Uuid, row: &Row) -> Result<Vec<u8>> {
        let body = self.bodies.read(row.slot)?;
        row.check(id, &body)?;
        Ok(body)
    }

    fn memory_from_row(&self, id: Uuid, bytes: &[u8]) -> Result<Memory> {
        let row = Row::decode(id, bytes)?;
        let body = self.bodies.read(row.slot)?;
        Memory::decode(id, &row, &body)
    }

    /// Erases the bodies of deletes that just committed. The delete stands whatever happens
    /// here: if the disk refuses, the erasures stay queued and the next open finishes them.
    fn erase_committed(&self, slots: &[Slot]) {
        if let Err(error) = self.erase(slots) {
            tracing::error!(%error, bodies = slots.len(), "erasing deleted bodies failed; the next start retries");
        }
    }

    /// Refuses a database written in another layout, with a reason a user can act on; marks a
    /// new one with this layout. Called at open, before anything is read. True when the
    /// database is new.
    pub fn check_format(&self) -> Result<bool> {
        match self.meta.get(FORMAT_KEY)?.as_deref() {
            Some([STORE_FORMAT]) => Ok(false),
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
                Ok(true)
            }
        }
    }

    /// Whether this store waits to catch up with its own history from peers.
    pub fn is_catching_up(&self) -> Result<bool> {
        Ok(self.meta.contains_key(CATCHING_UP_KEY)?)
    }

    /// Sets or clears the catching-up mark, durably: set, it survives a crash before the
    /// agent is in sync; cleared only after what made it in sync was stored.
    pub fn set_catching_up(&self, catching_up: bool) -> Result<()> {
        if catching_up {
            self.meta.insert(CATCHING_UP_KEY, &[1])?;
        } else {
            self.meta.remove(CATCHING_UP_KEY)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// A fresh, never reused key for the vector index.
    pub fn next_label(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    pub fn generation(&self) -> Result<u64> {
        match self.meta.get(GENERATION_KEY)? {
            Some(bytes) => decode_u64("meta/generation", &bytes),
            None => Ok(0),
        }
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
        let change_rows = self.change_rows(changes)?;
        let appended = self.append(memories)?;
        let own_author = self.own_author.get().map(String::as_str);
        let committed = (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.meta,
            &self.sync_changes,
            &self.evictable,
        )
            .transaction(
                |(tx_memories, tx_namespaces, tx_labels, tx_meta, tx_changes, tx_evictable)| {
                    let mut delta = CountDelta::default();
                    let trees = MemoryTrees {
                        memories: tx_memories,
                        namespaces: tx_namespaces,
                        labels: tx_labels,
                        meta: tx_meta,
                        evictable: tx_evictable,
                    };
                    trees.put(&appended, own_author, &mut delta)?;
                    put_rows(tx_changes, &change_rows)?;
                    delta.commit(tx_meta)?;
                    bump_generation(tx_meta)
                },
            )
            .map_err(flatten);
        let generation = self.settle_append(committed, &appended)?;
        self.db.flush_async().await?;
        Ok(generation)
    }

    /// After a write's transaction: on failure, takes its bodies back out of the body file.
    fn settle_append(&self, committed: Result<u64>, appended: &Appended) -> Result<u64> {
        if committed.is_err()
            && let Err(error) = self.bodies.rewind(appended.before)
        {
            tracing::warn!(%error, "taking back the bodies of a failed write");
        }
        committed
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
        let mut removed = Vec::new();
        let mut erased = Vec::new();
        let mut tombstone_rows = Vec::with_capacity(deletes.len());
        for (id, deleted_at_ms) in deletes {
            let label = match self.held(*id)? {
                Some((memory, row)) => {
                    let label = memory.label;
                    removed.push(memory);
                    erased.push(row.slot);
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
        let appended = self.append(inserts)?;
        let own_author = self.own_author.get().map(String::as_str);
        let committed = (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.tombstones,
            &self.meta,
            &self.sync_changes,
            &self.erasures,
            &self.evictable,
            &self.evicted,
        )
            .transaction(
                |(
                    tx_memories,
                    tx_namespaces,
                    tx_labels,
                    tx_tombstones,
                    tx_meta,
                    tx_changes,
                    tx_erasures,
                    tx_evictable,
                    tx_evicted,
                )| {
                    let mut delta = CountDelta::default();
                    let trees = MemoryTrees {
                        memories: tx_memories,
                        namespaces: tx_namespaces,
                        labels: tx_labels,
                        meta: tx_meta,
                        evictable: tx_evictable,
                    };
                    trees.put(&appended, own_author, &mut delta)?;
                    queue_erasures(tx_erasures, &erased)?;
                    for memory in &removed {
                        trees.remove(&memory.id, &memory.namespace, memory.label, &mut delta)?;
                    }
                    for (id, tombstone) in deletes.iter().map(|(id, _)| id).zip(&tombstone_rows) {
                        // A tombstone replaces an eviction: only the delete is remembered.
                        tx_evicted.remove(id.as_bytes())?;
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
            .map_err(flatten);
        let generation = self.settle_append(committed, &appended)?;
        self.db.flush_async().await?;
        self.erase_committed(&erased);
        Ok((removed, generation))
    }

    /// Every persisted sync change, for rebuilding the engine at start.
    pub fn sync_changes(&self) -> Result<Vec<(u16, SignedChange)>> {
        self.raw_changes()
            .map(|item| {
                let (key, shard, value) = item?;
                Ok((shard, decode_change(&key, &value)?))
            })
            .collect()
    }

    /// A mark every sync change stored from now on comes after (sled's ids only grow, across
    /// restarts too): taken under the agent's write lock with a replica snapshot, so
    /// [`Store::sync_changes_since`] gives exactly what the snapshot lacks.
    pub fn change_mark(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// The sync changes stored after `mark` ([`Store::change_mark`]): one range read per
    /// shard, so a start after a snapshot reads only what came since.
    pub fn sync_changes_since(&self, mark: u64, shards: u16) -> Result<Vec<(u16, SignedChange)>> {
        let mut changes = Vec::new();
        for shard in 0..shards {
            let mut from = shard.to_be_bytes().to_vec();
            from.extend_from_slice(&mark.to_be_bytes());
            let range = match shard.checked_add(1) {
                Some(next) => self.sync_changes.range(from..next.to_be_bytes().to_vec()),
                None => self.sync_changes.range(from..),
            };
            for item in range {
                let (key, value) = item?;
                changes.push((shard, decode_change(&key, &value)?));
            }
        }
        Ok(changes)
    }

    /// Every persisted sync change as stored (shard, encoded change), in key order, for a
    /// backup; the caller holds the agent's write lock so none lands meanwhile.
    pub fn for_each_change(&self, mut visit: impl FnMut(u16, &[u8]) -> Result<()>) -> Result<()> {
        for item in self.raw_changes() {
            let (_, shard, value) = item?;
            visit(shard, &value)?;
        }
        Ok(())
    }

    /// The `sync_changes` rows in key order: key, the shard it names, the encoded change.
    fn raw_changes(&self) -> impl Iterator<Item = Result<(sled::IVec, u16, sled::IVec)>> + '_ {
        self.sync_changes.iter().map(|item| {
            let (key, value) = item?;
            let shard = key
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| corrupt_change(&key, "short key".into()))?;
            Ok((key, shard, value))
        })
    }

    /// The ids of every live memory, in id order (16 bytes each: a million is 16 MB).
    pub fn live_ids(&self) -> Result<Vec<Uuid>> {
        self.memories
            .iter()
            .keys()
            .map(|key| Ok(uuid_suffix(&key?)))
            .collect()
    }

    /// Replaces a memory with its tombstone, durably. Returns what was deleted.
    pub async fn delete(&self, id: Uuid, now_ms: u64, changes: &[Persist]) -> Result<(Memory, u64)> {
        let (memory, row) = match self.held(id)? {
            Some(held) => held,
            None if self.tombstones.contains_key(id.as_bytes())? => {
                return Err(AgentError::Deleted(id.to_string()));
            }
            None => return Err(AgentError::NotFound(id.to_string())),
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
            &self.erasures,
            &self.evictable,
        )
            .transaction(
                |(
                    tx_memories,
                    tx_namespaces,
                    tx_labels,
                    tx_tombstones,
                    tx_meta,
                    tx_changes,
                    tx_erasures,
                    tx_evictable,
                )| {
                    let trees = MemoryTrees {
                        memories: tx_memories,
                        namespaces: tx_namespaces,
                        labels: tx_labels,
                        meta: tx_meta,
                        evictable: tx_evictable,
                    };
                    let mut delta = CountDelta::default();
                    if !trees.remove(&id, &memory.namespace, memory.label, &mut delta)? {
                        // Deleted concurrently by another request.
                        return Err(ConflictableTransactionError::Abort(AgentError::Deleted(
                            id.to_string(),
                        )));
                    }
                    queue_erasures(tx_erasures, &[row.slot])?;
                    if tx_tombstones
                        .insert(id.as_bytes(), tombstone_bytes.as_slice())?
                        .is_none()
                    {
                        delta.tombstones += 1;
                    }
                    put_rows(tx_changes, &change_rows)?;
                    delta.commit(tx_meta)?;
                    bump_generation(tx_meta)
                },
            )
            .map_err(flatten)?;
        self.db.flush_async().await?;
        self.erase_committed(&[row.slot]);
        Ok((memory, generation))
    }

    pub fn get(&self, id: Uuid) -> Result<Lookup> {
        if let Some(bytes) = self.memories.get(id.as_bytes())? {
            return Ok(Lookup::Found(self.memory_from_row(id, &bytes)?));
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
        match self.row(id)? {
            Some(row) => Ok(Some(self.body(id, &row)?)),
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
                    self.memory_from_row(uuid_suffix(&key), &value)
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
            self.memory_from_row(uuid_suffix(&key), &value)
        })
    }

    /// Reads every stored body and checks it against its row's checksum, decoding nothing:
    /// what a start does when it needs nothing else from the memories, so a damaged store is
    /// still named before anything is served. Returns how many bodies it checked.
    pub fn verify_bodies(&self) -> Result<u64> {
        let mut checked = 0;
        for item in self.memories.iter() {
            let (key, value) = item?;
            let id = uuid_suffix(&key);
            let row = Row::decode(id, &value)?;
            row.check(id, &self.bodies.read(row.slot)?)?;
            checked += 1;
        }
        Ok(checked)
    }

    /// The memories whose index labels come after `mark` (labels and change marks come from
    /// one generator): what a start adds to an index or filter facts saved at that mark.
    pub fn memories_labelled_after(&self, mark: u64) -> impl Iterator<Item = Result<Memory>> + '_ {
        self.labels
            .range(mark.saturating_add(1).to_be_bytes()..)
            .map(|item| {
                let (label, id) = item?;
                let corrupt = |reason: &str| AgentError::CorruptRecord {
                    key: format!("labels/{}", hex::encode(&label)),
                    reason: reason.into(),
                };
                let id = Uuid::from_slice(&id).map_err(|_| corrupt("not a memory id"))?;
                match self.get(id)? {
                    Lookup::Found(memory) => Ok(memory),
                    _ => Err(corrupt("names a memory this store does not hold")),
                }
            })
    }

    /// The index labels of every deleted memory this store held: what a start removes from an
    /// index or filter facts saved before the deletes. One read of the tombstones.
    pub fn tombstoned_labels(&self) -> Result<Vec<u64>> {
        let mut labels = Vec::new();
        for item in self.tombstones.iter() {
            let (key, value) = item?;
            let tombstone: Tombstone =
                postcard::from_bytes(&value).map_err(|e| AgentError::CorruptRecord {
                    key: format!("tombstones/{}", uuid_suffix(&key)),
                    reason: e.to_string(),
                })?;
            // u64::MAX: deleted before it arrived here, so it never had a label.
            if tombstone.label != u64::MAX {
                labels.push(tombstone.label);
            }
        }
        Ok(labels)
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

    /// Counts by walking the trees: at an open after an unclean stop, to check the kept counts
    /// (or to write them for a store made before they were kept).
    pub fn count_by_scan(&self) -> Result<Counts> {
        Ok(Counts {
            memories: self.memories.len() as u64,
            tombstones: self.tombstones.len() as u64,
        })
    }

    /// Makes the kept counts agree with the trees; returns what they said before, when they
    /// said something else. Called at open, before any write.
    /// Skipped after a clean stop: the counts move in every write's transaction, and the walk
    /// costs a start time that grows with the store.
    pub fn reconcile_counts(&self) -> Result<Option<Counts>> {
        if self.opened_clean {
            return Ok(None);
        }
        let scanned = self.count_by_scan()?;
        let kept = self.meta.get(COUNTS_KEY)?.and_then(|b| Counts::decode(&b));
        if kept == Some(scanned) {
            return Ok(None);
        }
        self.meta.insert(COUNTS_KEY, &scanned.encode())?;
        self.db.flush()?;
        // A new, empty store has no counts yet: nothing to report.
        if kept.is_none() && scanned == Counts::default() {
            return Ok(None);
        }
        Ok(Some(kept.unwrap_or_default()))
    }

    /// Names this device's author key, whose memories are never evictable, and lists every
    /// memory from another author as evictable if this store has no such list yet (one made
    /// before retention existed): one pass over the memories, at that first open only.
    pub fn track_retention(&self, own_author: &str) -> Result<()> {
        let _ = self.own_author.set(own_author.to_owned());
        if self.meta.contains_key(EVICTABLE_INDEXED_KEY)? {
            return Ok(());
        }
        self.evictable.clear()?;
        for item in self.meta.scan_prefix(EVICTABLE_COUNTS_PREFIX).keys() {
            self.meta.remove(item?)?;
        }
        let mut counts: BTreeMap<String, Evictable> = Default::default();
        for item in self.memories.iter() {
            let (key, value) = item?;
            let id = uuid_suffix(&key);
            let row = Row::decode(id, &value)?;
            let body = self.bodies.read(row.slot)?;
            let memory = Memory::decode(id, &row, &body)?;
            if memory.author == own_author {
                continue;
            }
            let len = body.len() as u32;
            self.evictable
                .insert(namespace_key(&memory.namespace, &id), &len.to_be_bytes())?;
            let count = counts.entry(memory.namespace).or_default();
            count.count += 1;
            count.bytes += u64::from(len);
        }
        for (namespace, count) in &counts {
            self.meta
                .insert(evictable_counts_key(namespace), &count.encode())?;
        }
        self.meta.insert(EVICTABLE_INDEXED_KEY, &[1])?;
        self.db.flush()?;
        if !counts.is_empty() {
            tracing::info!(
                namespaces = counts.len(),
                memories = counts.values().map(|c| c.count).sum::<u64>(),
                "listed the memories from other devices that retention may evict"
            );
        }
        Ok(())
    }

    /// Memories from other authors in `namespace` and their bodies' bytes: no scan.
    pub fn evictable(&self, namespace: &str) -> Result<Evictable> {
        match self.meta.get(evictable_counts_key(namespace))? {
            Some(bytes) => Evictable::decode(&format!("meta/evictable/{namespace}"), &bytes),
            None => Ok(Evictable::default()),
        }
    }

    /// Every namespace with evictable memories, with their counts (one entry per namespace).
    pub fn evictable_namespaces(&self) -> Result<Vec<(String, Evictable)>> {
        self.meta
            .scan_prefix(EVICTABLE_COUNTS_PREFIX)
            .map(|item| {
                let (key, value) = item?;
                let namespace = String::from_utf8_lossy(&key[EVICTABLE_COUNTS_PREFIX.len()..]).into_owned();
                let counts = Evictable::decode(&format!("meta/evictable/{namespace}"), &value)?;
                Ok((namespace, counts))
            })
            .collect()
    }

    /// Body bytes of every evictable memory, from the per-namespace counts.
    pub fn evictable_bytes(&self) -> Result<u64> {
        Ok(self
            .evictable_namespaces()?
            .iter()
            .map(|(_, held)| held.bytes)
            .sum())
    }

    /// The evictable memories of `namespace`, oldest first, for as long as `take` says yes to
    /// each (id, body bytes): reads only what it returns and one entry more.
    pub fn oldest_evictable(
        &self,
        namespace: &str,
        mut take: impl FnMut(Uuid, u64) -> bool,
    ) -> Result<Vec<Uuid>> {
        let mut oldest = self.evictable_in(namespace);
        let mut ids = Vec::new();
        while let Some((id, len)) = next_evictable(&mut oldest)? {
            if !take(id, len) {
                break;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// As [`Store::oldest_evictable`], over every namespace at once: the oldest of all comes
    /// first (ids begin with their creation time). Returns the ids by namespace.
    pub fn oldest_evictable_anywhere(
        &self,
        mut take: impl FnMut(Uuid, u64) -> bool,
    ) -> Result<BTreeMap<String, Vec<Uuid>>> {
        let mut heads = Vec::new();
        for (namespace, _) in self.evictable_namespaces()? {
            let mut oldest = self.evictable_in(&namespace);
            if let Some(head) = next_evictable(&mut oldest)? {
                heads.push((head, namespace, oldest));
            }
        }
        let mut taken: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
        while let Some(at) = (0..heads.len()).min_by_key(|&i| heads[i].0.0) {
            let ((id, len), namespace, oldest) = &mut heads[at];
            if !take(*id, *len) {
                break;
            }
            taken.entry(namespace.clone()).or_default().push(*id);
            match next_evictable(oldest)? {
                Some(next) => heads[at].0 = next,
                None => {
                    heads.swap_remove(at);
                }
            }
        }
        Ok(taken)
    }

    fn evictable_in(&self, namespace: &str) -> sled::Iter {
        let mut prefix = namespace.as_bytes().to_vec();
        prefix.push(0);
        self.evictable.scan_prefix(prefix)
    }

    /// Lets held memories of `namespace` go by a retention policy, durably: their bodies are
    /// erased as a delete's are, but no tombstone is written; `evicted` remembers them so the
    /// replica never asks for them again. Returns the index labels of those it let go (one
    /// not held any more is skipped).
    pub async fn evict(&self, namespace: &str, ids: &[Uuid]) -> Result<Vec<u64>> {
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.row(*id)? {
                rows.push((*id, row));
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let slots: Vec<Slot> = rows.iter().map(|(_, row)| row.slot).collect();
        (
            &self.memories,
            &self.by_namespace,
            &self.labels,
            &self.meta,
            &self.evictable,
            &self.evicted,
            &self.erasures,
        )
            .transaction(
                |(tx_memories, tx_namespaces, tx_labels, tx_meta, tx_evictable, tx_evicted, tx_erasures)| {
                    let trees = MemoryTrees {
                        memories: tx_memories,
                        namespaces: tx_namespaces,
                        labels: tx_labels,
                        meta: tx_meta,
                        evictable: tx_evictable,
                    };
                    let mut delta = CountDelta::default();
                    for (id, row) in &rows {
                        trees.remove(id, namespace, row.label, &mut delta)?;
                        tx_evicted.insert(id.as_bytes(), namespace.as_bytes())?;
                    }
                    queue_erasures(tx_erasures, &slots)?;
                    delta.commit(tx_meta)?;
                    bump_generation(tx_meta).map(|_| ())
                },
            )
            .map_err(flatten)?;
        self.db.flush_async().await?;
        self.erase_committed(&slots);
        Ok(rows.iter().map(|(_, row)| row.label).collect())
    }

    /// Every memory retention let go and no delete has replaced, for the replica at start.
    pub fn evicted_ids(&self) -> Result<Vec<Uuid>> {
        self.evicted
            .iter()
            .keys()
            .map(|key| Ok(uuid_suffix(&key?)))
            .collect()
    }

    /// The database's and the body file's bytes on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()? + self.bodies.disk_bytes())
    }

    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes and marks the store closed cleanly: the last step of a clean stop. A write
    /// after it would still be counted right; only the next open's check is skipped.
    pub async fn close_cleanly(&self) -> Result<()> {
        self.meta.insert(CLOSED_CLEANLY_KEY, &[1])?;
        self.flush().await
    }
}

/// Refuses a key that does not match the store (see [`Store::open_sealed`]); marks a new store
/// with the key it is given.
fn check_at_rest_key(
    db: &sled::Db,
    meta: &sled::Tree,
    committed_bodies: u64,
    sealer: Option<&murmur_at_rest::Sealer>,
    path: &Path,
) -> Result<()> {
    let marked = meta.get(AT_REST_KEY)?;
    let marked = marked.as_deref().map(String::from_utf8_lossy);
    match (marked, sealer) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(AgentError::AtRest(format!(
            "the store {} is encrypted at rest: give its key ([encryption] key_file, \
             --encryption-key-file or {})",
            path.display(),
            murmur_at_rest::KEY_ENV
        ))),
        (Some(marked), Some(sealer)) if marked == sealer.fingerprint() => Ok(()),
        (Some(marked), Some(sealer)) => Err(AgentError::AtRest(format!(
            "the store {} was encrypted with the key of fingerprint {marked}; the key given has \
             fingerprint {}",
            path.display(),
            sealer.fingerprint()
        ))),
        (None, Some(sealer)) => {
            if committed_bodies > 0 || !db.open_tree("memories")?.is_empty() {
                return Err(AgentError::AtRest(format!(
                    "the store {} holds memories written without encryption: to encrypt them, take \
                     a backup and restore it with the key (docs/agent.md, Encryption at rest)",
                    path.display()
                )));
            }
            meta.insert(AT_REST_KEY, sealer.fingerprint().as_bytes())?;
            db.flush()?;
            Ok(())
        }
    }
}

fn decode_change(key: &[u8], value: &[u8]) -> Result<SignedChange> {
    SignedChange::decode(value).map_err(|e| corrupt_change(key, e.to_string()))
}

fn corrupt_change(key: &[u8], reason: String) -> AgentError {
    AgentError::CorruptRecord {
        key: format!("sync_changes/{}", hex::encode(key)),
        reason,
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
        // A new store has nothing to report, and keeps the counts from then on.
        store.meta.remove(COUNTS_KEY).unwrap();
        assert_eq!(store.reconcile_counts().unwrap(), None);
        assert!(store.meta.get(COUNTS_KEY).unwrap().is_some());
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

    /// Opens a store holding two bodies, lets `damage` write through its trees, reopens it and
    /// returns the error, checking that the failed open left the body file as it was.
    async fn reopen_after(damage: impl FnOnce(&Store)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path, 1 << 20).unwrap();
        store
            .insert(&[memory(1, "a"), memory(2, "a")], &[])
            .await
            .unwrap();
        let held = std::fs::read(body_path(&path)).unwrap();
        assert!(!held.is_empty());
        damage(&store);
        store.db.flush().unwrap();
        drop(store);
        let error = Store::open(&path, 1 << 20)
            .err()
            .expect("a damaged store opened")
            .to_string();
        assert_eq!(
            std::fs::read(body_path(&path)).unwrap(),
            held,
            "the open changed the body file"
        );
        error
    }

    #[tokio::test]
    async fn a_damaged_stored_number_stops_the_open_and_cuts_no_body() {
        // The body file's committed end, one byte short: read as 0 it would cut off every body.
        let error = reopen_after(|store| {
            store.meta.insert(BODIES_END_KEY, &[0; 7]).unwrap();
        })
        .await;
        assert!(error.contains("meta/bodies_end"), "{error}");

        // An erasure whose offset is damaged: read as 0 it would punch out the first body.
        let error = reopen_after(|store| {
            store.erasures.insert([0; 3], &8u32.to_be_bytes()).unwrap();
        })
        .await;
        assert!(error.contains("erasures"), "{error}");
    }

    #[tokio::test]
    async fn a_store_of_another_format_is_refused_and_a_new_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        assert!(store.check_format().unwrap(), "a new store says it is new");
        store.insert(&[memory(1, "a")], &[]).await.unwrap();
        assert!(!store.check_format().unwrap(), "an existing store is not new");

        // Data without the marker: an agent from before the bodies-by-hash format.
        store.meta.remove(FORMAT_KEY).unwrap();
        let error = store.check_format().unwrap_err().to_string();
        assert!(error.contains("older than the bodies-by-hash format"), "{error}");
        store.meta.insert(FORMAT_KEY, &[9]).unwrap();
        let error = store.check_format().unwrap_err().to_string();
        assert!(error.contains("meta/format"), "{error}");
    }
}
