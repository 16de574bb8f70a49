//! What the manager shows and exports: the memories it holds durably, the agents it knows and
//! how the swarm grew. Updated only after the changes behind it are in the bucket, so nothing
//! shown or exported can be lost by a crash.

use std::collections::{BTreeMap, HashMap, VecDeque};

use murmur_sync::{AuthorKey, MemoryId, MemoryRecord};
use serde::{Deserialize, Serialize};

/// Samples kept for the growth chart (one per `SAMPLE_EVERY_MS`: a day at 10 s).
const MAX_HISTORY: usize = 8640;
pub const SAMPLE_EVERY_MS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct Deletion {
    pub deleter: AuthorKey,
    pub deleted_at_ms: u64,
}

/// What an agent says about itself over its uplink (JSON report frame). Everything optional:
/// older or smaller agents may send less.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentReport {
    pub memories: Option<u64>,
    pub pending_changes: Option<u64>,
    pub listen_addrs: Vec<String>,
    pub peers: Vec<ReportedPeer>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportedPeer {
    /// Hex ed25519 key of the neighbour.
    pub key: String,
    pub relayed: bool,
    pub rtt_ms: Option<f64>,
    pub last_in_sync_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct AgentEntry {
    pub connected: bool,
    pub address: Option<String>,
    pub software: Option<String>,
    pub first_seen_ms: Option<u64>,
    pub last_seen_ms: Option<u64>,
    pub report: Option<AgentReport>,
    pub refused_messages: u64,
}

/// One line of the sync-events table.
#[derive(Debug, Clone)]
pub struct SyncEvent {
    pub at_ms: u64,
    pub agent: AuthorKey,
    pub kind: &'static str,
    pub changes: u64,
    pub bytes: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub live: u64,
    pub deleted: u64,
}

#[derive(Default)]
pub struct View {
    pub memories: HashMap<MemoryId, MemoryRecord>,
    pub deletions: HashMap<MemoryId, Deletion>,
    pub agents: BTreeMap<AuthorKey, AgentEntry>,
    pub history: VecDeque<Sample>,
    pub sync_events: Vec<SyncEvent>,
    /// Bumped on every change to memories or deletions: an export at the same generation
    /// has no memory partition to compare.
    pub generation: u64,
    /// The manager's own key: its operators' memories are not an agent's.
    pub own_key: Option<AuthorKey>,
}

impl View {
    pub fn add(&mut self, record: MemoryRecord) {
        if self.deletions.contains_key(&record.id) {
            return;
        }
        if self.own_key != Some(record.author) {
            self.agents.entry(record.author).or_default();
        }
        self.memories.insert(record.id, record);
        self.generation += 1;
    }

    pub fn delete(&mut self, id: MemoryId, deletion: Deletion) {
        self.memories.remove(&id);
        self.deletions.insert(id, deletion);
        self.generation += 1;
    }

    pub fn sample(&mut self, now_ms: u64) {
        if self
            .history
            .back()
            .is_some_and(|s| now_ms < s.t_ms + SAMPLE_EVERY_MS)
        {
            return;
        }
        self.history.push_back(Sample {
            t_ms: now_ms,
            live: self.memories.len() as u64,
            deleted: self.deletions.len() as u64,
        });
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
    }

    pub fn record_event(&mut self, event: SyncEvent) {
        // Bounded: an export that keeps failing must not grow this without end.
        if self.sync_events.len() < 1_000_000 {
            self.sync_events.push(event);
        }
    }

    pub fn authored_counts(&self) -> HashMap<AuthorKey, u64> {
        let mut counts = HashMap::new();
        for record in self.memories.values() {
            *counts.entry(record.author).or_default() += 1;
        }
        counts
    }

    /// Exact cosine search over every live memory embedded with `model_id`.
    pub fn search(&self, model_id: &str, query: &[f32], k: usize) -> (Vec<(f32, &MemoryRecord)>, usize) {
        let mut searched = 0;
        let mut hits: Vec<(f32, &MemoryRecord)> = Vec::new();
        for record in self.memories.values() {
            if record.model_id != model_id || record.dimension() != query.len() {
                continue;
            }
            searched += 1;
            let score = cosine(query, &record.vector_f16);
            if hits.len() < k {
                hits.push((score, record));
                hits.sort_by(|a, b| b.0.total_cmp(&a.0));
            } else if hits.last().is_some_and(|last| score > last.0) {
                hits.pop();
                hits.push((score, record));
                hits.sort_by(|a, b| b.0.total_cmp(&a.0));
            }
        }
        (hits, searched)
    }
}

fn cosine(query: &[f32], vector_f16: &[u8]) -> f32 {
    let mut dot = 0f32;
    let mut norm = 0f32;
    for (q, bytes) in query.iter().zip(vector_f16.chunks_exact(2)) {
        let v = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        dot += q * v;
        norm += v * v;
    }
    if norm == 0.0 { 0.0 } else { dot / norm.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_sync::{MemoryDraft, SigningKey};

    /// `seed` tells records apart: ids come from the engine's seeded nonce.
    fn record(text: &str, vector: Vec<f32>, seed: u64) -> MemoryRecord {
        let mut engine: murmur_sync::Engine<u8> = murmur_sync::Engine::new(
            murmur_sync::Config::default(),
            SigningKey::from_bytes(&[1; 32]),
            seed,
            0,
        )
        .unwrap();
        engine
            .write(
                1,
                &[MemoryDraft {
                    namespace: "default".into(),
                    text: text.into(),
                    metadata_json: "{}".into(),
                    tags: vec![],
                    model_id: "m".into(),
                    vector,
                }],
            )
            .unwrap()
            .remove(0)
    }

    #[test]
    fn search_ranks_by_cosine_and_deletes_hide() {
        let mut view = View::default();
        let north = record("north", vec![0.0, 1.0], 1);
        let east = record("east", vec![1.0, 0.0], 2);
        view.add(north.clone());
        view.add(east.clone());
        let (hits, searched) = view.search("m", &[0.1, 0.9], 1);
        assert_eq!(searched, 2);
        assert_eq!(hits[0].1.text, "north");
        assert!(view.search("other-model", &[0.1, 0.9], 5).0.is_empty());
        view.delete(
            north.id,
            Deletion {
                deleter: north.author,
                deleted_at_ms: 5,
            },
        );
        view.add(north.clone());
        assert_eq!(
            view.search("m", &[0.1, 0.9], 5).0.len(),
            1,
            "a deleted memory stays deleted"
        );
        view.sample(0);
        view.sample(1);
        view.sample(SAMPLE_EVERY_MS);
        assert_eq!(view.history.len(), 2);
    }
}
