//! A small in-memory network for driving several engines in tests: virtual time, per-message
//! delay (so reordering), loss, duplication and partitions. The simulator crate is the full
//! model; this is only what the property tests need.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use murmur_sync::{
    Config, Destination, Engine, Event, InMemoryBodies, MemoryDraft, MemoryId, Signatures, SignedChange,
    SigningKey,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

pub struct Replica {
    pub engine: Engine<usize>,
    pub key: SigningKey,
    /// What a driver would hold, built only from events: must equal the engine's view.
    pub shown: BTreeSet<MemoryId>,
    pub persisted: Vec<(u16, SignedChange)>,
    /// The driver's body store: each shown memory's signed record, erased on delete.
    pub bodies: InMemoryBodies,
}

/// (deliver at, sequence for a stable order, from, to, bytes)
type InFlight = (u64, u64, usize, usize, Vec<u8>);

pub struct Net {
    pub replicas: Vec<Replica>,
    pub now: u64,
    pub faults: Faults,
    /// Group of each replica; messages cross only within a group.
    pub groups: Option<Vec<u8>>,
    pub rng: fastrand::Rng,
    inflight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub refused: usize,
    pub bytes_sent: u64,
    /// Every message delivered, as (from, to, bytes), when set: to look for what travelled.
    pub delivered: Option<Vec<(usize, usize, Vec<u8>)>>,
}

pub fn key_for(seed: u64, i: usize) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    secret[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    secret[16] = 0x5a;
    SigningKey::from_bytes(&secret)
}

pub fn draft(rng: &mut fastrand::Rng, dimension: usize) -> MemoryDraft {
    const WORDS: [&str; 8] = [
        "forklift", "battery", "door", "bay", "camera", "low", "open", "pallet",
    ];
    let n = rng.usize(1..8);
    let text: Vec<&str> = (0..n).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
    MemoryDraft {
        namespace: "default".into(),
        text: text.join(" "),
        metadata_json: format!(r#"{{"n":{}}}"#, rng.u32(..1000)),
        tags: vec![WORDS[rng.usize(..WORDS.len())].to_string()],
        model_id: "test-model".into(),
        vector: (0..dimension).map(|_| rng.f32() - 0.5 + 1e-3).collect(),
    }
}

impl Net {
    pub fn new(n: usize, seed: u64, config: Config, faults: Faults) -> Self {
        let replicas = (0..n)
            .map(|i| {
                let key = key_for(seed, i);
                let mut engine = Engine::new(config.clone(), key.clone(), seed ^ (i as u64) << 20, 0)
                    .expect("config is valid");
                for j in 0..n {
                    if j != i {
                        engine.peer_connected(0, j);
                    }
                }
                Replica {
                    engine,
                    key,
                    shown: BTreeSet::new(),
                    persisted: Vec::new(),
                    bodies: InMemoryBodies::new(),
                }
            })
            .collect();
        Self {
            replicas,
            now: 0,
            faults,
            groups: None,
            rng: fastrand::Rng::with_seed(seed),
            inflight: BinaryHeap::new(),
            seq: 0,
            refused: 0,
            bytes_sent: 0,
            delivered: None,
        }
    }

    fn can_reach(&self, from: usize, to: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[from] == g[to])
    }

    fn schedule(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if !self.can_reach(from, to) {
            return;
        }
        if self.rng.u32(..1000) < self.faults.drop_per_mille {
            return;
        }
        let copies = if self.rng.u32(..1000) < self.faults.duplicate_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .u64(self.faults.min_delay_ms..=self.faults.max_delay_ms.max(self.faults.min_delay_ms));
            self.seq += 1;
            self.bytes_sent += bytes.len() as u64;
            self.inflight
                .push(Reverse((self.now + delay, self.seq, from, to, bytes.clone())));
        }
    }

    /// Collects everything replica `i` wants to do: persists, events, body requests, transmits.
    pub fn flush(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        let (persists, events) = replica.bodies.settle(&mut replica.engine);
        replica
            .persisted
            .extend(persists.into_iter().map(|p| (p.shard, p.change)));
        for event in events {
            match event {
                Event::MemoryAdded(record) => {
                    replica.shown.insert(record.id);
                }
                Event::MemoryDeleted { id, .. } => {
                    replica.shown.remove(&id);
                }
            }
        }
        let n = self.replicas.len();
        while let Some(t) = self.replicas[i].engine.poll_transmit() {
            match t.to {
                Destination::Peer(p) => self.schedule(i, p, t.bytes),
                Destination::AllPeers => {
                    for p in (0..n).filter(|&p| p != i) {
                        self.schedule(i, p, t.bytes.clone());
                    }
                }
            }
        }
    }

    pub fn write(&mut self, i: usize, count: usize) -> Vec<MemoryId> {
        let drafts: Vec<MemoryDraft> = (0..count).map(|_| draft(&mut self.rng, 8)).collect();
        let records = self.replicas[i]
            .engine
            .write(self.now, &drafts)
            .expect("valid drafts");
        self.flush(i);
        records.into_iter().map(|r| r.id).collect()
    }

    /// Deletes one memory visible at `i`, chosen by `pick`, if `i` may delete it.
    pub fn delete_some(&mut self, i: usize, pick: usize) -> Option<MemoryId> {
        let author = self.replicas[i].engine.author();
        let ids: Vec<MemoryId> = self.replicas[i].engine.visible_ids().copied().collect();
        let own: Vec<MemoryId> = ids
            .into_iter()
            .filter(|id| {
                self.replicas[i]
                    .engine
                    .entry(id)
                    .is_some_and(|m| m.author == author)
                    || self.replicas[i].engine.config().admins.contains(&author)
            })
            .collect();
        if own.is_empty() {
            return None;
        }
        let id = own[pick % own.len()];
        self.replicas[i]
            .engine
            .delete(self.now, &id)
            .expect("own memory deletes");
        self.flush(i);
        Some(id)
    }

    /// Advances virtual time to `until`, delivering messages and firing timers in order.
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_message = self.inflight.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .replicas
                .iter()
                .map(|r| r.engine.poll_timeout())
                .min()
                .unwrap_or(u64::MAX);
            let next = next_message.unwrap_or(u64::MAX).min(next_timer);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            if next_message == Some(next) {
                let Some(Reverse((_, _, from, to, bytes))) = self.inflight.pop() else {
                    continue;
                };
                if let Some(log) = &mut self.delivered {
                    log.push((from, to, bytes.clone()));
                }
                if self.replicas[to]
                    .engine
                    .handle_incoming(self.now, &from, &bytes)
                    .is_err()
                {
                    self.refused += 1;
                }
                self.flush(to);
            } else {
                for i in 0..self.replicas.len() {
                    if self.replicas[i].engine.poll_timeout() <= self.now {
                        self.replicas[i].engine.handle_timeout(self.now);
                        self.flush(i);
                    }
                }
            }
        }
    }

    /// Replaces replica `i` by one loaded from its persisted changes; messages in flight to the
    /// old process are lost with it.
    pub fn restart(&mut self, i: usize) {
        let config = self.replicas[i].engine.config().clone();
        let persisted = self.replicas[i].persisted.clone();
        let seed = self.rng.u64(..);
        let bodies = &self.replicas[i].bodies;
        let mut engine = Engine::load(
            config,
            self.replicas[i].key.clone(),
            seed,
            self.now,
            persisted,
            Signatures::Verify,
            |id| bodies.contains(id),
        )
        .expect("own state loads");
        for j in (0..self.replicas.len()).filter(|&j| j != i) {
            engine.peer_connected(self.now, j);
        }
        self.inflight = std::mem::take(&mut self.inflight)
            .into_iter()
            .filter(|Reverse((_, _, _, to, _))| *to != i)
            .collect();
        self.replicas[i].engine = engine;
    }

    /// Every replica has the same state and every body its entries name.
    pub fn converged(&self) -> bool {
        let root = self.replicas[0].engine.root_digest();
        self.replicas
            .iter()
            .all(|r| r.engine.root_digest() == root && r.engine.awaiting_bodies() == 0)
    }

    /// Runs until every replica has the same digest and nothing is in flight, or gives up.
    pub fn run_until_converged(&mut self, deadline_ms: u64) -> bool {
        while self.now < deadline_ms {
            let step = self.now + 1_000;
            self.run_until(step);
            if self.converged() && self.inflight.is_empty() {
                return true;
            }
        }
        false
    }

    pub fn visible(&self, i: usize) -> Vec<MemoryId> {
        self.replicas[i].engine.visible_ids().copied().collect()
    }
}

/// Per-shard count of persisted changes, for reloading.
pub fn by_shard(persisted: &[(u16, SignedChange)]) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for (s, _) in persisted {
        *out.entry(*s).or_default() += 1;
    }
    out
}
