//! The simplest driver-side body store: bodies in a map in RAM. For drivers that keep nothing
//! on disk (test harnesses, benchmarks, tools); the agent keeps bodies in its database and the
//! manager in its bucket, under the same rules this follows.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::{
    engine::{Engine, Event, Persist},
    id::MemoryId,
};

#[derive(Debug, Clone, Default)]
pub struct InMemoryBodies {
    bodies: BTreeMap<MemoryId, Vec<u8>>,
}

impl InMemoryBodies {
    pub fn new() -> Self {
        Self::default()
    }

    /// Does what a driver does after feeding `engine` and before sending what it queued:
    /// keeps the body of every memory shown, erases deleted ones, answers body requests.
    /// Returns the changes to persist and the events, for callers that want them.
    pub fn settle<P: Clone + Ord + Debug>(&mut self, engine: &mut Engine<P>) -> (Vec<Persist>, Vec<Event>) {
        let persists: Vec<Persist> = std::iter::from_fn(|| engine.poll_persist()).collect();
        let events: Vec<Event> = std::iter::from_fn(|| engine.poll_event()).collect();
        for event in &events {
            match event {
                Event::MemoryAdded(record) => {
                    self.bodies.insert(record.id, record.encode());
                }
                Event::MemoryDeleted { id, .. } => {
                    self.bodies.remove(id);
                }
            }
        }
        while let Some(request) = engine.poll_body_request() {
            let held: Vec<Vec<u8>> = request
                .ids
                .iter()
                .filter_map(|id| self.bodies.get(id).cloned())
                .collect();
            engine.answer_bodies(&request.peer, held);
        }
        (persists, events)
    }

    /// Lets these bodies go by a retention policy: dropped here, and the engine told never to
    /// want them again ([`Engine::evict`]).
    pub fn evict<P: Clone + Ord + Debug>(&mut self, engine: &mut Engine<P>, ids: &[MemoryId]) {
        for id in ids {
            self.bodies.remove(id);
        }
        engine.evict(ids.iter().copied());
    }

    pub fn get(&self, id: &MemoryId) -> Option<&[u8]> {
        self.bodies.get(id).map(Vec::as_slice)
    }

    pub fn contains(&self, id: &MemoryId) -> bool {
        self.bodies.contains_key(id)
    }

    /// The ids of the bodies held, in id order.
    pub fn ids(&self) -> impl Iterator<Item = &MemoryId> {
        self.bodies.keys()
    }

    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }
}
