//! The usearch HNSW index over memory vectors: derived data, saved beside the database with a
//! checksum and the store generation it reflects, and rebuilt from sled whenever it is
//! missing, stale or corrupt.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::RwLock,
};

use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::{
    error::{AgentError, Result},
    fsutil::write_atomically,
};

const INDEX_FILE: &str = "index.usearch";
const META_FILE: &str = "index.meta.json";
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
}

pub struct VectorIndex {
    index: RwLock<Index>,
    dimensions: usize,
    settings: IndexSettings,
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
        index.add(label, vector).map_err(index_error("adding"))
    }

    pub fn remove(&self, label: u64) -> Result<()> {
        self.write().remove(label).map_err(index_error("removing"))?;
        Ok(())
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

    /// Writes the index and its meta atomically (temp files, fsync, rename).
    pub fn save(&self, dir: &Path, generation: u64, model_id: &str) -> Result<()> {
        let index = self.read();
        let mut buffer = vec![0u8; index.serialized_length()];
        index
            .save_to_buffer(&mut buffer)
            .map_err(index_error("serialising"))?;
        let meta = IndexMeta {
            format: FORMAT,
            generation,
            model_id: model_id.to_string(),
            dimensions: self.dimensions,
            settings: self.settings,
            size: index.size(),
            bytes: buffer.len() as u64,
            crc32: crc32fast::hash(&buffer),
        };
        drop(index);
        let meta_json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_atomically(&dir.join(INDEX_FILE), &buffer, 0o644)?;
        write_atomically(&dir.join(META_FILE), &meta_json, 0o644)?;
        Ok(())
    }

    /// Loads the saved index if it is intact and reflects exactly `generation` of the store
    /// with these settings; otherwise says why not, so the caller rebuilds.
    pub fn load(
        dir: &Path,
        dimensions: usize,
        settings: IndexSettings,
        generation: u64,
        model_id: &str,
    ) -> Result<Self, String> {
        let meta_path = dir.join(META_FILE);
        let meta_bytes = fs::read(&meta_path).map_err(|e| format!("no index meta ({e})"))?;
        let meta: IndexMeta =
            serde_json::from_slice(&meta_bytes).map_err(|e| format!("index meta unreadable: {e}"))?;
        let expected = (FORMAT, generation, model_id, dimensions, settings);
        let found = (
            meta.format,
            meta.generation,
            meta.model_id.as_str(),
            meta.dimensions,
            meta.settings,
        );
        if expected != found {
            return Err(format!(
                "index is stale or built differently: expected {expected:?}, found {found:?}"
            ));
        }
        let buffer = fs::read(dir.join(INDEX_FILE)).map_err(|e| format!("index file unreadable: {e}"))?;
        if buffer.len() as u64 != meta.bytes || crc32fast::hash(&buffer) != meta.crc32 {
            return Err("index file does not match its checksum".into());
        }
        let index = Index::new(&Self::options(dimensions, &settings)).map_err(|e| e.to_string())?;
        index
            .load_from_buffer(&buffer)
            .map_err(|e| format!("index file rejected: {e}"))?;
        if index.size() != meta.size || index.dimensions() != dimensions {
            return Err("index contents disagree with its meta".into());
        }
        Ok(Self {
            index: RwLock::new(index),
            dimensions,
            settings,
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

        index.save(dir.path(), 9, "m").unwrap();
        let loaded = VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "m").unwrap();
        assert_eq!(loaded.len(), index.len());
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 10, "m").is_err(),
            "stale"
        );
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "other").is_err(),
            "model"
        );

        let mut bytes = fs::read(dir.path().join(INDEX_FILE)).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(dir.path().join(INDEX_FILE), &bytes).unwrap();
        assert!(
            VectorIndex::load(dir.path(), 8, IndexSettings::default(), 9, "m").is_err(),
            "corrupt"
        );
    }
}
