//! The usearch HNSW index over memory vectors: derived data, saved beside the database with a
//! checksum and the store generation it reflects, and rebuilt from sled whenever it is
//! missing, stale or corrupt.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
};

use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::{
    error::{AgentError, Result},
    fsutil::write_atomically,
};

const INDEX_FILE: &str = "index.usearch";
const META_FILE: &str = "index.meta.json";
const SEAL_CONTEXT: &[u8] = b"murmur-agent index";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    F32,
    /// Half the memory of f32 with no measurable recall loss on unit vectors (the default).
    #[default]
    F16,
    /// A quarter of f32's memory; some recall loss.
    I8,
}

impl Quantization {
    fn scalar_kind(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    pub quantization: Quantization,
    /// HNSW graph degree (usearch "connectivity", M).
    pub connectivity: usize,
    /// Candidate list size while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidate list size while searching (ef); raised to k when k is larger.
    pub expansion_search: usize,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            quantization: Quantization::default(),
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 96,
        }
    }
}

/// What the saved index claims to be; checked before the index is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexMeta {
    format: u32,
    generation: u64,
    model_id: String,
    dimensions: usize,
    settings: IndexSettings,
    size: usize,
    bytes: u64,
    crc32: u32,
    /// The store's change mark at `generation` (0: saved by an agent that kept none): what a
    /// start catches a stale index up from instead of rebuilding it.
    #[serde(default)]
    change_mark: u64,
}

/// Where in the store's history a saved index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePoint {
    pub generation: u64,
    /// [`crate::store::Store::change_mark`], taken with `generation`.
    pub change_mark: u64,
}

/// A saved index that loaded, current or behind the store.
pub struct LoadedIndex {
    pub index: VectorIndex,
    /// The change mark it was saved at, where the store has moved on since: the memories
    /// labelled after it are missing and the deletes since are still in it.
    pub behind_since: Option<u64>,
}

pub struct VectorIndex {
    index: RwLock<Index>,
    dimensions: usize,
    settings: IndexSettings,
    /// The stored bytes of removed vectors whose slots may not be reused yet. usearch only
    /// marks a removed vector's slot free (its compaction reorders slots, it keeps them all), so
    /// the vector stays in RAM and in every saved file until an add reuses the slot; a save
    /// overwrites these rows in what it writes, so a deleted memory's vector never outlives
    /// the next save on disk.
    removed: Mutex<HashSet<Vec<u8>>>,
}

fn index_error<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> AgentError + '_ {
    move |e| AgentError::Index(format!("{context}: {e}"))
}

impl VectorIndex {
    pub fn new(dimensions: usize, settings: IndexSettings) -> Result<Self> {
        let index =
            Index::new(&Self::options(dimensions, &settings)).map_err(index_error("creating index"))?;
        index.reserve(1024).map_err(index_error("reserving"))?;
        Ok(Self {
            index: RwLock::new(index),
            dimensions,
            settings,
            removed: Mutex::new(HashSet::new()),
        })
    }

    fn options(dimensions: usize, settings: &IndexSettings) -> IndexOptions {
        IndexOptions {
            dimensions,
            metric: MetricKind::Cos,
            quantization: settings.quantization.scalar_kind(),
            connectivity: settings.connectivity,
            expansion_add: settings.expansion_add,
            expansion_search: settings.expansion_search,
            multi: false,
        }
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn settings(&self) -> IndexSettings {
        self.settings
    }

    pub fn len(&self) -> usize {
        self.read().size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.read().memory_usage()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, label: u64, vector: &[f32]) -> Result<()> {
        let index = self.write();
        if index.contains(label) {
            return Ok(());
        }
        if index.size() + 1 > index.capacity() {
            let grown = (index.capacity() * 2).max(1024);
            index.reserve(grown).map_err(index_error("growing"))?;
        }
        index.add(label, vector).map_err(index_error("adding"))?;
        // A live vector equal to a removed one (the same text written again) must not be
        // overwritten in saved files: nothing of the deleted memory is left that it does not
        // already show.
        let mut removed = self.removed_rows();
        if !removed.is_empty()
            && let Some(stored) = self.stored_bytes(&index, label)?
        {
            removed.remove(&stored);
        }
        Ok(())
    }

    pub fn contains(&self, label: u64) -> bool {
        self.read().contains(label)
    }

    pub fn remove(&self, label: u64) -> Result<()> {
        let index = self.write();
        let stored = self.stored_bytes(&index, label)?;
        index.remove(label).map_err(index_error("removing"))?;
        if let Some(stored) = stored {
            self.removed_rows().insert(stored);
        }
        Ok(())
    }

    fn removed_rows(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.removed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes usearch keeps for `label`'s vector (its quantised form), if it holds one.
    fn stored_bytes(&self, index: &Index, label: u64) -> Result<Option<Vec<u8>>> {
        let dims = self.dimensions;
        let (found, bytes) = match self.settings.quantization {
            Quantization::F32 => {
                let mut v = vec![0f32; dims];
                let found = index.get(label, &mut v).map_err(index_error("reading"))?;
                (found, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            Quantization::F16 => {
                let mut v = vec![0i16; dims];
                let found = index
                    .get(label, usearch::f16::from_mut_i16s(&mut v))
                    .map_err(index_error("reading"))?;
                (found, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            Quantization::I8 => {
                let mut v = vec![0i8; dims];
                let found = index.get(label, &mut v).map_err(index_error("reading"))?;
                (found, v.iter().map(|x| x.to_le_bytes()[0]).collect())
            }
        };
        Ok((found > 0).then_some(bytes))
    }

    /// A unit vector in the index's stored form: what overwrites a removed vector's row in a
    /// saved file. The graph still routes through removed nodes, so their rows must stay
    /// finite vectors, not zeros (a zero vector has no cosine).
    fn placeholder_row(&self) -> Vec<u8> {
        let (one, width): (&[u8], usize) = match self.settings.quantization {
            Quantization::F32 => (&[0x00, 0x00, 0x80, 0x3f], 4),
            Quantization::F16 => (&[0x00, 0x3c], 2),
            Quantization::I8 => (&[0x7f], 1),
        };
        let mut row = vec![0u8; self.dimensions * width];
        row[..width].copy_from_slice(one);
        row
    }

    /// Overwrites, in a serialised index, the rows of removed vectors (usearch's layout: u32
    /// rows, u32 bytes per row, then the rows), and forgets those whose slots were reused.
    fn scrub_removed(&self, buffer: &mut [u8]) -> Result<usize> {
        let mut removed = self.removed_rows();
        if removed.is_empty() {
            return Ok(0);
        }
        let placeholder = self.placeholder_row();
        let header = |at: usize| {
            buffer
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let (Some(rows), Some(width)) = (header(0), header(4)) else {
            return Err(AgentError::Index(
                "a serialised index shorter than its header".into(),
            ));
        };
        let (rows, width) = (rows as usize, width as usize);
        if width != placeholder.len() || buffer.len() < 8 + rows * width {
            return Err(AgentError::Index(format!(
                "unexpected serialised index layout ({rows} rows of {width} bytes, expected {} bytes)",
                placeholder.len()
            )));
        }
        let mut found = HashSet::new();
        for row in buffer[8..8 + rows * width].chunks_exact_mut(width) {
            if removed.contains(&*row) {
                found.insert(row.to_vec());
                row.copy_from_slice(&placeholder);
            }
        }
        let scrubbed = found.len();
        tracing::debug!(scrubbed, rows, "removed vectors overwritten in the saved index");
        removed.retain(|row| found.contains(row));
        Ok(scrubbed)
    }

    /// Approximate top-`k` by cosine similarity, as (label, similarity), best first; only
    /// labels `accept` returns true for.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        accept: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let run = |index: &Index| -> Result<Vec<(u64, f32)>> {
            if index.size() == 0 {
                return Ok(Vec::new());
            }
            let matches = match accept {
                Some(accept) => index.filtered_search(query, k, accept),
                None => index.search(query, k),
            }
            .map_err(index_error("searching"))?;
            Ok(matches
                .keys
                .into_iter()
                .zip(matches.distances)
                .map(|(label, distance)| (label, 1.0 - distance))
                .collect())
        };
        if k <= self.settings.expansion_search {
            return run(&self.read());
        }
        // usearch's ef must be at least k to return k results. ef is index-wide state, so a
        // search that needs a larger one runs alone and puts the setting back.
        let index = self.write();
        index.change_expansion_search(k);
        let result = run(&index);
        index.change_expansion_search(self.settings.expansion_search);
        result
    }

    /// Writes the index and its meta atomically (temp files, fsync, rename), with no removed
    /// vector in what it writes.
    /// With `sealer`, the file on disk is the sealed serialisation (meta's size and CRC are the
    /// file's).
    pub fn save(
        &self,
        dir: &Path,
        at: StorePoint,
        model_id: &str,
        sealer: Option<&murmur_at_rest::Sealer>,
    ) -> Result<()> {
        let index = self.read();
        let mut buffer = vec![0u8; index.serialized_length()];
        index
            .save_to_buffer(&mut buffer)
            .map_err(index_error("serialising"))?;
        self.scrub_removed(&mut buffer)?;
        if let Some(sealer) = sealer {
            buffer = sealer
                .seal(&buffer, SEAL_CONTEXT)
                .map_err(|e| AgentError::AtRest(format!("sealing the index: {e}")))?;
        }
        let meta = IndexMeta {
            format: FORMAT,
            generation: at.generation,
            model_id: model_id.to_string(),
            dimensions: self.dimensions,
            settings: self.settings,
            size: index.size(),
            bytes: buffer.len() as u64,
            crc32: crc32fast::hash(&buffer),
            change_mark: at.change_mark,
        };
        drop(index);
        let meta_json = serde_json::to_vec_pretty(&meta).map_err(index_error("describing"))?;
        write_atomically(&dir.join(INDEX_FILE), &buffer, 0o644)?;
        write_atomically(&dir.join(META_FILE), &meta_json, 0o644)?;
        Ok(())
    }

    /// Loads the saved index if it is intact and built with these settings, either at exactly
    /// `generation` of the store or at an older one with a change mark to catch up from;
    /// otherwise says why not, so the caller rebuilds.
    pub fn load(
        dir: &Path,
        dimensions: usize,
        settings: IndexSettings,
        generation: u64,
        model_id: &str,
        sealer: Option<&murmur_at_rest::Sealer>,
    ) -> Result<LoadedIndex, String> {
        let meta_path = dir.join(META_FILE);
        let meta_bytes = fs::read(&meta_path).map_err(|e| format!("no index meta ({e})"))?;
        let meta: IndexMeta =
            serde_json::from_slice(&meta_bytes).map_err(|e| format!("index meta unreadable: {e}"))?;
        let expected = (FORMAT, model_id, dimensions, settings);
        let found = (
            meta.format,
            meta.model_id.as_str(),
            meta.dimensions,
            meta.settings,
        );
        if expected != found {
            return Err(format!(
                "index is built differently: expected {expected:?}, found {found:?}"
            ));
        }
        let behind_since = match meta.generation.cmp(&generation) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Less if meta.change_mark > 0 => Some(meta.change_mark),
            _ => {
                return Err(format!(
                    "index is stale: saved at generation {}, the store is at {generation}",
                    meta.generation
                ));
            }
        };
        let buffer = fs::read(dir.join(INDEX_FILE)).map_err(|e| format!("index file unreadable: {e}"))?;
        if buffer.len() as u64 != meta.bytes || crc32fast::hash(&buffer) != meta.crc32 {
            return Err("index file does not match its checksum".into());
        }
        let buffer = match sealer {
            Some(sealer) => sealer
                .open(&buffer, SEAL_CONTEXT)
                .map_err(|e| format!("index file does not open with the key: {e}"))?,
            None => buffer,
        };
        let index = Index::new(&Self::options(dimensions, &settings)).map_err(|e| e.to_string())?;
        index
            .load_from_buffer(&buffer)
            .map_err(|e| format!("index file rejected: {e}"))?;
        if index.size() != meta.size || index.dimensions() != dimensions {
            return Err("index contents disagree with its meta".into());
        }
        Ok(LoadedIndex {
            index: Self {
                index: RwLock::new(index),
                dimensions,
                settings,
                removed: Mutex::new(HashSet::new()),
            },
            behind_since,
        })
    }

    pub fn file_bytes(dir: &Path) -> u64 {
        fs::metadata(dir.join(INDEX_FILE)).map(|m| m.len()).unwrap_or(0)
    }

    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(INDEX_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims)
            .map(|i| ((seed * dims as u64 + i as u64) as f32 * 12.9898).sin())
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn add_search_remove_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::new(8, IndexSettings::default()).unwrap();
        for label in 0..3000 {
            index.add(label, &unit(label, 8)).unwrap();
        }
        let hits = index.search(&unit(42, 8), 5, None).unwrap();
        assert_eq!(hits[0].0, 42);
        assert!(hits[0].1 > 0.99);
        index.remove(42).unwrap();
        assert!(
            index
                .search(&unit(42, 8), 5, None)
                .unwrap()
                .iter()
                .all(|(l, _)| *l != 42)
        );
        let odd = |label: u64| label % 2 == 1;
        let many = index.search(&unit(7, 8), 500, None).unwrap();
        assert_eq!(many.len(), 500, "k above ef still returns k");
        assert_eq!(
            index.read().expansion_search(),
            IndexSettings::default().expansion_search
        );
        let filtered = index.search(&unit(7, 8), 10, Some(&odd)).unwrap();
        assert_eq!(filtered.len(), 10);
        assert!(filtered.iter().all(|(l, _)| l % 2 == 1));

        // 45's slot stays free (an add reuses the oldest free slot, 42's); 44's vector is
        // written again under a new label, so its bytes stay.
        index.remove(45).unwrap();
        index.remove(44).unwrap();
        index.add(5000, &unit(44, 8)).unwrap();
        let at = |generation, change_mark| StorePoint {
            generation,
            change_mark,
        };
        index.save(dir.path(), at(9, 0), "m", None).unwrap();
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 10, "m", None).is_err(),
            "stale, with no mark to catch up from"
        );
        index.save(dir.path(), at(9, 77), "m", None).unwrap();
        let loaded = VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "m", None).unwrap();
        assert_eq!(loaded.behind_since, None);
        let loaded = loaded.index;
        assert_eq!(loaded.len(), index.len());
        let hits = loaded.search(&unit(44, 8), 1, None).unwrap();
        assert_eq!(hits[0].0, 5000);
        assert!(hits[0].1 > 0.99);
        let hits = loaded.search(&unit(43, 8), 1, None).unwrap();
        assert_eq!(
            hits[0].0, 43,
            "searches through the overwritten rows still find their target"
        );
        let behind = VectorIndex::load(dir.path(), 8, IndexSettings::default(), 10, "m", None).unwrap();
        assert_eq!(
            behind.behind_since,
            Some(77),
            "behind the store: caught up from its mark"
        );
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 8, "m", None).is_err(),
            "ahead of the store"
        );
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "other", None).is_err(),
            "model"
        );

        let mut bytes = fs::read(dir.path().join(INDEX_FILE)).unwrap();
        let f16_bytes = |v: Vec<f32>| -> Vec<u8> {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        };
        let holds = |bytes: &[u8], v: &[u8]| bytes.windows(v.len()).any(|w| w == v);
        assert!(
            holds(&bytes, &f16_bytes(unit(43, 8))),
            "a kept vector is in the file"
        );
        assert!(
            holds(&bytes, &f16_bytes(unit(44, 8))),
            "a re-added vector is in the file"
        );
        assert!(
            !holds(&bytes, &f16_bytes(unit(45, 8))),
            "a removed vector was saved"
        );
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(dir.path().join(INDEX_FILE), &bytes).unwrap();
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "m", None).is_err(),
            "corrupt"
        );
    }
}
