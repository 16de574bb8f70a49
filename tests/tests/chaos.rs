//! Chaos, Jepsen-style: five real agents in one libp2p swarm, every agent-to-agent connection
//! through a link the schedule can cut, slow or make lossy, and two managers on one bucket (three
//! agents upload to one, two to the other), while a client per agent writes and deletes. A
//! seeded schedule partitions the agents into random groups, kills agents and managers with
//! SIGKILL and restarts them, slows and resets links, and has a swarm member send garbage and
//! replay old messages to a manager. After it heals everything, the invariants:
//!
//! - every acknowledged write not deleted is served by every agent and both managers;
//! - every acknowledged delete is a 410 everywhere;
//! - the agents' root digests are equal, and equal the managers';
//! - the Parquet export holds exactly the merged state's live memories.
//!
//! `MURMUR_CHAOS_SEED` replays a schedule (printed on every run); `MURMUR_CHAOS_STEPS` sets its
//! length (short in CI; `scripts/chaos-long.sh` runs about an hour). `MURMUR_CHAOS_MINUTES` ends
//! the faults early once that much time has passed (the steps run are printed, so
//! `MURMUR_CHAOS_STEPS` replays them); `MURMUR_CHAOS_CLIENT_PAUSE_MS` sets the mean pause between
//! a client's requests, so a long run tests faults rather than a bucket of ever more data.
//! Process timing is not replayable, the schedule is.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use murmur_agent::client::Client;
use murmur_sync::{Config, Engine, MemoryDraft, SigningKey};
use murmur_tests::{
    AgentProcess, Lcg, ManagerProcess, SWARM_KEY, chaos_link::ChaosLink, env_or, metric, parquet_rows,
    wait_until,
};
use murmur_uplink::{Credentials, Frame, FrameKind, client_endpoint, connect, write_frame};
use serde_json::json;

const AGENTS: usize = 5;
const MANAGERS: usize = 2;

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn vector(rng: &mut Lcg) -> Vec<f32> {
    (0..384)
        .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

#[derive(Debug, Clone)]
enum Fault {
    /// Agents in different groups cannot reach each other.
    Partition(Vec<usize>),
    Heal,
    KillAgent(usize),
    KillManager(usize),
    /// Every link holds each chunk this long.
    Slow(u64),
    /// Every link resets a connection on this share of chunks, per mille.
    Lossy(u32),
    /// A swarm member sends garbage and replays what it sent before to this manager.
    GarbageAndReplay(usize),
}

fn schedule(seed: u64, steps: usize) -> Vec<Fault> {
    let mut rng = Lcg(seed);
    let fault = |kind: u64, rng: &mut Lcg| match kind {
        0 => Fault::Partition((0..AGENTS).map(|_| (rng.next_u64() % 3) as usize).collect()),
        1 => Fault::KillAgent((rng.next_u64() % AGENTS as u64) as usize),
        2 => Fault::KillManager((rng.next_u64() % MANAGERS as u64) as usize),
        3 => Fault::Slow(20 + rng.next_u64() % 200),
        4 => Fault::Lossy(5 + (rng.next_u64() % 40) as u32),
        5 => Fault::GarbageAndReplay((rng.next_u64() % MANAGERS as u64) as usize),
        _ => Fault::Heal,
    };
    // Every kind of fault once, in a seeded order, so that even a short run meets them all;
    // then partitions twice as often as the rest.
    let mut kinds: Vec<u64> = (0..7).collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut plan: Vec<Fault> = kinds.into_iter().map(|k| fault(k, &mut rng)).collect();
    while plan.len() < steps {
        let kind = rng.next_u64() % 8 % 7;
        plan.push(fault(kind, &mut rng));
    }
    plan.truncate(steps.max(7));
    plan
}

/// What clients were told: acknowledged writes and deletes, and deletes whose answer was lost.
#[derive(Default)]
struct Ledger {
    written: BTreeMap<String, usize>,
    deleted: BTreeSet<String>,
    maybe_deleted: BTreeSet<String>,
    refused_while_down: u64,
}

struct Node {
    dir: PathBuf,
    api_addr: String,
    config: PathBuf,
    manager_uplink: String,
}

impl Node {
    fn start(&self) -> AgentProcess {
        AgentProcess::start_wrapped(
            &self.dir,
            &[],
            &self.api_addr,
            &[
                "--config",
                &self.config.to_string_lossy(),
                "--manager",
                &self.manager_uplink,
                "--swarm-key",
                SWARM_KEY,
            ],
        )
    }
}

struct Cluster {
    nodes: Vec<Node>,
    agents: Vec<Option<AgentProcess>>,
    manager_dirs: Vec<PathBuf>,
    manager_uplinks: Vec<String>,
    managers: Vec<Option<ManagerProcess>>,
    bucket_args: Vec<String>,
    /// The link between agents i < j: j dials i through it.
    links: BTreeMap<(usize, usize), ChaosLink>,
}

impl Cluster {
    fn start(root: &Path) -> Self {
        let bucket = root.join("bucket");
        std::fs::create_dir_all(&bucket).expect("bucket dir");
        let bucket_args = vec![
            "--no-model".to_string(),
            "--bucket".to_string(),
            format!("file://{}", bucket.display()),
        ];
        let manager_uplinks: Vec<String> = (0..MANAGERS).map(|_| murmur_tests::free_udp_addr()).collect();
        let manager_dirs: Vec<PathBuf> = (0..MANAGERS).map(|m| root.join(format!("manager-{m}"))).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            agents: Vec::new(),
            managers: (0..MANAGERS).map(|_| None).collect(),
            manager_dirs,
            manager_uplinks,
            bucket_args,
            links: BTreeMap::new(),
        };
        for m in 0..MANAGERS {
            cluster.start_manager(m);
        }
        let mut peers: Vec<(u16, String)> = Vec::new();
        for i in 0..AGENTS {
            let swarm_port = free_tcp_port();
            let mut bootstrap = Vec::new();
            for (j, (port, peer_id)) in peers.iter().enumerate() {
                let link = ChaosLink::start(SocketAddr::from(([127, 0, 0, 1], *port)));
                bootstrap.push(format!(
                    "\"/ip4/127.0.0.1/tcp/{}/p2p/{peer_id}\"",
                    link.addr.port()
                ));
                cluster.links.insert((j, i), link);
            }
            let dir = root.join(format!("agent-{i}"));
            std::fs::create_dir_all(&dir).expect("agent dir");
            let config = dir.join("agent.toml");
            // Only the dials through the links: no discovery, no dial-backs, no hole punching.
            std::fs::write(
                &config,
                format!(
                    "[swarm]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/tcp/{swarm_port}\"]\n\
                     mdns = false\nkademlia = false\nautonat = false\nhole_punching = false\n\
                     bootstrap = [{}]\n\n[sync]\nanti_entropy_interval_ms = 1000\n",
                    bootstrap.join(", ")
                ),
            )
            .expect("agent config");
            let node = Node {
                dir,
                api_addr: format!("127.0.0.1:{}", free_tcp_port()),
                config,
                manager_uplink: cluster.manager_uplinks[i % MANAGERS].clone(),
            };
            let agent = node.start();
            peers.push((swarm_port, agent.peer_id()));
            cluster.agents.push(Some(agent));
            cluster.nodes.push(node);
        }
        cluster
    }

    fn start_manager(&mut self, m: usize) {
        let args: Vec<&str> = self.bucket_args.iter().map(String::as_str).collect();
        self.managers[m] = Some(ManagerProcess::start(
            &self.manager_dirs[m],
            &self.manager_uplinks[m],
            &args,
        ));
    }

    fn partition(&self, groups: &[usize]) {
        for (&(i, j), link) in &self.links {
            link.set_cut(groups[i] != groups[j]);
        }
    }

    fn heal(&mut self) {
        for link in self.links.values() {
            link.set_cut(false);
            link.set_delay(Duration::ZERO);
            link.set_reset_per_mille(0);
        }
        for i in 0..AGENTS {
            if self.agents[i].is_none() {
                self.agents[i] = Some(self.nodes[i].start());
            }
        }
        for m in 0..MANAGERS {
            if self.managers[m].is_none() {
                self.start_manager(m);
            }
        }
    }

    fn agents(&self) -> impl Iterator<Item = &AgentProcess> {
        self.agents.iter().flatten()
    }

    fn managers(&self) -> impl Iterator<Item = &ManagerProcess> {
        self.managers.iter().flatten()
    }
}

/// A client per agent: writes (vectors given, so no embedding) and deletes its own memories,
/// recording only what the agent acknowledged.
fn client_loop(
    i: usize,
    api: String,
    seed: u64,
    mean_pause_ms: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let client = Client::new(&format!("http://{api}"));
    let mut rng = Lcg(seed ^ ((i as u64 + 1) * 0x9e37));
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        if !mine.is_empty() && rng.next_u64().is_multiple_of(5) {
            let id = mine.swap_remove((rng.next_u64() % mine.len() as u64) as usize);
            let acknowledged = client
                .delete(&format!("/v1/memories/{id}"))
                .is_ok_and(|r| r.status == 204);
            let mut ledger = ledger.lock().unwrap();
            if acknowledged {
                ledger.deleted.insert(id);
            } else {
                ledger.maybe_deleted.insert(id);
            }
        } else {
            let body = json!({
                "text": format!("agent {i} note {n}: pallet {} at bay {}", rng.next_u64() % 500, rng.next_u64() % 40),
                "vector": vector(&mut rng),
                "tags": ["chaos"],
            });
            match client.post("/v1/memories", &body) {
                Ok(reply) if reply.status == 201 => {
                    let id = reply.body["id"].as_str().expect("id").to_string();
                    ledger.lock().unwrap().written.insert(id.clone(), i);
                    mine.push(id);
                }
                _ => {
                    ledger.lock().unwrap().refused_while_down += 1;
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        // Uniform over [mean/3, 5 mean/3): the mean is the configured one.
        let jitter = rng.next_u64() % (mean_pause_ms * 4 / 3).max(1);
        thread::sleep(Duration::from_millis(mean_pause_ms / 3 + jitter));
    }
}

/// A member of the swarm (it holds the key) that sends a manager garbage frames, then valid
/// pushes of its own memories, then the same pushes again. Returns the frames sent.
fn garbage_and_replay(uplink: &str, round: u64, sent_before: &mut Vec<Vec<u8>>) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let uplink: SocketAddr = uplink.parse().expect("uplink address");
    let mut key = [0u8; 32];
    hex::decode_to_slice(SWARM_KEY, &mut key).expect("swarm key");
    let signer = SigningKey::from_bytes(&[0x42; 32]);
    let mut engine: Engine<u8> = Engine::new(Config::default(), signer.clone(), round, 0).expect("engine");
    let drafts: Vec<MemoryDraft> = (0..3)
        .map(|k| MemoryDraft {
            namespace: "default".into(),
            text: format!("member note {round}/{k}"),
            metadata_json: "{}".into(),
            tags: vec![],
            model_id: "chaos".into(),
            vector: vec![0.25; 384],
        })
        .collect();
    engine.write(1, &drafts).expect("write");
    let fresh: Vec<Vec<u8>> = std::iter::from_fn(|| engine.poll_transmit())
        .map(|t| t.bytes)
        .collect();
    let sent = runtime.block_on(async {
        let endpoint = client_endpoint(Duration::from_secs(10)).expect("endpoint");
        let credentials = Credentials::new(signer, Some(key));
        let Ok(mut session) = connect(&endpoint, uplink, &credentials, &[], "chaos-member").await else {
            return 0;
        };
        let mut sent = 0;
        let mut garbage = round.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        for _ in 0..20 {
            garbage ^= garbage << 13;
            garbage ^= garbage >> 7;
            garbage ^= garbage << 17;
            let bytes: Vec<u8> = garbage.to_le_bytes().repeat(1 + (garbage % 9) as usize);
            if write_frame(&mut session.send, &Frame::new(FrameKind::Sync, bytes))
                .await
                .is_err()
            {
                return sent;
            }
            sent += 1;
        }
        // Its own pushes (entries and bodies), the earlier rounds' again: replays.
        for bytes in sent_before.iter().chain(&fresh) {
            if write_frame(&mut session.send, &Frame::new(FrameKind::Sync, bytes.clone()))
                .await
                .is_err()
            {
                return sent;
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sent
    });
    sent_before.extend(fresh);
    sent
}

fn list_ids(agent: &AgentProcess) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memories?limit=500&cursor={c}"),
            None => "/v1/memories?limit=500".to_string(),
        };
        let reply = agent.client.get(&path).expect("list");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        for memory in reply.body["memories"].as_array().expect("memories") {
            ids.insert(memory["id"].as_str().expect("id").to_string());
        }
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

#[test]
fn a_swarm_under_partitions_kills_and_bad_links_loses_nothing_acknowledged() {
    let seed: u64 = env_or("MURMUR_CHAOS_SEED", 0x5eed_0001);
    let steps: usize = env_or("MURMUR_CHAOS_STEPS", 12);
    let step_ms: u64 = env_or("MURMUR_CHAOS_STEP_MS", 3_000);
    let minutes: u64 = env_or("MURMUR_CHAOS_MINUTES", 0);
    let mean_pause_ms: u64 = env_or("MURMUR_CHAOS_CLIENT_PAUSE_MS", 90);
    let plan = schedule(seed, steps);
    eprintln!("chaos seed {seed:#x}, {steps} steps of {step_ms} ms: {plan:?}");

    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(root.path());
    for (i, agent) in cluster.agents().enumerate() {
        wait_until(60, &format!("agent {i} to join the swarm"), || {
            agent.stats()["sync"]["peers"]
                .as_array()
                .is_some_and(|p| p.len() >= AGENTS - 1)
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (api, stop, ledger) = (node.api_addr.clone(), stop.clone(), ledger.clone());
            thread::spawn(move || client_loop(i, api, seed, mean_pause_ms, stop, ledger))
        })
        .collect();

    let mut figures = BTreeMap::<&str, u64>::new();
    let mut replayed = Vec::new();
    let started = Instant::now();
    for (step, fault) in plan.iter().enumerate() {
        if minutes > 0 && started.elapsed() >= Duration::from_secs(minutes * 60) {
            eprintln!(
                "{minutes} minutes passed: faults end after {step} of {steps} steps \
                 (MURMUR_CHAOS_STEPS={step} replays them)"
            );
            figures.insert("steps run", step as u64);
            break;
        }
        eprintln!(
            "step {step} at {:.1}s: {fault:?}",
            started.elapsed().as_secs_f64()
        );
        match fault {
            Fault::Partition(groups) => {
                cluster.partition(groups);
                *figures.entry("partitions").or_default() += 1;
            }
            Fault::Heal => {
                cluster.heal();
                *figures.entry("partitions healed").or_default() += 1;
            }
            Fault::KillAgent(i) => {
                if let Some(agent) = cluster.agents[*i].take() {
                    agent.kill();
                    *figures.entry("agent kills").or_default() += 1;
                }
            }
            Fault::KillManager(m) => {
                if let Some(manager) = cluster.managers[*m].take() {
                    manager.kill();
                    *figures.entry("manager kills").or_default() += 1;
                }
            }
            Fault::Slow(ms) => {
                for link in cluster.links.values() {
                    link.set_delay(Duration::from_millis(*ms));
                }
                *figures.entry("slow-link phases").or_default() += 1;
            }
            Fault::Lossy(per_mille) => {
                for link in cluster.links.values() {
                    link.set_reset_per_mille(*per_mille);
                }
                *figures.entry("lossy-link phases").or_default() += 1;
            }
            Fault::GarbageAndReplay(m) => {
                let sent = garbage_and_replay(&cluster.manager_uplinks[*m], step as u64, &mut replayed);
                *figures.entry("garbage frames").or_default() += sent as u64;
            }
        }
        thread::sleep(Duration::from_millis(step_ms));
        // A killed process comes back one step later, as a supervisor would bring it back.
        for i in 0..AGENTS {
            if cluster.agents[i].is_none() && !matches!(fault, Fault::KillAgent(k) if *k == i) {
                cluster.agents[i] = Some(cluster.nodes[i].start());
            }
        }
        for m in 0..MANAGERS {
            if cluster.managers[m].is_none() && !matches!(fault, Fault::KillManager(k) if *k == m) {
                cluster.start_manager(m);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    cluster.heal();
    *figures.entry("partitions healed").or_default() += 1;
    figures.insert("link resets", cluster.links.values().map(ChaosLink::resets).sum());

    let ledger = ledger.lock().unwrap();
    let expected: BTreeSet<String> = ledger
        .written
        .keys()
        .filter(|id| !ledger.deleted.contains(*id) && !ledger.maybe_deleted.contains(*id))
        .cloned()
        .collect();
    eprintln!(
        "acknowledged writes {}, deletes {}, unanswered deletes {}, requests refused while down {}",
        ledger.written.len(),
        ledger.deleted.len(),
        ledger.maybe_deleted.len(),
        ledger.refused_while_down
    );
    assert!(
        !expected.is_empty(),
        "no write was acknowledged: nothing was tested"
    );

    // Healed: everyone converges on one state.
    let digest = |a: &AgentProcess| a.stats()["sync"]["root_digest"].clone();
    wait_until(
        300,
        "every agent and manager to reach one state, with every body",
        || {
            let digests: BTreeSet<String> = cluster
                .agents()
                .map(|a| digest(a).to_string())
                .chain(
                    cluster
                        .managers()
                        .map(|m| m.overview()["manager"]["root_digest"].to_string()),
                )
                .collect();
            // Entries converge first; the bodies they name follow from whoever holds them.
            digests.len() == 1
                && cluster
                    .agents()
                    .all(|a| a.stats()["sync"]["awaiting_bodies"] == 0)
        },
    );
    // The swarm itself heals, not only the state through the managers: every agent is
    // connected to every other again.
    for (i, agent) in cluster.agents().enumerate() {
        wait_until(
            60,
            &format!("agent {i} to reconnect to every other agent"),
            || {
                agent.stats()["swarm"]["peers"]
                    .as_object()
                    .is_some_and(|p| p.len() == AGENTS - 1)
            },
        );
    }
    let merged = list_ids(cluster.agents().next().expect("an agent"));
    for (i, agent) in cluster.agents().enumerate() {
        let listed = list_ids(agent);
        let differ: Vec<&String> = listed.symmetric_difference(&merged).take(10).collect();
        assert!(
            differ.is_empty(),
            "agent {i} lists {} memories, agent 0 {}; some that differ: {differ:?}",
            listed.len(),
            merged.len()
        );
        for id in &expected {
            assert_eq!(agent.status_of(id), 200, "agent {i} lost acknowledged {id}");
        }
        for id in &ledger.deleted {
            assert_eq!(agent.status_of(id), 410, "agent {i} brought back deleted {id}");
        }
    }
    for (m, manager) in cluster.managers().enumerate() {
        // Equal digests mean equal entries; a manager may still be fetching the last bodies.
        wait_until(60, &format!("manager {m} to hold the merged count"), || {
            manager.live() == merged.len() as u64
        });
        for id in &expected {
            assert_eq!(manager.status_of(id), 200, "manager {m} lost acknowledged {id}");
        }
        for id in &ledger.deleted {
            assert_eq!(
                manager.status_of(id),
                410,
                "manager {m} brought back deleted {id}"
            );
        }
    }
    let export = root.path().join("bucket/v1/analytics/memories");
    wait_until(60, "the export to equal the merged state", || {
        let rows: BTreeSet<String> = parquet_rows(&export)
            .iter()
            .filter_map(|row| row["id"].as_str().map(str::to_string))
            .collect();
        rows == merged
    });
    let refused: f64 = cluster
        .managers()
        .map(|m| metric(m, "murmur_manager_refused_messages_total"))
        .sum();
    figures.insert("acknowledged writes checked", expected.len() as u64);
    figures.insert("acknowledged deletes checked", ledger.deleted.len() as u64);
    figures.insert("manager refusals since last restart", refused as u64);
    figures.insert("lost", 0);
    eprintln!("chaos seed {seed:#x} passed: {figures:?}");
}
