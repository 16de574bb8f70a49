//! What a run measures while it goes: when each memory (and each delete) reached every live
//! agent and the manager, traffic per agent by message kind, and periodic samples.

use std::collections::{BTreeMap, HashMap};

use murmur_sync::{MemoryId, MessageKind};
use serde::Serialize;

const KINDS: usize = MessageKind::ALL.len();

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeTraffic {
    pub messages_out: [u64; KINDS],
    pub bytes_out: [u64; KINDS],
    pub messages_in: [u64; KINDS],
    pub bytes_in: [u64; KINDS],
}

impl NodeTraffic {
    pub fn sent(&mut self, kind: MessageKind, len: usize) {
        self.messages_out[kind.index()] += 1;
        self.bytes_out[kind.index()] += len as u64;
    }

    pub fn received(&mut self, kind: MessageKind, len: usize) {
        self.messages_in[kind.index()] += 1;
        self.bytes_in[kind.index()] += len as u64;
    }
}

/// One memory's journey.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: MemoryId,
    pub author: u32,
    pub written_us: u64,
    /// Live agents holding it now.
    holders: u32,
    /// When every live agent held it.
    pub complete_us: Option<u64>,
    pub manager_us: Option<u64>,
    pub deleted_us: Option<u64>,
    tomb_holders: u32,
    pub delete_complete_us: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub live_agents: u32,
    /// Distinct root digests among live agents: 1 means all hold the same state.
    pub distinct_states: u32,
    /// Memories held, summed over live agents, over live agents times what the most complete
    /// one holds: 1.0 when everyone holds as much as the best.
    pub coverage: f64,
}

/// Filled at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct Final {
    pub converged: bool,
    pub visible_memories: usize,
    pub traffic: Vec<NodeTraffic>,
    pub manager_traffic: Option<NodeTraffic>,
    pub links: usize,
    /// Bytes the agents' engines accepted, by kind, all agents together.
    pub engine_bytes_in: [u64; KINDS],
    /// Live agents whose final state is not the most common one.
    pub lagging_agents: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub events: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    pub messages_unroutable: u64,
    pub messages_refused: u64,
    pub duplicate_pushes: u64,
    pub writes_skipped_offline: u64,
    pub crashes: u64,
    pub rejoins_empty: u64,
    pub radio_links_lost: u64,
    pub radio_links_made: u64,
    pub heals: Vec<u64>,
    pub tracks: Vec<Track>,
    by_id: HashMap<MemoryId, usize>,
    pub samples: Vec<Sample>,
    pub final_state: Final,
}

impl Metrics {
    pub fn written(&mut self, id: MemoryId, author: u32, now_us: u64, _live: u32) -> usize {
        let index = self.tracks.len();
        self.tracks.push(Track {
            id,
            author,
            written_us: now_us,
            holders: 0,
            complete_us: None,
            manager_us: None,
            deleted_us: None,
            tomb_holders: 0,
            delete_complete_us: None,
        });
        self.by_id.insert(id, index);
        index
    }

    pub fn id_of(&self, index: usize) -> MemoryId {
        self.tracks[index].id
    }

    pub fn deleted(&mut self, index: usize, now_us: u64) {
        self.tracks[index].deleted_us.get_or_insert(now_us);
    }

    pub fn agent_got(&mut self, id: &MemoryId, now_us: u64, live: u32) {
        if let Some(&i) = self.by_id.get(id) {
            let t = &mut self.tracks[i];
            one_more_holder(&mut t.holders, &mut t.complete_us, now_us, live);
        }
    }

    pub fn manager_got(&mut self, id: &MemoryId, now_us: u64) {
        if let Some(&i) = self.by_id.get(id) {
            self.tracks[i].manager_us.get_or_insert(now_us);
        }
    }

    pub fn agent_deleted(&mut self, id: &MemoryId, now_us: u64, live: u32) {
        if let Some(&i) = self.by_id.get(id) {
            let t = &mut self.tracks[i];
            one_more_holder(&mut t.tomb_holders, &mut t.delete_complete_us, now_us, live);
        }
    }

    /// Track indexes of the deletes `engine` knows of.
    pub fn tombstones_held(&self, engine: &murmur_sync::Engine<u32>) -> Vec<usize> {
        (0..self.tracks.len())
            .filter(|&i| self.tracks[i].deleted_us.is_some() && engine.is_deleted(&self.tracks[i].id))
            .collect()
    }

    /// An agent went down holding `held` memories and `tombstones` deletes: it no longer
    /// counts, and what every remaining live agent holds is now complete.
    pub fn agent_went_down(&mut self, held: &[MemoryId], tombstones: &[usize], now_us: u64, live: u32) {
        for id in held {
            if let Some(&i) = self.by_id.get(id) {
                self.tracks[i].holders = self.tracks[i].holders.saturating_sub(1);
            }
        }
        for &i in tombstones {
            self.tracks[i].tomb_holders = self.tracks[i].tomb_holders.saturating_sub(1);
        }
        if live == 0 {
            return;
        }
        for t in &mut self.tracks {
            if t.complete_us.is_none() && t.deleted_us.is_none() && t.holders >= live {
                t.complete_us = Some(now_us);
            }
            if t.deleted_us.is_some() && t.delete_complete_us.is_none() && t.tomb_holders >= live {
                t.delete_complete_us = Some(now_us);
            }
        }
    }

    pub fn agent_came_up(&mut self, held: &[MemoryId], tombstones: &[usize]) {
        for id in held {
            if let Some(&i) = self.by_id.get(id) {
                self.tracks[i].holders += 1;
            }
        }
        for &i in tombstones {
            self.tracks[i].tomb_holders += 1;
        }
    }

    /// `held`: memories visible, summed over live agents; `most`: the most any one holds.
    pub fn sample(&mut self, now_us: u64, live: u32, distinct: u32, held: u64, most: u64) {
        let coverage = if most == 0 || live == 0 {
            1.0
        } else {
            held as f64 / (most as f64 * f64::from(live))
        };
        self.samples.push(Sample {
            t_s: now_us as f64 / 1e6,
            live_agents: live,
            distinct_states: distinct,
            coverage,
        });
    }

    pub fn finish(
        &mut self,
        converged: bool,
        visible_memories: usize,
        traffic: Vec<NodeTraffic>,
        manager_traffic: Option<NodeTraffic>,
        links: usize,
        engine_bytes_in: [u64; KINDS],
    ) {
        self.final_state = Final {
            converged,
            visible_memories,
            traffic,
            manager_traffic,
            links,
            engine_bytes_in,
            lagging_agents: Vec::new(),
        };
    }

    /// Memory counts by state, for the report.
    pub fn memory_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for t in &self.tracks {
            let state = match (t.deleted_us, t.complete_us) {
                (Some(_), _) => "deleted",
                (None, Some(_)) => "reached_all",
                (None, None) => "not_reached_all",
            };
            *counts.entry(state).or_insert(0) += 1;
        }
        counts
    }
}

/// One more live agent holds a memory (or its delete); complete once all of them do.
fn one_more_holder(holders: &mut u32, complete_us: &mut Option<u64>, now_us: u64, live: u32) {
    *holders += 1;
    if complete_us.is_none() && *holders >= live {
        *complete_us = Some(now_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MemoryId {
        let mut bytes = [0u8; 16];
        bytes[15] = n;
        MemoryId(bytes)
    }

    #[test]
    fn a_memory_is_complete_when_every_live_agent_holds_it() {
        let mut m = Metrics::default();
        let i = m.written(id(1), 0, 10, 3);
        m.agent_got(&id(1), 10, 3);
        m.agent_got(&id(1), 20, 3);
        assert_eq!(m.tracks[i].complete_us, None);
        // The third agent goes down without it: the two live ones hold it.
        m.agent_went_down(&[], &[], 30, 2);
        assert_eq!(m.tracks[i].complete_us, Some(30));
        let j = m.written(id(2), 1, 40, 2);
        m.agent_got(&id(2), 40, 2);
        m.agent_went_down(&[id(2)], &[], 50, 1);
        assert_eq!(m.tracks[j].complete_us, None, "the only holder went down");
        m.agent_got(&id(2), 60, 1);
        assert_eq!(m.tracks[j].complete_us, Some(60));
    }
}
