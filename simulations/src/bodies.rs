//! The simulated agents' body stores (format `bodies-by-hash`): what a real agent keeps in its
//! `memories` tree. Every node's copy of one memory is the same signed bytes (the entry in the
//! documents binds them by hash), so nodes share one allocation per memory: a swarm of
//! thousands of agents holds each body once, not once per agent.

use std::{collections::HashMap, rc::Rc};

use murmur_sync::{MemoryId, MemoryRecord};

use crate::FixedHasher;

#[derive(Default)]
pub struct BodyShelf {
    /// One shared copy per memory some node holds.
    shared: HashMap<MemoryId, Rc<[u8]>, FixedHasher>,
    held: Vec<HashMap<MemoryId, Rc<[u8]>, FixedHasher>>,
}

impl BodyShelf {
    pub fn new(nodes: usize) -> Self {
        Self {
            shared: HashMap::default(),
            held: (0..nodes).map(|_| HashMap::default()).collect(),
        }
    }

    /// `node` shows `record`: it keeps its body.
    pub fn hold(&mut self, node: usize, record: &MemoryRecord) {
        let body = self
            .shared
            .entry(record.id)
            .or_insert_with(|| record.encode().into())
            .clone();
        self.held[node].insert(record.id, body);
    }

    /// `node` learnt `id` is deleted: its copy is erased.
    pub fn erase(&mut self, node: usize, id: &MemoryId) {
        if self.held[node].remove(id).is_some() {
            self.release(id);
        }
    }

    /// `node` was replaced by an empty device.
    pub fn erase_all(&mut self, node: usize) {
        let ids: Vec<MemoryId> = self.held[node].drain().map(|(id, _)| id).collect();
        for id in &ids {
            self.release(id);
        }
    }

    pub fn holds(&self, node: usize, id: &MemoryId) -> bool {
        self.held[node].contains_key(id)
    }

    /// The bodies `node` holds of `ids`, in their order.
    pub fn answer(&self, node: usize, ids: &[MemoryId]) -> Vec<Vec<u8>> {
        ids.iter()
            .filter_map(|id| self.held[node].get(id).map(|b| b.to_vec()))
            .collect()
    }

    /// Distinct bodies held anywhere, and their bytes.
    pub fn distinct(&self) -> (usize, u64) {
        (
            self.shared.len(),
            self.shared.values().map(|b| b.len() as u64).sum(),
        )
    }

    fn release(&mut self, id: &MemoryId) {
        if self.shared.get(id).is_some_and(|b| Rc::strong_count(b) == 1) {
            self.shared.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_sync::{Config, Engine, MemoryDraft, SigningKey};

    fn records(n: usize) -> Vec<MemoryRecord> {
        let mut engine = Engine::<u32>::new(Config::default(), SigningKey::from_bytes(&[7; 32]), 1, 0)
            .expect("default config");
        let drafts: Vec<MemoryDraft> = (0..n)
            .map(|i| MemoryDraft {
                namespace: "default".into(),
                text: format!("memory {i}"),
                metadata_json: "{}".into(),
                tags: Vec::new(),
                model_id: "m".into(),
                vector: vec![0.5; 4],
            })
            .collect();
        engine.write(0, &drafts).expect("valid drafts")
    }

    #[test]
    fn nodes_share_one_copy_and_erasing_the_last_frees_it() {
        let r = records(2);
        let mut shelf = BodyShelf::new(3);
        for node in 0..3 {
            shelf.hold(node, &r[0]);
        }
        shelf.hold(1, &r[1]);
        assert_eq!(shelf.distinct().0, 2);
        assert_eq!(shelf.answer(2, &[r[1].id, r[0].id]), vec![r[0].encode()]);
        shelf.erase(0, &r[0].id);
        shelf.erase(0, &r[0].id);
        assert!(!shelf.holds(0, &r[0].id) && shelf.holds(1, &r[0].id));
        assert_eq!(shelf.distinct().0, 2);
        shelf.erase(2, &r[0].id);
        shelf.erase_all(1);
        assert_eq!(shelf.distinct(), (0, 0));
        assert!(shelf.answer(1, &[r[0].id, r[1].id]).is_empty());
    }
}
