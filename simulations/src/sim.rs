//! The discrete-event simulation: virtual time in microseconds, one event queue, one real
//! `murmur_sync::Engine` per agent (and one for the manager), a modelled network between them.
//!
//! Determinism: every random draw comes from generators seeded by the scenario's seed, events
//! at the same instant run in the order they were scheduled, and nothing iterates a hash map.
//! The same scenario and seed give the same report, bit for bit.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    rc::Rc,
};

use murmur_sync::{
    Destination, Engine, Event as SyncEvent, Format, MemoryDraft, MemoryId, MessageKind, SigningKey,
};

use crate::{
    FixedHasher,
    bodies::BodyShelf,
    metrics::{Metrics, NodeTraffic},
    scenario::{LinkProfile, Scenario, Split, Topology},
    topology::{self, Graph, Node, Radio},
};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("engine: {0}")]
    Engine(String),
}

enum Event {
    /// Bytes arrive at `to`; they are handled once `to` has handled what came before.
    Arrive {
        from: Node,
        to: Node,
        bytes: Rc<Vec<u8>>,
        push_id: Option<u64>,
    },
    Deliver {
        from: Node,
        to: Node,
        bytes: Rc<Vec<u8>>,
        /// Set for gossiped pushes: the message id receivers deduplicate by.
        push_id: Option<u64>,
    },
    Timer {
        node: Node,
        at_ms: u64,
    },
    Write {
        node: Node,
        count: u32,
        /// Whether the author deletes these memories later.
        delete_after_us: Option<u64>,
    },
    Delete {
        node: Node,
        memory: usize,
    },
    PartitionStart(usize),
    PartitionHeal,
    Crash {
        node: Node,
    },
    Restart {
        node: Node,
        empty: bool,
    },
    Move,
    Uplink {
        online: bool,
    },
    Sample,
    EndOfWorkload,
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

struct NodeState {
    engine: Engine<Node>,
    generation: u64,
    alive: bool,
    timer_at_ms: Option<u64>,
    mesh: Vec<Node>,
    seen_pushes: HashSet<u64, FixedHasher>,
    traffic: NodeTraffic,
    /// Memories this node wrote, by track index (deletes pick from them).
    written: Vec<usize>,
    /// Until when it is busy handling earlier messages.
    busy_until_us: u64,
}

pub struct Simulation {
    scenario: Scenario,
    config: murmur_sync::Config,
    rng: fastrand::Rng,
    now_us: u64,
    end_us: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    agents: u32,
    nodes: Vec<NodeState>,
    manager: Option<Node>,
    manager_online: bool,
    graph: Graph,
    radio: Option<Radio>,
    profiles: Vec<LinkProfile>,
    uplink: Option<LinkProfile>,
    groups: Option<Vec<u32>>,
    link_busy_until: HashMap<(Node, Node), u64, FixedHasher>,
    live_agents: u32,
    workload_over: bool,
    /// What each node's driver stores beside the engine (bodies-by-hash only).
    bodies: BodyShelf,
    pub metrics: Metrics,
}

const US_PER_MS: u64 = 1_000;
const US_PER_S: u64 = 1_000_000;

fn signing_key(seed: u64, node: Node, generation: u64) -> SigningKey {
    let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(node) << 24) ^ (generation << 56) ^ 0x6d75_726d);
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    SigningKey::from_bytes(&secret)
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Simulation {
    pub fn new(scenario: Scenario) -> Result<Self, SimError> {
        let mut rng = fastrand::Rng::with_seed(scenario.seed);
        let agents = scenario.agents;
        let config = murmur_sync::Config {
            shards: scenario.sync.shards,
            anti_entropy_interval_ms: scenario.sync.anti_entropy_interval_ms,
            format: scenario.sync.format.into(),
            ..murmur_sync::Config::default()
        };
        let radio = match &scenario.topology {
            Topology::Radio {
                area_m, speed_mps, ..
            } => Some(Radio::new(agents, *area_m, *speed_mps, &mut rng)),
            _ => None,
        };
        let graph = topology::build(&scenario.topology, agents, &mut rng, radio.as_ref());
        let profiles = scenario
            .topology
            .link_names()
            .iter()
            .map(|name| scenario.links[*name].clone())
            .collect();
        let uplink = scenario
            .manager
            .as_ref()
            .map(|m| scenario.links[&m.uplink].clone());
        let total = agents + u32::from(scenario.manager.is_some());
        let mut nodes = Vec::with_capacity(total as usize);
        for node in 0..total {
            let engine = Engine::new(
                config.clone(),
                signing_key(scenario.seed, node, 0),
                scenario.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(node),
                0,
            )
            .map_err(SimError::Engine)?;
            nodes.push(NodeState {
                engine,
                generation: 0,
                alive: true,
                timer_at_ms: None,
                mesh: Vec::new(),
                seen_pushes: HashSet::default(),
                traffic: NodeTraffic::default(),
                written: Vec::new(),
                busy_until_us: 0,
            });
        }
        let end_us = (scenario.duration_s + scenario.settle_s) * US_PER_S;
        let mut sim = Self {
            manager: scenario.manager.as_ref().map(|_| agents),
            manager_online: false,
            config,
            rng,
            now_us: 0,
            end_us,
            queue: BinaryHeap::new(),
            seq: 0,
            agents,
            nodes,
            graph,
            radio,
            profiles,
            uplink,
            groups: None,
            link_busy_until: HashMap::default(),
            live_agents: agents,
            workload_over: false,
            bodies: BodyShelf::new(total as usize),
            metrics: Metrics::default(),
            scenario,
        };
        for a in 0..agents {
            let neighbours: Vec<Node> = sim.graph.neighbours(a).collect();
            for b in neighbours {
                sim.nodes[a as usize].engine.peer_connected(0, b);
            }
        }
        sim.rebuild_mesh();
        for node in 0..total {
            sim.settle_node(node);
        }
        sim.schedule_workload();
        Ok(sim)
    }

    pub fn now_s(&self) -> f64 {
        self.now_us as f64 / US_PER_S as f64
    }

    pub fn end_s(&self) -> f64 {
        self.end_us as f64 / US_PER_S as f64
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_us: at_us.max(self.now_us),
            seq: self.seq,
            event,
        }));
    }

    fn schedule_workload(&mut self) {
        let s = self.scenario.clone();
        let duration_us = s.duration_s * US_PER_S;
        let w = &s.workload;
        for node in 0..self.agents {
            let hot = self.rng.f64() < w.hot_agents;
            let rate_per_us = w.writes_per_agent_per_hour * if hot { w.hot_multiplier } else { 1.0 } / 3600e6;
            if rate_per_us <= 0.0 {
                continue;
            }
            let mut t = 0.0;
            loop {
                t += -(1.0 - self.rng.f64()).ln() / rate_per_us;
                if t >= duration_us as f64 {
                    break;
                }
                let delete_after_us = (self.rng.f64() < w.delete_fraction)
                    .then(|| (self.rng.f64() * (duration_us as f64 - t) * 0.8) as u64 + US_PER_S);
                self.schedule(
                    t as u64,
                    Event::Write {
                        node,
                        count: 1,
                        delete_after_us,
                    },
                );
            }
        }
        for burst in &w.bursts {
            let step = (self.agents / burst.agents.max(1)).max(1);
            for i in 0..burst.agents {
                self.schedule(
                    burst.at_s * US_PER_S,
                    Event::Write {
                        node: (i * step) % self.agents,
                        count: burst.memories,
                        delete_after_us: None,
                    },
                );
            }
        }
        for q in &w.sequences {
            for k in 0..q.count {
                let at = (q.start_s + q.interval_s * f64::from(k)) * US_PER_S as f64;
                self.schedule(
                    at as u64,
                    Event::Write {
                        node: q.agent,
                        count: 1,
                        delete_after_us: None,
                    },
                );
            }
        }
        for (i, p) in s.partitions.iter().enumerate() {
            self.schedule(p.at_s * US_PER_S, Event::PartitionStart(i));
            self.schedule(p.heal_s * US_PER_S, Event::PartitionHeal);
        }
        if let Some(churn) = &s.churn {
            let rate_per_us = churn.crashes_per_agent_per_hour / 3600e6;
            if rate_per_us > 0.0 {
                for node in 0..self.agents {
                    let mut t = 0.0;
                    loop {
                        t += -(1.0 - self.rng.f64()).ln() / rate_per_us;
                        if t >= duration_us as f64 {
                            break;
                        }
                        let down_us = (churn.downtime_s.sample(&mut self.rng) * US_PER_S as f64) as u64;
                        let empty = self.rng.f64() < churn.rejoin_empty_fraction;
                        self.schedule(t as u64, Event::Crash { node });
                        self.schedule(t as u64 + down_us.max(1), Event::Restart { node, empty });
                        t += down_us as f64;
                    }
                }
            }
        }
        if let Topology::Radio { move_interval_s, .. } = s.topology {
            self.schedule(move_interval_s * US_PER_S, Event::Move);
        }
        if s.manager.is_some() {
            self.schedule(0, Event::Uplink { online: true });
        }
        self.schedule(0, Event::Sample);
        self.schedule(duration_us, Event::EndOfWorkload);
    }

    /// Runs to the end of the scenario, calling `progress` with the simulated second now and
    /// then (for a progress bar).
    pub fn run(&mut self, mut progress: impl FnMut(f64)) -> Result<(), SimError> {
        let mut last_report_s = 0u64;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at_us > self.end_us {
                break;
            }
            self.now_us = next.at_us;
            self.metrics.events += 1;
            self.handle(next.event)?;
            let s = self.now_us / US_PER_S;
            if s > last_report_s {
                last_report_s = s;
                progress(self.now_s());
            }
        }
        self.now_us = self.end_us;
        progress(self.now_s());
        self.finish();
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Arrive {
                from,
                to,
                bytes,
                push_id,
            } => self.arrive(from, to, bytes, push_id),
            Event::Deliver {
                from,
                to,
                bytes,
                push_id,
            } => self.deliver(from, to, &bytes, push_id),
            Event::Timer { node, at_ms } => {
                let state = &mut self.nodes[node as usize];
                if state.alive && state.timer_at_ms == Some(at_ms) {
                    state.timer_at_ms = None;
                    state.engine.handle_timeout(self.now_us / US_PER_MS);
                    self.settle_node(node);
                }
            }
            Event::Write {
                node,
                count,
                delete_after_us,
            } => self.write(node, count, delete_after_us)?,
            Event::Delete { node, memory } => self.delete(node, memory),
            Event::PartitionStart(i) => self.partition(Some(i)),
            Event::PartitionHeal => {
                self.partition(None);
                self.metrics.heals.push(self.now_us);
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node, empty } => self.restart(node, empty)?,
            Event::Move => self.move_radio(),
            // Once the workload is over the uplink stays on (set by `end_workload`).
            Event::Uplink { online } if !self.workload_over => self.set_uplink(online),
            Event::Uplink { .. } => {}
            Event::Sample => {
                self.sample();
                if !self.workload_over || self.now_us < self.end_us {
                    let next = self.now_us + self.scenario.sample_interval_s * US_PER_S;
                    self.schedule(next, Event::Sample);
                }
            }
            Event::EndOfWorkload => self.end_workload()?,
        }
        Ok(())
    }

    // ---- the network --------------------------------------------------------------------

    fn link(&self, from: Node, to: Node) -> Option<&LinkProfile> {
        if Some(from) == self.manager || Some(to) == self.manager {
            return if self.manager_online {
                self.uplink.as_ref()
            } else {
                None
            };
        }
        if let Some(groups) = &self.groups
            && groups[from as usize] != groups[to as usize]
        {
            return None;
        }
        let profile = self.graph.profile(from, to)?;
        self.profiles.get(profile as usize)
    }

    fn send(&mut self, from: Node, to: Node, bytes: Rc<Vec<u8>>, kind: MessageKind, push_id: Option<u64>) {
        self.nodes[from as usize].traffic.sent(kind, bytes.len());
        let Some(link) = self.link(from, to).cloned() else {
            self.metrics.messages_unroutable += 1;
            return;
        };
        if self.rng.f64() < link.loss {
            self.metrics.messages_lost += 1;
            return;
        }
        let copies = if self.rng.f64() < link.duplicate { 2 } else { 1 };
        // Each direction of a link sends one message at a time at its bandwidth.
        let tx_us = (bytes.len() as f64 * 8.0 / (link.bandwidth_kbps * 1_000.0) * 1e6).ceil() as u64;
        let busy = self.link_busy_until.entry((from, to)).or_insert(0);
        let done = (*busy).max(self.now_us) + tx_us;
        *busy = done;
        for _ in 0..copies {
            let latency_us = (link.latency_ms.sample_ms(&mut self.rng).max(0.0) * 1_000.0) as u64;
            self.schedule(
                done + latency_us,
                Event::Arrive {
                    from,
                    to,
                    bytes: bytes.clone(),
                    push_id,
                },
            );
        }
    }

    /// Bytes reach `to`. Gossip duplicates are dropped at once (as gossipsub does, before the
    /// application sees them); anything else waits for `to` to finish what it is handling.
    fn arrive(&mut self, from: Node, to: Node, bytes: Rc<Vec<u8>>, push_id: Option<u64>) {
        let processing = self
            .scenario
            .agent
            .processing_ms
            .sample_ms(&mut self.rng)
            .max(0.0);
        let state = &mut self.nodes[to as usize];
        if !state.alive {
            self.metrics.messages_unroutable += 1;
            return;
        }
        let kind = MessageKind::of_frame(&bytes).unwrap_or(MessageKind::Sync);
        state.traffic.received(kind, bytes.len());
        self.metrics.messages_delivered += 1;
        if let Some(id) = push_id
            && !state.seen_pushes.insert(id)
        {
            self.metrics.duplicate_pushes += 1;
            return;
        }
        if processing == 0.0 {
            self.deliver(from, to, &bytes, push_id);
            return;
        }
        let done = state.busy_until_us.max(self.now_us) + (processing * 1_000.0) as u64;
        state.busy_until_us = done;
        self.schedule(
            done,
            Event::Deliver {
                from,
                to,
                bytes,
                push_id,
            },
        );
    }

    /// The engine at `to` handles the bytes.
    fn deliver(&mut self, from: Node, to: Node, bytes: &Rc<Vec<u8>>, push_id: Option<u64>) {
        let now_ms = self.now_us / US_PER_MS;
        let state = &mut self.nodes[to as usize];
        if !state.alive {
            self.metrics.messages_unroutable += 1;
            return;
        }
        let accepted = state.engine.handle_incoming(now_ms, &from, bytes).is_ok();
        if !accepted {
            self.metrics.messages_refused += 1;
        }
        // Like gossipsub, forward a valid push to the rest of this agent's mesh.
        if accepted && push_id.is_some() && Some(to) != self.manager {
            let mesh: Vec<Node> = self.nodes[to as usize].mesh.clone();
            for peer in mesh.into_iter().filter(|&p| p != from) {
                self.send(to, peer, bytes.clone(), MessageKind::Push, push_id);
            }
        }
        self.settle_node(to);
    }

    /// Gossipsub's mesh: each agent keeps up to D neighbours, grafted both ways.
    fn rebuild_mesh(&mut self) {
        let d = self.scenario.gossip.mesh_degree as usize;
        let mut mesh: Vec<Vec<Node>> = vec![Vec::new(); self.agents as usize];
        for a in 0..self.agents {
            let mut neighbours: Vec<Node> = self.graph.neighbours(a).collect();
            self.rng.shuffle(&mut neighbours);
            for b in neighbours.into_iter().take(d) {
                if !mesh[a as usize].contains(&b) {
                    mesh[a as usize].push(b);
                }
                if !mesh[b as usize].contains(&a) {
                    mesh[b as usize].push(a);
                }
            }
        }
        for (a, m) in mesh.into_iter().enumerate() {
            self.nodes[a].mesh = m;
        }
    }

    /// Drains what an engine wants done: persists, events (into the metrics), transmits; and
    /// re-arms its timer.
    fn settle_node(&mut self, node: Node) {
        let is_manager = Some(node) == self.manager;
        loop {
            let state = &mut self.nodes[node as usize];
            // What a driver would store: the engine keeps it too, so a restart with state keeps
            // the engine (see `restart`).
            while state.engine.poll_persist().is_some() {}
            let keeps_bodies = self.config.format == Format::BodiesByHash;
            while let Some(event) = state.engine.poll_event() {
                match event {
                    SyncEvent::MemoryAdded(record) => {
                        if keeps_bodies {
                            self.bodies.hold(node as usize, &record);
                        }
                        if is_manager {
                            self.metrics.manager_got(&record.id, self.now_us);
                        } else {
                            self.metrics.agent_got(&record.id, self.now_us, self.live_agents);
                        }
                    }
                    SyncEvent::MemoryDeleted { id, .. } => {
                        self.bodies.erase(node as usize, &id);
                        if !is_manager {
                            self.metrics.agent_deleted(&id, self.now_us, self.live_agents);
                        }
                    }
                }
            }
            while let Some(request) = state.engine.poll_body_request() {
                let held = self.bodies.answer(node as usize, &request.ids);
                state.engine.answer_bodies(&request.peer, held);
            }
            let Some(transmit) = self.nodes[node as usize].engine.poll_transmit() else {
                break;
            };
            let bytes = Rc::new(transmit.bytes);
            match transmit.to {
                Destination::Peer(peer) => self.send(node, peer, bytes, transmit.kind, None),
                Destination::AllPeers => {
                    let id = hash_bytes(&bytes);
                    self.nodes[node as usize].seen_pushes.insert(id);
                    let targets: Vec<Node> = if is_manager {
                        (0..self.agents).collect()
                    } else {
                        let mut t = if self.scenario.gossip.flood_publish {
                            self.graph.neighbours(node).collect()
                        } else {
                            self.nodes[node as usize].mesh.clone()
                        };
                        if let Some(manager) = self.manager.filter(|_| self.manager_online) {
                            t.push(manager);
                        }
                        t
                    };
                    for peer in targets {
                        self.send(node, peer, bytes.clone(), transmit.kind, Some(id));
                    }
                }
            }
        }
        let state = &mut self.nodes[node as usize];
        if state.alive {
            let at_ms = state.engine.poll_timeout();
            if state.timer_at_ms != Some(at_ms) {
                state.timer_at_ms = Some(at_ms);
                self.schedule(at_ms * US_PER_MS, Event::Timer { node, at_ms });
            }
        }
    }

    // ---- the workload -------------------------------------------------------------------

    fn draft(&mut self) -> MemoryDraft {
        const WORDS: [&str; 12] = [
            "forklift", "battery", "door", "bay", "camera", "low", "open", "pallet", "sensor", "north",
            "cold", "belt",
        ];
        let mut text = String::new();
        while text.len() < self.scenario.memory.text_bytes.max(1) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[self.rng.usize(..WORDS.len())]);
        }
        text.truncate(self.scenario.memory.text_bytes.max(1));
        MemoryDraft {
            namespace: "sim".into(),
            text: text.trim_end().to_string(),
            metadata_json: format!(r#"{{"reading":{}}}"#, self.rng.u32(..100_000)),
            tags: vec![WORDS[self.rng.usize(..WORDS.len())].to_string()],
            model_id: "all-MiniLM-L6-v2-int8".into(),
            vector: (0..self.scenario.memory.dimension)
                .map(|_| self.rng.f32() - 0.5 + 1e-3)
                .collect(),
        }
    }

    fn write(&mut self, node: Node, count: u32, delete_after_us: Option<u64>) -> Result<(), SimError> {
        if !self.nodes[node as usize].alive {
            self.metrics.writes_skipped_offline += u64::from(count);
            return Ok(());
        }
        let drafts: Vec<MemoryDraft> = (0..count).map(|_| self.draft()).collect();
        let now_ms = self.now_us / US_PER_MS;
        let records = self.nodes[node as usize]
            .engine
            .write(now_ms, &drafts)
            .map_err(|e| SimError::Engine(e.to_string()))?;
        for record in &records {
            let index = self
                .metrics
                .written(record.id, node, self.now_us, self.live_agents);
            self.nodes[node as usize].written.push(index);
            if let Some(after) = delete_after_us {
                self.schedule(self.now_us + after, Event::Delete { node, memory: index });
            }
        }
        self.settle_node(node);
        Ok(())
    }

    fn delete(&mut self, node: Node, memory: usize) {
        let state = &mut self.nodes[node as usize];
        if !state.alive {
            return;
        }
        let id = self.metrics.id_of(memory);
        let now_ms = self.now_us / US_PER_MS;
        if state.engine.delete(now_ms, &id).is_ok() {
            self.metrics.deleted(memory, self.now_us);
            self.settle_node(node);
        }
    }

    // ---- faults -------------------------------------------------------------------------

    fn partition(&mut self, which: Option<usize>) {
        self.groups = which.map(|i| {
            let split = self.scenario.partitions[i].split.clone();
            (0..self.agents)
                .map(|a| match split {
                    Split::Blocks { groups } => {
                        let size = self.agents.div_ceil(groups);
                        a / size
                    }
                    Split::Clusters => topology::cluster_of(&self.scenario.topology, a),
                })
                .collect()
        });
    }

    fn connect(&mut self, a: Node, b: Node) {
        let now_ms = self.now_us / US_PER_MS;
        self.nodes[a as usize].engine.peer_connected(now_ms, b);
        self.nodes[b as usize].engine.peer_connected(now_ms, a);
    }

    fn disconnect(&mut self, a: Node, b: Node) {
        self.nodes[a as usize].engine.peer_disconnected(&b);
        self.nodes[b as usize].engine.peer_disconnected(&a);
    }

    fn alive_peers_of(&self, node: Node) -> Vec<Node> {
        let mut peers: Vec<Node> = self
            .graph
            .neighbours(node)
            .filter(|&p| self.nodes[p as usize].alive)
            .collect();
        if let Some(manager) = self.manager.filter(|_| self.manager_online) {
            peers.push(manager);
        }
        peers
    }

    fn crash(&mut self, node: Node) {
        if self.workload_over || !self.nodes[node as usize].alive {
            return;
        }
        for peer in self.alive_peers_of(node) {
            self.disconnect(node, peer);
        }
        let held: Vec<MemoryId> = self.nodes[node as usize].engine.visible_ids().copied().collect();
        let tombstones = self.metrics.tombstones_held(&self.nodes[node as usize].engine);
        let state = &mut self.nodes[node as usize];
        state.alive = false;
        state.timer_at_ms = None;
        self.live_agents -= 1;
        self.metrics.crashes += 1;
        self.metrics
            .agent_went_down(&held, &tombstones, self.now_us, self.live_agents);
    }

    fn restart(&mut self, node: Node, empty: bool) -> Result<(), SimError> {
        if self.nodes[node as usize].alive {
            return Ok(());
        }
        let now_ms = self.now_us / US_PER_MS;
        let seed = self.rng.u64(..);
        let state = &mut self.nodes[node as usize];
        if empty {
            // A new device in the old one's place: a new key, nothing stored.
            state.generation += 1;
            state.engine = Engine::new(
                self.config.clone(),
                signing_key(self.scenario.seed, node, state.generation),
                seed,
                now_ms,
            )
            .map_err(SimError::Engine)?;
            state.written.clear();
            self.bodies.erase_all(node as usize);
            self.metrics.rejoins_empty += 1;
        }
        // Otherwise the engine stays: drivers persist every change before acting on it, so a
        // restarted agent's documents are the ones it had, and its sync state with each peer
        // was reset when they disconnected. (Reloading with `Engine::load` would only add the
        // re-verification of every change; the property tests cover it.)
        state.alive = true;
        state.timer_at_ms = None;
        state.seen_pushes.clear();
        self.live_agents += 1;
        let held: Vec<MemoryId> = self.nodes[node as usize].engine.visible_ids().copied().collect();
        let tombstones = self.metrics.tombstones_held(&self.nodes[node as usize].engine);
        self.metrics.agent_came_up(&held, &tombstones);
        for peer in self.alive_peers_of(node) {
            self.connect(node, peer);
        }
        self.settle_node(node);
        Ok(())
    }

    fn move_radio(&mut self) {
        let Topology::Radio { move_interval_s, .. } = self.scenario.topology else {
            return;
        };
        let Some(radio) = self.radio.as_mut() else { return };
        radio.advance(move_interval_s as f64, &mut self.rng);
        let fresh = topology::build(&self.scenario.topology, self.agents, &mut self.rng, Some(radio));
        for a in 0..self.agents {
            let before: Vec<Node> = self.graph.neighbours(a).filter(|&b| b > a).collect();
            let after: Vec<Node> = fresh.neighbours(a).filter(|&b| b > a).collect();
            let both_alive = |s: &Self, b: Node| s.nodes[a as usize].alive && s.nodes[b as usize].alive;
            for &b in before.iter().filter(|b| !after.contains(b)) {
                if both_alive(self, b) {
                    self.disconnect(a, b);
                }
                self.metrics.radio_links_lost += 1;
            }
            for &b in after.iter().filter(|b| !before.contains(b)) {
                if both_alive(self, b) {
                    self.connect(a, b);
                }
                self.metrics.radio_links_made += 1;
            }
        }
        self.graph = fresh;
        self.rebuild_mesh();
        for a in 0..self.agents {
            self.settle_node(a);
        }
        if !self.workload_over || self.now_us < self.end_us {
            self.schedule(self.now_us + move_interval_s * US_PER_S, Event::Move);
        }
    }

    fn set_uplink(&mut self, online: bool) {
        let (Some(manager), Some(m)) = (self.manager, self.scenario.manager.clone()) else {
            return;
        };
        if online == self.manager_online {
            return;
        }
        self.manager_online = online;
        for a in 0..self.agents {
            if self.nodes[a as usize].alive {
                if online {
                    self.connect(a, manager);
                } else {
                    self.disconnect(a, manager);
                }
            }
        }
        self.settle_node(manager);
        if self.workload_over {
            return;
        }
        // An uplink that is never off (offline_s = 0) is simply always on.
        if m.offline_s > 0 {
            let next = if online { m.online_s } else { m.offline_s };
            self.schedule(self.now_us + next * US_PER_S, Event::Uplink { online: !online });
        }
    }

    /// From here on the swarm is left alone to converge: partitions healed, every agent up,
    /// the manager's uplink on.
    fn end_workload(&mut self) -> Result<(), SimError> {
        self.workload_over = true;
        if self.groups.is_some() {
            self.partition(None);
        }
        for node in 0..self.agents {
            if !self.nodes[node as usize].alive {
                self.restart(node, false)?;
            }
        }
        self.set_uplink(true);
        Ok(())
    }

    fn sample(&mut self) {
        let mut digests = BTreeMap::new();
        let mut held = 0u64;
        let mut most = 0u64;
        for node in &self.nodes[..self.agents as usize] {
            if node.alive {
                *digests.entry(node.engine.root_digest()).or_insert(0u32) += 1;
                let visible = node.engine.visible_count() as u64;
                held += visible;
                most = most.max(visible);
            }
        }
        self.metrics
            .sample(self.now_us, self.live_agents, digests.len() as u32, held, most);
    }

    fn finish(&mut self) {
        self.sample();
        let live: Vec<&NodeState> = self.nodes[..self.agents as usize]
            .iter()
            .filter(|n| n.alive)
            .collect();
        let root = live.first().map(|n| n.engine.root_digest());
        let mut converged = live.iter().all(|n| Some(n.engine.root_digest()) == root);
        if let Some(manager) = self.manager {
            converged &= Some(self.nodes[manager as usize].engine.root_digest()) == root;
        }
        // The most common final state, and who does not hold it: the devices an operator would
        // look at.
        let mut by_state: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        for n in &live {
            *by_state.entry(n.engine.root_digest()).or_insert(0) += 1;
        }
        let majority = by_state.iter().max_by_key(|(_, count)| **count).map(|(d, _)| *d);
        let lagging: Vec<u32> = (0..self.agents)
            .filter(|&a| {
                let n = &self.nodes[a as usize];
                n.alive && Some(n.engine.root_digest()) != majority
            })
            .collect();
        let engine_visible = live.first().map_or(0, |n| n.engine.visible_count());
        let traffic: Vec<NodeTraffic> = self.nodes[..self.agents as usize]
            .iter()
            .map(|n| n.traffic.clone())
            .collect();
        let manager_traffic = self.manager.map(|m| self.nodes[m as usize].traffic.clone());
        // What the engines themselves accepted, after gossip's deduplication: the quantity a
        // real agent's `murmur_swarm_bytes_total{direction="in"}` counts.
        let mut engine_bytes_in = [0u64; MessageKind::ALL.len()];
        for node in &self.nodes[..self.agents as usize] {
            for kind in MessageKind::ALL {
                engine_bytes_in[kind.index()] += node.engine.stats().bytes_in(kind);
            }
        }
        self.metrics.finish(
            converged,
            engine_visible,
            traffic,
            manager_traffic,
            self.graph.edge_count(),
            engine_bytes_in,
        );
        self.metrics.final_state.lagging_agents = lagging;
    }
}
